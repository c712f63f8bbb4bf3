"""Pasting the kept masks at the original size: ``postprocess._masks_to_original`` (two
matmuls with banded resize matrices, in either order) against the 4-tap gathers it replaced
(kept here as the peer, ``gather_paste``).

Run:   .venv/bin/python -m benchmarks.paste            (~2 min on 2 CPU cores)

Cases: the demo's evaluation (8 images, 100 masks each, stride-4 masks of a 352 x 352 canvas,
originals up to 468 x 484) and one COCO-sized export (100 masks of an 800 x 1344 padded input
to 800 x 1333). Each: the three functions traced once, warm-up calls, then ``--calls`` calls of
each alternated; median wall times, the ratio of the two matmul orders from the same run, and
how many output pixels differ from the gathers (float rounding at the 0.5 threshold only).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from solo_tf import postprocess

_CALLS = flags.DEFINE_integer("calls", 7, "Timed calls of each function per case.")

STRIDE = 4
THRESHOLD = 0.5
# name, batch, masks per image, stride-4 mask size, per image (original, scaled) sizes
CASES = (
    (
        "demo evaluation, 8 x 100 masks 88 x 88 -> up to 468 x 484",
        8,
        100,
        (88, 88),
        [((468, 484), (340, 352)), ((300, 420), (251, 352))] * 4,
    ),
    ("COCO export, 100 masks 200 x 336 -> 800 x 1333", 1, 100, (200, 336), [((800, 1333),) * 2]),
)


def gather_paste(probs, image_info, stride, output_size, threshold):
    """The 4-tap gathers (solo-tf before 2026-12-01): channels-last rows, then columns."""
    original = tf.round(image_info[:, 0])
    padded = tf.cast(tf.shape(probs)[2:4] * stride, tf.float32)
    scaled = tf.clip_by_value(tf.round(image_info[:, 1]), 1.0, padded)
    out_h, out_w = output_size
    probs = tf.transpose(probs, [0, 2, 3, 1])  # [B, Hf, Wf, K]
    rows = postprocess._axis_taps(out_h, scaled[:, 0], original[:, 0], padded[0], stride)
    masks = tf.add_n(
        [w[:, :, None, None] * tf.gather(probs, i, axis=1, batch_dims=1) for i, w in rows]
    )
    cols = postprocess._axis_taps(out_w, scaled[:, 1], original[:, 1], padded[1], stride)
    masks = tf.add_n(
        [w[:, None, :, None] * tf.gather(masks, i, axis=2, batch_dims=1) for i, w in cols]
    )
    return tf.transpose(masks > threshold, [0, 3, 1, 2])


def image_info(sizes) -> np.ndarray:
    info = np.zeros([len(sizes), 4, 2], np.float32)
    for b, (original, scaled) in enumerate(sizes):
        info[b, 0], info[b, 1] = original, scaled
        info[b, 2] = np.array(scaled, np.float32) / np.array(original, np.float32)
    return info


def run_case(name, batch, masks, fine, sizes) -> dict:
    rng = np.random.default_rng(0)
    # Smooth blobs, so that many pixels sit near the threshold as real masks' edges do.
    logits = rng.normal(0.0, 4.0, [batch, masks, fine[0] // 8, fine[1] // 8, 1])
    small = tf.image.resize(tf.reshape(logits, [-1, *logits.shape[2:]]), fine, "bilinear")
    probs = tf.reshape(tf.sigmoid(small), [batch, masks, *fine])
    info = tf.constant(image_info(sizes[:batch]))
    out = tuple(int(v) for v in np.max([s[0] for s in sizes[:batch]], axis=0))
    fns = {
        "rows first": tf.function(
            lambda p, i: postprocess._masks_to_original(p, i, STRIDE, out, THRESHOLD, False)
        ),
        "columns first": tf.function(
            lambda p, i: postprocess._masks_to_original(p, i, STRIDE, out, THRESHOLD, True)
        ),
        "gathers": tf.function(lambda p, i: gather_paste(p, i, STRIDE, out, THRESHOLD)),
    }
    results = {k: f(probs, info).numpy() for k, f in fns.items()}  # trace
    for f in fns.values():
        f(probs, info).numpy()
    times = {k: [] for k in fns}
    for _ in range(_CALLS.value):
        for k, f in fns.items():
            start = time.perf_counter()
            f(probs, info).numpy()
            times[k].append(time.perf_counter() - start)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    differ = max(
        int((results[k] != results["gathers"]).sum()) for k in ("rows first", "columns first")
    )
    return {
        "case": name,
        "gathers_ms": med["gathers"],
        "rows_ms": med["rows first"],
        "columns_ms": med["columns first"],
        "differing_pixels": differ,
        "pixels": int(results["gathers"].size),
    }


def main(argv):
    del argv
    print(
        "| case | 4-tap gathers (ms) | matmuls, rows first (ms) | matmuls, columns first (ms) "
        "| columns / rows | pixels that differ from the gathers (worst order) |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for case in CASES:
        r = run_case(*case)
        print(
            f"| {r['case']} | {r['gathers_ms']:.0f} | {r['rows_ms']:.0f} | "
            f"{r['columns_ms']:.0f} | {r['columns_ms'] / r['rows_ms']:.2f} | "
            f"{r['differing_pixels']} of {r['pixels']:,} |",
            flush=True,
        )


if __name__ == "__main__":
    app.run(main)
