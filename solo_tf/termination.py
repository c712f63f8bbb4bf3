"""SIGTERM and SIGINT honoured in every state of a solo-tf command.

A Python signal handler runs only when the main thread executes Python again: a main thread
blocked inside TensorFlow (a tf.data iterator's ``next()``, a ``tf.function`` call) never
runs it, which is how a run whose input spins (every image skipped) ignored SIGTERM until
SIGKILL. ``install`` (called by ``entry_point.run``) also routes every signal through
``signal.set_wakeup_fd`` to a watcher thread, which sees it at once:

- the first SIGTERM or SIGINT starts a grace period (``SOLO_STOP_GRACE_S`` seconds, default
  10). If the process is still alive when it ends, the watcher writes one line to stderr and
  ends the process with ``os._exit``: 143 after SIGTERM, 130 after SIGINT. Each time the main
  thread handles the signal (it is alive) the grace period starts again;
- a second SIGTERM or SIGINT ends the process at once.

In the main thread, SIGINT raises ``KeyboardInterrupt`` as usual; SIGTERM raises
``Terminated`` (``entry_point`` turns it into exit 143), except inside ``cooperative()``, the
training loop's scope, where it only sets the flag the loop checks between ``tf.function``
calls: the loop saves a checkpoint and returns.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time

from absl import logging

GRACE_ENV = "SOLO_STOP_GRACE_S"
DEFAULT_GRACE_S = 10.0
EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


class Terminated(BaseException):
    """SIGTERM outside ``cooperative()``: the command stops (a BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` swallows it)."""


class _State:
    """What the handler (main thread) and the watcher thread share."""

    def __init__(self):
        # Reentrant: the main thread's handler may interrupt the main thread inside it.
        self.lock = threading.RLock()
        self.installed = False
        self.grace_s = DEFAULT_GRACE_S
        self.sigterm = threading.Event()  # a SIGTERM arrived
        self.signals_seen = 0  # SIGTERM or SIGINT, counted by the watcher
        self.signum = 0  # the first of them
        self.deadline: float | None = None  # time.monotonic() when the watcher ends it
        self.cooperative = 0  # depth of cooperative() scopes


_state = _State()


def grace_seconds() -> float:
    """``SOLO_STOP_GRACE_S`` when set, else 10."""
    return float(os.environ.get(GRACE_ENV, DEFAULT_GRACE_S))


def install(grace_s: float | None = None) -> None:
    """SIGTERM/SIGINT handlers, the wakeup pipe and the watcher thread (main thread, once)."""
    with _state.lock:
        if _state.installed:
            return
        _state.installed = True
        _state.grace_s = grace_seconds() if grace_s is None else grace_s
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)  # set_wakeup_fd refuses a blocking fd
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    for signum in EXIT_CODES:
        signal.signal(signum, _handle)
    watcher = threading.Thread(target=_watch, args=(read_fd,), name="solo-stop", daemon=True)
    watcher.start()


def sigterm_received() -> bool:
    """Whether a SIGTERM reached this process (the watcher sets it, blocked main thread or
    not)."""
    return _state.sigterm.is_set()


def _handle(signum, frame) -> None:
    """The main thread's handler: it is alive, so the grace period starts again."""
    del frame
    with _state.lock:
        _state.deadline = time.monotonic() + _state.grace_s
        if signum == signal.SIGTERM:
            _state.sigterm.set()
        cooperative = _state.cooperative > 0
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    if cooperative:
        logging.warning("SIGTERM received: saving a checkpoint and stopping.")
        return
    raise Terminated("stopped by SIGTERM")


def _watch(read_fd: int) -> None:
    """The watcher thread: reads signal numbers from the wakeup pipe, ends the process when
    the grace period runs out."""
    while True:
        with _state.lock:
            deadline = _state.deadline
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([read_fd], [], [], timeout)
        if ready:
            for signum in os.read(read_fd, 64):
                if signum in EXIT_CODES:
                    _arrived(signum)
            continue
        with _state.lock:
            expired = _state.deadline is not None and time.monotonic() >= _state.deadline
        if expired:
            _exit_now(
                f"the main thread did not stop within {_state.grace_s:g} s (blocked inside "
                "TensorFlow: a tf.data iterator or a tf.function call); exiting without cleanup"
            )


def _arrived(signum: int) -> None:
    with _state.lock:
        _state.signals_seen += 1
        if _state.signals_seen == 1:
            _state.signum = signum
        second = _state.signals_seen > 1
        if signum == signal.SIGTERM:
            _state.sigterm.set()
        if not second and _state.deadline is None:
            _state.deadline = time.monotonic() + _state.grace_s
    if second:
        _exit_now(f"a second {signal.Signals(signum).name}; exiting without cleanup")


def _exit_now(reason: str) -> None:
    """Writes the line straight to fd 2 (another thread may hold sys.stderr's lock) and ends
    the process."""
    name = os.path.basename(sys.argv[0]) or "solo_tf"
    signum = _state.signum or signal.SIGTERM
    message = f"{name}: stopped by {signal.Signals(signum).name}: {reason}\n"
    try:
        os.write(2, message.encode(errors="replace"))
    finally:
        os._exit(EXIT_CODES[signum])


class cooperative:  # noqa: N801 - used as a context manager, like contextlib's
    """``with cooperative() as stop:`` SIGTERM sets ``stop.received`` instead of stopping
    the command; the caller checks it between ``tf.function`` calls.

    Without ``install`` (a library caller, a test harness) the scope installs its own
    SIGTERM handler, which only sets the flag, and restores the previous one at exit.
    """

    def __init__(self):
        self._own = False
        self._alone = False  # our own handler is installed
        self._previous = None

    def __enter__(self) -> cooperative:
        with _state.lock:
            self._alone = not _state.installed
            if not self._alone:
                _state.cooperative += 1
        if self._alone:
            self._previous = signal.signal(signal.SIGTERM, self._handle_alone)
        return self

    def __exit__(self, *exc) -> None:
        if self._alone:
            previous = self._previous
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        else:
            with _state.lock:
                _state.cooperative -= 1

    @property
    def received(self) -> bool:
        return self._own or sigterm_received()

    def _handle_alone(self, signum, frame) -> None:
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint and stopping.")
        self._own = True
