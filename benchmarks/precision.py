"""The demo recipe's training step in float32 and bfloat16, with and without oneDNN's kernels.

Run:   .venv/bin/python -m benchmarks.precision              (4 settings, ~12 min on 2 AVX2 cores)
       .venv/bin/python -m benchmarks.precision --settings=float32:1,bfloat16:1
Prints a markdown table (docs/benchmarks.md, "## Precision by CPU") and one JSON line per
setting.

Why: bfloat16 is only fast where the hardware has it (AVX-512 BF16, AMX, GPUs). On a CPU without
it TensorFlow's bfloat16 convolutions are many times slower than float32, which is what
``--mixed_precision=auto`` (``solo_tf.hardware``) avoids; and TensorFlow turns oneDNN's kernels
on by default only on CPUs with AVX-512, while ``make demo`` turns them on everywhere.

Each setting runs in a subprocess of its own (``TF_ENABLE_ONEDNN_OPTS`` is read when TensorFlow
loads, so the parent's own import of TensorFlow does not matter): ``experiments/shapes.flags``
on 16 generated training images, one batch held in memory, the full training step of
``train_lib`` (forward, loss, backward, clipping, AdamW); the median of ``--steps`` steps after
two warm-up steps (the first traces). The matmul peak of the same process (``machine_peak``,
n = 1024) is printed beside it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags

from benchmarks.machine_peak import matmul_peak
from benchmarks.profile import demo_config, training_step_seconds
from solo_tf import distribute, hardware, train_lib
from solo_tf.data import inputs, shapes

_SETTINGS = flags.DEFINE_list(
    "settings",
    ["float32:0", "float32:1", "bfloat16:0", "bfloat16:1"],
    "precision:onednn pairs (precision float32 or bfloat16; onednn 0 or 1).",
)
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per setting (median reported).")
_CHILD = flags.DEFINE_string("child", "", "Internal: run one precision in this process.")


def child(precision: str, runs: int) -> dict:
    """One setting, in this process: seconds per training step of 8 images."""
    mixed = "" if precision == "float32" else precision
    with tempfile.TemporaryDirectory() as data_dir:
        shapes.generate(data_dir, num_train=16, num_val=1)
        config = demo_config(data_dir)
        config = dataclasses.replace(
            config, train=dataclasses.replace(config.train, mixed_precision=mixed)
        )
        train_lib.keras_policy(mixed)
        strategy = distribute.create_strategy(config.train.strategy)
        source = inputs.open_source(config.data, "train")
        stream = strategy.distribute_datasets_from_function(inputs.train_input_fn(config, source))
        step_s, _, _ = training_step_seconds(config, strategy, iter(stream), runs)
    batch_size = config.train.global_batch_size
    return {
        "precision": precision,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", ""),
        "canvas": list(config.data.output_size),
        "step_s": step_s,
        "images_per_s": batch_size / step_s,
        "matmul_gflops": matmul_peak(precision, n=1024, runs=5)["gflops"],
        "cpu": hardware.describe_cpu(),
    }


def main(argv):
    del argv
    if _CHILD.value:
        print("RESULT " + json.dumps(child(_CHILD.value, _STEPS.value)), flush=True)
        return
    rows = []
    for setting in _SETTINGS.value:
        precision, onednn = setting.split(":")
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "2"}
        command = [sys.executable, "-m", "benchmarks.precision", f"--child={precision}"]
        out = subprocess.run(
            command + [f"--steps={_STEPS.value}"], env=env, capture_output=True, text=True
        )
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not lines:
            raise RuntimeError(f"{setting} failed:\n{out.stderr[-3000:]}")
        row = json.loads(lines[-1][len("RESULT ") :])
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\n{rows[0]['cpu']}, batch 8 at {rows[0]['canvas'][0]} x {rows[0]['canvas'][1]}:\n")
    print("| precision | oneDNN | s per step | images/s | matmul peak GFLOP/s |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['precision']} | {'on' if r['onednn'] == '1' else 'off'} | {r['step_s']:.2f} "
            f"| {r['images_per_s']:.2f} | {r['matmul_gflops']:.0f} |"
        )


if __name__ == "__main__":
    app.run(main)
