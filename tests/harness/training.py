"""Training runs for the tests: each a fresh process of ``run_training.py`` on the tiny flagfile.

Logical devices and multi-worker clusters must be set before TensorFlow starts, hence one
process per run.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HARNESS = os.path.join(ROOT, "tests", "harness", "run_training.py")
TINY = os.path.join(ROOT, "experiments", "tiny.flags")
# Only a hang guard: a run here takes seconds to minutes, several times longer on a slow
# 2-core CI machine beside another pytest-xdist worker.
HANG_S = 1800


def data_flags(data):
    return [
        f"--train_annotations={data['train_annotations']}",
        f"--train_images={data['train_images']}",
    ]


def run(model_dir, data, *extra, env=None, check=True, background=False):
    command = [sys.executable, HARNESS, f"--flagfile={TINY}", f"--model_dir={model_dir}"]
    command += data_flags(data) + list(extra)
    environ = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    if background:
        return subprocess.Popen(
            command, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    done = subprocess.run(command, env=environ, capture_output=True, text=True, timeout=HANG_S)
    if check and done.returncode != 0:
        raise AssertionError(f"training failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done
