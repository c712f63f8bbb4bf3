"""Latency of exported models: a SavedModel, TFLite and ONNX files, batch 1, on this machine.

Usage:
  python benchmarks/export_latency.py --saved_model runs/demo/saved_model/solo/1 \
      --tflite runs/bench/tflite512/model_fp32.tflite,... \
      --onnx runs/bench/onnx512/model.onnx --size 512,512 --runs 30 --write

Each model gets a warm-up call, then ``--runs`` timed calls on a random uint8 image of the
given size; models are timed in turns (round robin) so drift hits all alike. TFLite runs in
the LiteRT interpreter and ONNX in ONNX Runtime (CPU provider), both with 2 threads. Prints a
markdown table (median and p90 ms, file size) and with ``--write`` replaces the section
"## Exported models" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.docs_section import replace_section  # noqa: E402
from solo_tf import exported  # noqa: E402
from solo_tf import images as images_lib
from solo_tf.onnx_runtime import ONNXPredictor

SECTION = "## Exported models"
DOC = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "benchmarks.md"
)


def dir_size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def make_runners(args, image):
    runners = {}
    if args.saved_model:
        predictor = exported.SavedModelPredictor(args.saved_model)
        runners["SavedModel (serving_default)"] = (
            lambda: predictor.run(image[None]),
            dir_size(exported.find_version_dir(args.saved_model)),
        )
    fixed_size = [("TFLite", path, exported.TFLitePredictor) for path in _split(args.tflite)]
    fixed_size += [("ONNX Runtime", path, _onnx_predictor) for path in _split(args.onnx)]
    for kind, path, make in fixed_size:
        predictor = make(path)
        size = predictor.input_size
        if tuple(size) != image.shape[:2]:
            raise SystemExit(f"{path} takes {size}, not {image.shape[:2]}: export it at --size")
        pixels = images_lib.to_input_dtype(image.astype(np.float32), predictor.input_dtype)
        runners[f"{kind} {os.path.basename(path)}"] = (
            lambda p=predictor, x=pixels[None]: p.run(x),
            dir_size(path),
        )
    return runners


def _split(paths: str) -> list[str]:
    return [p for p in paths.split(",") if p]


def _onnx_predictor(path: str):

    return ONNXPredictor(path)


def time_round_robin(runners, runs: int) -> dict[str, list[float]]:
    for run, _ in runners.values():
        run()  # warm-up (tracing, allocation)
    times = {name: [] for name in runners}
    for _ in range(runs):
        for name, (run, _) in runners.items():
            start = time.perf_counter()
            run()
            times[name].append(1000 * (time.perf_counter() - start))
    return times


def table(runners, times, args) -> str:
    lines = [
        SECTION,
        "",
        f"Batch 1, random uint8 {args.size} image, median and p90 of {args.runs} runs after a "
        f"warm-up, models timed in turns, on {platform.machine()} with {os.cpu_count()} cores "
        "(TFLite: LiteRT interpreter, ONNX: ONNX Runtime CPU provider, 2 threads each). Command:",
        "",
        f"    python benchmarks/export_latency.py {' '.join(sys.argv[1:])}",
        "",
        "| model | median ms | p90 ms | size MiB |",
        "|---|---:|---:|---:|",
    ]
    for name, (_, size) in runners.items():
        t = np.array(times[name])
        lines.append(
            f"| {name} | {np.median(t):.1f} | {np.percentile(t, 90):.1f} | {size / 2**20:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--saved_model", default="")
    parser.add_argument("--tflite", default="", help="comma-separated .tflite files")
    parser.add_argument("--onnx", default="", help="comma-separated .onnx files (export.onnx)")
    parser.add_argument("--size", default="512,512")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split(","))
    image = np.random.default_rng(0).integers(0, 256, [height, width, 3], dtype=np.uint8)
    runners = make_runners(args, image)
    text = table(runners, time_round_robin(runners, args.runs), args)
    print(text)
    if args.write:
        replace_section(DOC, text)


if __name__ == "__main__":
    main()
