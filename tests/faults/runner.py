"""Runs solo-tf commands in their own processes, the way a user would, and records rows.

Each command runs under a wall-clock timeout in a new session (a hang is killed with its
children and fails the test as a hang), under ``/usr/bin/time`` when present for its peak
resident memory. ``run_repeated`` starts the repeats of one error case together: the hang of
issue 11 was intermittent, and concurrent repeats cost less wall time than serial ones.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIME = "/usr/bin/time"
# Generous: a training command traces its step in ~1-2 minutes on a loaded 2-core machine.
DEFAULT_TIMEOUT = 420


@dataclasses.dataclass
class Result:
    """What one command did."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    max_rss_mb: float | None

    @property
    def error_line(self) -> str:
        """The last ``NAME: error: MESSAGE`` line of stderr ('' when there is none)."""
        lines = [line for line in self.stderr.splitlines() if ": error: " in line]
        return lines[-1] if lines else ""

    def explain(self) -> str:
        return (
            f"exit {self.returncode} after {self.seconds:.1f} s: {' '.join(self.args)}\n"
            f"--- stderr (tail) ---\n{self.stderr[-3000:]}\n--- stdout (tail) ---\n"
            f"{self.stdout[-1000:]}"
        )


def environment() -> dict:
    env = dict(os.environ)
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


class _Running:
    def __init__(self, args: list[str], timeout: float, env: dict | None = None, rss=True):
        """``env``: variables on top of ``environment()``; ``rss``: under ``/usr/bin/time``
        (False: ``process`` is the command itself, which a signal must reach)."""
        self.args, self.timeout = args, timeout
        self._files = [tempfile.TemporaryFile("w+") for _ in range(2)]
        self._rss = tempfile.NamedTemporaryFile("r", suffix=".rss", delete=False)
        command = args
        if rss and os.path.exists(TIME):
            command = [TIME, "-o", self._rss.name, "-f", "%M", *args]
        self.start = time.perf_counter()
        self.process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**environment(), **(env or {})},
            stdout=self._files[0],
            stderr=self._files[1],
            start_new_session=True,
        )

    def wait(self) -> Result:
        left = max(1.0, self.timeout - (time.perf_counter() - self.start))
        try:
            returncode = self.process.wait(timeout=left)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            returncode = None
        seconds = time.perf_counter() - self.start
        stdout, stderr = (self._read(f) for f in self._files)
        rss = None
        try:
            with open(self._rss.name) as f:
                text = f.read().strip().splitlines()
            rss = int(text[-1]) / 1024 if text and text[-1].isdigit() else None
        finally:
            os.unlink(self._rss.name)
        if returncode is None:
            raise AssertionError(
                f"HANG: no exit within {self.timeout} s: {' '.join(self.args)}\n{stderr[-3000:]}"
            )
        return Result(self.args, returncode, stdout, stderr, seconds, rss)

    @staticmethod
    def _read(file) -> str:
        file.seek(0)
        text = file.read()
        file.close()
        return text

    def peek(self) -> tuple[str, str]:
        """stdout and stderr so far."""
        texts = []
        for file in self._files:  # pread: the child's writes share the file offset
            size = os.fstat(file.fileno()).st_size
            texts.append(os.pread(file.fileno(), size, 0).decode(errors="replace"))
        return texts[0], texts[1]


def python_module(module: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", module, *flags]


def python_code(code: str, *args: str) -> list[str]:
    return [sys.executable, "-c", code, *args]


def run(args: list[str], timeout: float = DEFAULT_TIMEOUT) -> Result:
    """Runs one command; raises (a hang) when it outlives ``timeout`` seconds."""
    return _Running(args, timeout).wait()


# Repeats of a failure inside tf.data (where the hang of issue 11 lived, intermittently) and
# of a refusal made before any input pipeline exists (deterministic: once is enough).
REPEATS = int(os.environ.get("SOLO_FAULT_REPEATS", "3"))
REFUSAL_REPEATS = int(os.environ.get("SOLO_FAULT_REFUSAL_REPEATS", "1"))


def run_repeated(args: list[str], times: int = REPEATS, timeout: float = DEFAULT_TIMEOUT) -> list:
    """``times`` concurrent runs of the same command (each its own process)."""
    running = [_Running(args, timeout) for _ in range(times)]
    return [r.wait() for r in running]


def run_all(commands: list[list[str]], timeout: float = DEFAULT_TIMEOUT) -> list[Result]:
    """Runs several commands concurrently; results in the same order."""
    running = [_Running(args, timeout) for args in commands]
    return [r.wait() for r in running]


def run_and_signal(
    args: list[str],
    ready,
    signum: int = signal.SIGTERM,
    env: dict | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> tuple[Result, float]:
    """Runs ``args``, sends ``signum`` to it once ``ready(stdout, stderr)`` holds (polled each
    half second) and waits for its exit: its result, and the seconds from the signal to it."""
    running = _Running(args, timeout, env=env, rss=False)
    while not ready(*running.peek()):
        if running.process.poll() is not None or time.perf_counter() - running.start > timeout:
            result = running.wait()
            raise AssertionError("exited before it was ready:\n" + result.explain())
        time.sleep(0.5)
    sent = time.perf_counter()
    running.process.send_signal(signum)
    try:
        result = running.wait()
    except AssertionError as hang:
        raise AssertionError(
            f"{signal.Signals(signum).name} sent {sent - running.start:.0f} s after the start, "
            f"no exit in the {time.perf_counter() - sent:.0f} s after it\n{hang}"
        ) from None
    return result, time.perf_counter() - sent
