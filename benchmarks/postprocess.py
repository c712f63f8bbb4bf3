"""Cost of ``solo_tf.postprocess.postprocess`` as the number of candidates (nms_pre) grows.

Run:   .venv/bin/python -m benchmarks.postprocess            (all six cases, ~8 min on 2 CPU cores)
       .venv/bin/python -m benchmarks.postprocess --nms_pre=100 --heads=vanilla   (one case)
Prints a markdown table (the one in docs/benchmarks.md, "## Post-processing").

Setup: one 800 x 1344 padded input (an original 480 x 640 image scaled to 800 x 1067), the
default num_grids (40, 36, 24, 16, 12) and strides, 80 classes, vanilla and decoupled heads.
Logits are random: category logits ~ N(-1.5, 1), so tens of thousands of (cell, class) pairs
survive point NMS and the 0.1 threshold and every ``nms_pre`` slot is filled; mask logits
~ N(0, 2), so every candidate's mask is large enough to be kept. All shapes are fixed, so the
cost does not depend on the values. Each case: a ``tf.function`` traced once with the
logits as inputs, warm-up runs, then the median wall time of ``--runs`` calls (outputs copied
to host, as a caller would) and the median process CPU time per call (all threads; less
sensitive than wall time to other processes sharing the cores).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time

import tensorflow as tf
from absl import app, flags

from solo_tf.config import ModelConfig, PostprocessConfig
from solo_tf.postprocess import postprocess

_NMS_PRE = flags.DEFINE_multi_integer("nms_pre", [100, 500, 1000], "Candidate counts.")
_HEADS = flags.DEFINE_multi_string("heads", ["vanilla", "decoupled"], "Head types.")
_RUNS = flags.DEFINE_integer("runs", 20, "Timed runs per case (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed runs per case after tracing.")
_JIT = flags.DEFINE_bool("jit_compile", False, "Compile the post-processing with XLA.")

PADDED = (800, 1344)
IMAGE_INFO = [[[480.0, 640.0], [800.0, 1067.0], [800 / 480, 1067 / 640], [0.0, 0.0]]]
OUTPUT_SIZE = (480, 640)


def random_outputs(config: ModelConfig, seed: int = 0) -> dict[str, tf.Tensor]:
    """Random logits of one image with the model's output layout (architecture.md 4)."""
    gen = tf.random.Generator.from_seed(seed)
    outputs = {}
    for level, (grid, stride) in enumerate(zip(config.num_grids, config.mask_strides, strict=True)):
        size = (PADDED[0] // stride, PADDED[1] // stride)
        cate_shape = (1, grid, grid, config.num_classes)
        outputs[f"cate_logits_{level}"] = gen.normal(cate_shape, mean=-1.5, stddev=1.0)
        if config.head_type == "vanilla":
            outputs[f"mask_logits_{level}"] = gen.normal((1, *size, grid * grid), stddev=2.0)
        else:
            outputs[f"mask_x_logits_{level}"] = gen.normal((1, *size, grid), stddev=2.0)
            outputs[f"mask_y_logits_{level}"] = gen.normal((1, *size, grid), stddev=2.0)
    return outputs


def time_case(head_type: str, nms_pre: int) -> dict:
    """Median and spread of the wall time of one post-processing call, in ms."""
    model_config = ModelConfig(head_type=head_type)
    post_config = dataclasses.replace(PostprocessConfig(), nms_pre=nms_pre)
    outputs = random_outputs(model_config)
    image_info = tf.constant(IMAGE_INFO, tf.float32)
    class_ids = tf.range(1, model_config.num_classes + 1)

    @tf.function(jit_compile=_JIT.value)
    def run(outputs, image_info):
        return postprocess(outputs, image_info, model_config, post_config, class_ids, OUTPUT_SIZE)

    def call():
        result = run(outputs, image_info)
        return {k: v.numpy() for k, v in result.items()}

    for _ in range(1 + _WARMUP.value):
        detections = call()
    times, cpu_times = [], []
    for _ in range(_RUNS.value):
        start, cpu_start = time.perf_counter(), time.process_time()
        call()
        times.append(1000.0 * (time.perf_counter() - start))
        cpu_times.append(1000.0 * (time.process_time() - cpu_start))
    return {
        "head": head_type,
        "nms_pre": nms_pre,
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "cpu_ms": statistics.median(cpu_times),
        "detections": int(detections["num_detections"][0]),
    }


def device_name() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return f"CPU {platform.machine()}, {os.cpu_count()} cores visible"


def main(argv):
    del argv
    rows = [time_case(head, nms_pre) for head in _HEADS.value for nms_pre in _NMS_PRE.value]
    print(f"device: {device_name()}; tensorflow {tf.__version__}; jit_compile={_JIT.value}")
    print(f"median of {_RUNS.value} runs after {_WARMUP.value} warm-up runs")
    print(f"1-minute load average at the end: {os.getloadavg()[0]:.1f}\n")
    print("| head | nms_pre | median ms | min-max ms | CPU ms / call | detections |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['head']} | {row['nms_pre']} | {row['median_ms']:.0f} | "
            f"{row['min_ms']:.0f}-{row['max_ms']:.0f} | {row['cpu_ms']:.0f} | "
            f"{row['detections']} |"
        )


if __name__ == "__main__":
    app.run(main)
