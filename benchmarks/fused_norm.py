"""Keras's BatchNormalization / GroupNormalization against the fused kernels of
``solo_tf.modeling.normalization``, alone and inside the demo recipe's training step.

Run:   .venv/bin/python -m benchmarks.fused_norm                (~6 min on 2 cores)
       .venv/bin/python -m benchmarks.fused_norm --repeats=1 --steps=3
Prints a markdown table (docs/benchmarks.md, "## Fused normalisation kernels").

Rows:

* one layer forward+backward (a weighted square loss, inside a ``tf.function``) on the demo's
  largest normalised activations: BatchNormalization on the stem's [8, 176, 176, 64] and
  GroupNormalization (16 groups) on the mask tower's [8, 88, 88, 48], in the training
  precision of ``--mixed_precision=auto``;
* the full training step of ``train_lib`` (forward, loss, backward, clipping, AdamW) of
  ``experiments/shapes.flags`` on one batch of 8 generated images held in memory.

"keras" runs the same layers through their Keras base class's ``call`` (what the model did
before 2026-12-01), "fused" through their own. Each setting runs in a subprocess of its own,
the two alternated ``--repeats`` times so that a drifting machine touches both; each reading is
the median of ``--steps`` calls after two warm-up calls (the first traces), and the table gives
the median over repeats and the ratio measured in the same run. The matmul peak (``machine_peak``,
n = 1024) of the first subprocess is printed beside it.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

from absl import app, flags

_REPEATS = flags.DEFINE_integer("repeats", 2, "Alternations of the keras and fused settings.")
_STEPS = flags.DEFINE_integer("steps", 8, "Timed calls per reading (median).")

SETTINGS = ("keras", "fused")


def _use_keras_calls() -> None:
    """Sends the fused layers through their Keras base classes' ``call``."""
    import keras

    from solo_tf.modeling import normalization

    normalization.FusedBatchNormalization.call = keras.layers.BatchNormalization.call
    normalization.FusedGroupNormalization.call = lambda self, inputs, training=None: (
        keras.layers.GroupNormalization.call(self, inputs)
    )


def _layer_seconds(layer, shape, steps: int) -> float:
    import numpy as np
    import tensorflow as tf

    from benchmarks.profile import timed

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(0.5, 2.0, shape), tf.float32)
    w = tf.constant(rng.normal(size=shape), tf.float32)
    layer.build(shape)

    @tf.function
    def run():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(tf.cast(layer(x, training=True), tf.float32) ** 2 * w)
        return tape.gradient(loss, [x, *layer.trainable_variables])

    return timed(run, steps)


def measure(setting: str, steps: int) -> dict:
    """One setting's readings (seconds), in this process."""
    import keras

    from benchmarks.machine_peak import matmul_peak
    from benchmarks.profile import demo_config, training_step_seconds
    from solo_tf import distribute, hardware, train_lib
    from solo_tf.data import inputs, shapes
    from solo_tf.modeling.normalization import FusedBatchNormalization, FusedGroupNormalization

    if setting == "keras":
        _use_keras_calls()
    with tempfile.TemporaryDirectory() as data_dir:
        shapes.generate(data_dir, num_train=16, num_val=1, num_heldout=0)
        config = demo_config(data_dir)
        dtype = hardware.resolve_mixed_precision(config.train.mixed_precision) or "float32"
        train_lib.keras_policy(dtype)
        try:
            out = {"setting": setting, "dtype": dtype}
            out["peak_gflops"] = matmul_peak(dtype, n=1024, runs=5)["gflops"]
            bn = FusedBatchNormalization(epsilon=1e-5, momentum=0.9)
            out["batchnorm"] = _layer_seconds(bn, [8, 176, 176, 64], steps)
            gn = FusedGroupNormalization(16, epsilon=1e-5)
            out["groupnorm"] = _layer_seconds(gn, [8, 88, 88, 48], steps)
            strategy = distribute.create_strategy(config.train.strategy)
            source = inputs.open_source(config.data, "train")
            iterator = iter(
                strategy.distribute_datasets_from_function(inputs.train_input_fn(config, source))
            )
            out["train_step"] = training_step_seconds(config, strategy, iterator, steps)[0]
        finally:
            keras.mixed_precision.set_global_policy("float32")
    return out


ROWS = (
    ("batchnorm", "BatchNormalization [8, 176, 176, 64], fwd+bwd"),
    ("groupnorm", "GroupNormalization 16 groups [8, 88, 88, 48], fwd+bwd"),
    ("train_step", "demo training step, batch of 8 in memory"),
)


def markdown(readings: list[dict]) -> str:
    by = {s: [r for r in readings if r["setting"] == s] for s in SETTINGS}
    first = readings[0]
    peaks = ", ".join(f"{r['peak_gflops']:.0f}" for r in readings)
    lines = [
        f"{first['dtype']}; probe (matmul peak, GFLOP/s) per subprocess: {peaks}; medians of "
        f"{len(by['keras'])} alternated runs",
        "",
        "| ms | Keras | fused | fused / Keras |",
        "|---|---:|---:|---:|",
    ]
    for key, what in ROWS:
        keras_ms = statistics.median(r[key] for r in by["keras"]) * 1e3
        fused_ms = statistics.median(r[key] for r in by["fused"]) * 1e3
        lines.append(f"| {what} | {keras_ms:.1f} | {fused_ms:.1f} | {fused_ms / keras_ms:.2f} |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1 and argv[1] == "--one":
        print(json.dumps(measure(argv[2], int(argv[3]))), flush=True)
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readings = []
    for _ in range(_REPEATS.value):
        for setting in SETTINGS:
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.fused_norm",
                    "--",
                    "--one",
                    setting,
                    str(_STEPS.value),
                ],
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
            )
            reading = json.loads(out.stdout.strip().splitlines()[-1])
            print(json.dumps(reading), flush=True)
            readings.append(reading)
    print(markdown(readings))


if __name__ == "__main__":
    app.run(main)
