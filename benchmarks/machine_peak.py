"""This machine's measured matmul peak in GFLOP/s, float32 and bfloat16.

Run:   .venv/bin/python -m benchmarks.machine_peak                (n = 4096, ~1 min on 2 CPU cores)
       .venv/bin/python -m benchmarks.machine_peak --n=1024 --runs=3
Prints one JSON line per dtype. ``benchmarks.compare`` calls ``matmul_peak`` in a subprocess
of its own and divides each model's achieved GFLOP/s by the float32 figure.

One [n, n] x [n, n] matmul is 2 n^3 FLOPs (a multiply-add counted as two, as the TF profiler
in ``benchmarks.flops`` counts convolutions). The matmul runs inside a ``tf.function`` on
tensors already on the device; the reported rate is the best of ``runs`` timed calls after
one warm-up call (the best, not the median: a peak is what the hardware can reach, and on
shared cores the slow calls measure the other load).
"""

from __future__ import annotations

import json
import time

import tensorflow as tf
from absl import app, flags

FLAGS = flags.FLAGS


def matmul_peak(dtype: str = "float32", n: int = 4096, runs: int = 5) -> dict:
    """Times ``runs`` [n, n] x [n, n] matmuls of ``dtype``; returns the best rate and all times."""
    a = tf.cast(tf.random.stateless_normal((n, n), seed=(1, 2)), dtype)
    b = tf.cast(tf.random.stateless_normal((n, n), seed=(3, 4)), dtype)

    @tf.function
    def matmul(a, b):
        # Reduce to a scalar so the time excludes copying the product back to the host.
        return tf.reduce_sum(tf.cast(tf.linalg.matmul(a, b)[:1, :1], tf.float32))

    float(matmul(a, b))  # warm-up: trace and let oneDNN/cuBLAS pick its kernels
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        float(matmul(a, b))
        times.append(time.perf_counter() - start)
    flops = 2.0 * n**3
    return {
        "dtype": dtype,
        "n": n,
        "best_s": min(times),
        "times_s": times,
        "gflops": flops / min(times) / 1e9,
        "device": "GPU" if tf.config.list_physical_devices("GPU") else "CPU",
    }


def main(argv):
    del argv
    for dtype in FLAGS.dtypes:
        print(json.dumps(matmul_peak(dtype, FLAGS.n, FLAGS.runs)), flush=True)


if __name__ == "__main__":
    flags.DEFINE_integer("n", 4096, "Matrix size.")
    flags.DEFINE_integer("runs", 5, "Timed calls per dtype.")
    flags.DEFINE_multi_string("dtypes", ["float32", "bfloat16"], "Dtypes to time.")
    app.run(main)
