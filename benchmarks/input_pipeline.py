"""Input pipeline throughput: decoded examples -> batched model inputs with SOLO targets.

    .venv/bin/python benchmarks/input_pipeline.py [--runs 5] [--batches 10] [--write]

Measures images/s and process CPU ms per image of ``inputs.train_dataset`` (random short side,
flip, resize, pad, ``build_targets`` with the default grids) and of ``build_eval_dataset``
(resize and pad only) on synthetic decoded examples held in memory, so the number is the
augmentation and target cost alone, not the file reading and decoding. Two presets:

* ``shapes``: the embedded dataset's sizes, images 256-512 px a side (never square), 1-12
  instances; short side drawn from 320..448 (step 32), long side <= 512, padded to 512 x 512.
* ``coco``: 640 x 480 images (either orientation), 1-20 instances (mean ~7 as in COCO);
  ``DataConfig()`` defaults: short side 640..800 (step 32), long side <= 1333, padded to
  1344 x 1344.

One more row reads the shapes preset from real files (``solo_tf.data.shapes`` PNGs and COCO
JSON through ``CocoReader``: PNG decoding and RLE masks included).

Each run pulls ``--batches`` batches after 3 warm-up batches; the table gives the median of
``--runs`` runs. ``--write`` replaces the "## Input pipeline" section of docs/benchmarks.md.
About a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.docs_section import replace_section  # noqa: E402
from solo_tf.config import DataConfig, TargetConfig  # noqa: E402
from solo_tf.data import (
    inputs,  # noqa: E402
    shapes,  # noqa: E402
)
from solo_tf.data.coco import EXAMPLE_SPEC  # noqa: E402
from solo_tf.data.pipeline import build_eval_dataset  # noqa: E402

PRESETS = {
    "shapes": DataConfig(
        short_sides=(320, 352, 384, 416, 448),
        max_long_side=512,
        eval_short_side=448,
        output_size=(512, 512),
        shuffle_buffer=16,
    ),
    "coco": DataConfig(shuffle_buffer=16),
}
BATCH = {"shapes": 8, "coco": 2}
NUM_EXAMPLES = 32
WARMUP_BATCHES = 3
DOC = "docs/benchmarks.md"
SECTION = "## Input pipeline"


def synthetic_example(preset: str, index: int) -> dict:
    """A decoded example with random elliptical masks (architecture section 1)."""
    rng = np.random.default_rng(index)
    if preset == "shapes":
        height, width = rng.integers(256, 513, 2)
        while height == width:
            width = rng.integers(256, 513)
        num = int(rng.integers(1, 13))
    else:
        height, width = (480, 640) if rng.uniform() < 0.7 else (640, 480)
        num = int(min(rng.geometric(1 / 7), 20))
    yy, xx = np.mgrid[:height, :width]
    masks = np.zeros([num, height, width], np.uint8)
    for n in range(num):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = np.exp(rng.uniform(np.log(4), np.log(min(height, width) / 2), 2))
        masks[n] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return {
        "image": rng.integers(0, 256, [height, width, 3], dtype=np.uint8),
        "masks": masks,
        "classes": rng.integers(0, 80, num).astype(np.int32),
        "is_crowd": rng.uniform(size=num) < 0.01,
        "image_id": np.int64(index),
        "original_size": np.array([height, width], np.int32),
    }


def decoded_dataset(preset: str) -> tf.data.Dataset:
    """NUM_EXAMPLES synthetic examples, cached in memory after one pass."""
    examples = [synthetic_example(preset, i) for i in range(NUM_EXAMPLES)]
    dataset = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=EXAMPLE_SPEC)
    dataset = dataset.cache()
    for _ in dataset:  # fill the cache
        pass
    return dataset


def throughput(dataset: tf.data.Dataset, batch: int, runs: int, batches: int) -> dict:
    """Median images/s (wall clock) and CPU ms per image (all threads of this process)."""
    iterator = iter(dataset)
    for _ in range(WARMUP_BATCHES):
        next(iterator)
    rates, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(batches):
            next(iterator)
        rates.append(batches * batch / (time.perf_counter() - start))
        cpu.append(1000 * (time.process_time() - start_cpu) / (batches * batch))
    return {"rate": statistics.median(rates), "cpu_ms": statistics.median(cpu)}


def _row(preset: str, name: str, batch: int, result: dict) -> dict:
    rate, cpu_ms = result["rate"], result["cpu_ms"]
    print(f"{preset:7s} {name:22s} {rate:8.1f} images/s {cpu_ms:7.1f} CPU ms/image", flush=True)
    return {"preset": preset, "pipeline": name, "batch": batch, **result}


def shapes_files_config(work_dir: str) -> DataConfig:
    """The shapes preset reading the embedded dataset from PNG + COCO JSON, as training does."""
    paths = shapes.generate(work_dir, num_train=NUM_EXAMPLES, num_val=0, seed=0)
    return dataclasses.replace(
        PRESETS["shapes"],
        train_annotations=paths["train_annotations"],
        train_images=paths["train_images"],
    )


def measure(runs: int, batches: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as work_dir:
        batch = BATCH["shapes"]
        config = shapes_files_config(work_dir)
        source = inputs.open_source(config, "train")
        train = inputs.train_dataset(source, config, TargetConfig(), batch)
        result = throughput(train, batch, runs, batches)
        rows.append(_row("shapes", "train, from PNG files", batch, result))
    for preset, config in PRESETS.items():
        decoded = decoded_dataset(preset)
        batch = BATCH[preset]
        train = inputs.train_dataset(inputs.from_examples(decoded), config, TargetConfig(), batch)
        # The eval pipeline runs one pass: repeat it so it never ends mid-measurement.
        evaluation = build_eval_dataset(decoded.repeat(), config, batch)
        pipelines = (("train, in memory", train), ("eval, in memory", evaluation))
        for name, dataset in pipelines:
            rows.append(_row(preset, name, batch, throughput(dataset, batch, runs, batches)))
    return rows


def markdown(rows: list[dict], runs: int, batches: int) -> str:
    cores = os.cpu_count()
    load = os.getloadavg()[0]
    lines = [
        SECTION,
        "",
        "`benchmarks/input_pipeline.py`: images/s of `inputs.train_dataset` (random short side,",
        "flip, resize, pad and `build_targets`, default grids (40, 36, 24, 16, 12)) and of",
        "`build_eval_dataset` (resize and pad). *In memory*: synthetic decoded examples cached,",
        "so reading and decoding are excluded; *from PNG files*: the shapes dataset through",
        f"`CocoReader`. `parallel_calls` AUTOTUNE; median of {runs} runs of {batches} batches",
        f"after {WARMUP_BATCHES} warm-up batches; {cores} CPU cores, 1-minute load average",
        f"{load:.1f} when the run ended (other processes share the cores), TF {tf.__version__}.",
        "",
        "CPU ms / image is the process CPU time per image (all threads): far less sensitive to",
        "the other load than images/s; with k free cores expect about k * 1000 / (CPU ms).",
        "",
        "| preset | input | short sides / long cap | padded to | pipeline | batch | images/s "
        "| CPU ms / image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    inputs = {
        "shapes": "256-512 px, 1-12 inst.",
        "coco": "640x480, 1-20 inst.",
    }
    for row in rows:
        config = PRESETS[row["preset"]]
        sides = f"{config.short_sides[0]}..{config.short_sides[-1]} / {config.max_long_side}"
        if row["pipeline"].startswith("eval"):
            sides = f"{config.eval_short_side} / {config.max_long_side}"
        size = "x".join(str(s) for s in config.output_size)
        lines.append(
            f"| {row['preset']} | {inputs[row['preset']]} | {sides} | {size} | "
            f"{row['pipeline']} | {row['batch']} | {row['rate']:.1f} | {row['cpu_ms']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--write", action="store_true", help=f"update {DOC}")
    args = parser.parse_args()
    rows = measure(args.runs, args.batches)
    text = markdown(rows, args.runs, args.batches)
    print(text)
    if args.write:
        replace_section(DOC, text)
        print(f"updated {DOC}")


if __name__ == "__main__":
    main()
