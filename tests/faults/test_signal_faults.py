"""SIGTERM in every state (issue 11, item 2): a main thread blocked inside TensorFlow, a
training run whose input spins, a healthy training run.

Before ``solo_tf.termination``, a process blocked in a tf.data iterator's ``next()`` (every
image skipped under ``--max_skip_fraction=1.0``) never ran its Python SIGTERM handler: only
SIGKILL stopped it. Now it exits 143 within the grace period (``SOLO_STOP_GRACE_S``) with one
line, and a healthy training run still saves a checkpoint and exits 0.
"""

from __future__ import annotations

import glob
import os
import re

import pytest

from tests.faults import runner
from tests.faults.conftest import train_command

GRACE_S = 5
# A loaded 2-core machine (tests run under nice 19 next to a training run) can take many
# seconds to schedule the watcher and tear the process down.
SLACK_S = 30

# A command of entry_point.run whose main thread blocks in TensorFlow (or in Python) for ever.
BLOCKED = """
import sys, time
import tensorflow as tf
from solo_tf import entry_point

def main(argv):
    spin = tf.data.Dataset.range(1).repeat().filter(lambda x: x < 0)  # never yields
    iterator = iter(spin)
    print("blocking", flush=True)
    if argv[1] == "next":
        next(iterator)
    elif argv[1] == "function":
        tf.function(lambda it: next(it))(iterator)
    else:
        time.sleep(1000)

entry_point.run(main)
"""

STATES = {
    "tf.data next()": "next",
    "tf.function call": "function",
    "Python": "python",
}


def _printed(word):
    return lambda stdout, stderr: word in stdout


@pytest.mark.parametrize("state", list(STATES))
def test_sigterm_ends_blocked_command(table, state):
    result, after = runner.run_and_signal(
        runner.python_code(BLOCKED, STATES[state]),
        _printed("blocking"),
        env={"SOLO_STOP_GRACE_S": str(GRACE_S)},
    )
    assert result.returncode == 143, result.explain()
    lines = [line for line in result.stderr.splitlines() if "stopped by SIGTERM" in line]
    assert lines, result.explain()
    if state == "Python":  # the handler runs: at once, the plain line
        assert lines[-1].endswith("stopped by SIGTERM"), lines
        assert after < SLACK_S, after
    else:  # the watcher ends it after the grace period
        assert f"did not stop within {GRACE_S} s" in lines[-1], lines
        assert GRACE_S - 1 <= after < GRACE_S + SLACK_S, after
    table.add(
        f"SIGTERM, main thread blocked in {state}",
        "-",
        "entry_point.run (script)",
        result,
        f"exit after {after:.0f} s (SOLO_STOP_GRACE_S={GRACE_S}): " + lines[-1].split(": ", 1)[-1],
    )


def _log(model_dir) -> str:
    text = ""
    for path in glob.glob(os.path.join(str(model_dir), "train.*")):
        if os.path.isfile(path) and not os.path.islink(path):  # train.INFO links the log
            with open(path, errors="replace") as f:
                text += f.read()
    return text


def test_sigterm_ends_spinning_training(tmp_path, split, table):
    """Every image missing, no skip limit: the input pipeline filters for ever inside the
    training step's tf.function; SIGTERM once all ten skips are logged."""
    data = split.copy(tmp_path / "faulty")
    for path in glob.glob(os.path.join(data.images, "*.png")):
        os.remove(path)
    model = tmp_path / "model"
    args = train_command(str(model), data, "--bad_sample_policy=skip", "--max_skip_fraction=1.0")

    def spinning(stdout, stderr):
        return "0%" in stderr and _log(model).count("skipped (missing_file)") == 10

    result, after = runner.run_and_signal(args, spinning, env={"SOLO_STOP_GRACE_S": str(GRACE_S)})
    assert result.returncode == 143, result.explain()
    line = [x for x in result.stderr.splitlines() if "stopped by SIGTERM" in x][-1]
    assert f"did not stop within {GRACE_S} s" in line, result.explain()
    assert after < 2 * GRACE_S + SLACK_S, after
    table.add(
        "every image missing, --max_skip_fraction=1.0 (the input spins), SIGTERM",
        "skip",
        "train",
        result,
        f"exit {after:.0f} s after SIGTERM: " + line.split(": ", 1)[-1],
    )


def test_sigterm_mid_training_saves_checkpoint(tmp_path, split, table):
    """A healthy run: SIGTERM after a few steps saves a checkpoint at the step reached and
    exits 0 (no periodic checkpoint before the end)."""
    model = tmp_path / "model"
    args = train_command(
        str(model), split, "--total_steps=1000", "--checkpoint_every=1000", "--steps_per_loop=1"
    )

    def stepping(stdout, stderr):
        steps = re.findall(r"\| *(\d+)/1000", stderr)
        return bool(steps) and int(steps[-1]) >= 2

    # The grace period is for a process that does not answer; this one answers.
    result, after = runner.run_and_signal(args, stepping, env={"SOLO_STOP_GRACE_S": "120"})
    assert result.returncode == 0, result.explain()
    log = _log(model)
    assert "SIGTERM received: saving a checkpoint and stopping." in log, log[-3000:]
    saved = [int(p.split("ckpt-")[1].split(".")[0]) for p in glob.glob(f"{model}/ckpt-*.index")]
    assert len(saved) == 1 and 2 <= saved[0] < 1000, saved
    assert "stopped by SIGTERM" not in result.stderr
    table.add(
        "SIGTERM after a few steps",
        "-",
        "train --total_steps=1000",
        result,
        f"exit 0 {after:.0f} s after SIGTERM; checkpoint ckpt-{saved[0]} written; log: "
        "SIGTERM received: saving a checkpoint and stopping.",
    )
