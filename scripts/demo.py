"""The main job on the embedded dataset: generate, train, evaluate, export, predict.

Run by ``make demo``; everything lands under ``$DEMO_DIR`` (default ``runs/demo``):
``data/``, ``model/``, ``eval/metrics.json``, ``saved_model/``, ``tflite/``, ``predictions/``
and ``summary.json`` (wall time and peak memory of every stage). Each stage is a separate
process, as a user would run it; a stage whose output exists is skipped, so an interrupted
demo resumes (training resumes from its checkpoint by itself).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

DEMO_DIR = os.environ.get("DEMO_DIR", "runs/demo")
PY = os.environ.get("PYTHON", sys.executable)
FLAGFILE = "experiments/shapes.flags"


def stages(d: str) -> list[tuple[str, list[str], str]]:
    """(name, command, output that marks the stage done)."""
    data = f"{d}/data"
    ann = f"{data}/annotations"
    return [
        (
            "generate",
            [PY, "-m", "solo_tf.data.shapes", f"--output_dir={data}"],
            f"{ann}/instances_val.json",
        ),
        (
            "train",
            [
                PY,
                "-m",
                "solo_tf.train",
                f"--flagfile={FLAGFILE}",
                f"--model_dir={d}/model",
                f"--train_annotations={ann}/instances_train.json",
                f"--train_images={data}/train",
                f"--val_annotations={ann}/instances_val.json",
                f"--val_images={data}/val",
                "--eval_at_end=false",
            ],
            f"{d}/model/DONE",
        ),
        (
            "evaluate",
            [
                PY,
                "-m",
                "solo_tf.evaluate",
                f"--model_dir={d}/model",
                f"--val_annotations={ann}/instances_val.json",
                f"--val_images={data}/val",
                f"--output_dir={d}/eval",
            ],
            f"{d}/eval/metrics.json",
        ),
        (
            "export_saved_model",
            [
                PY,
                "-m",
                "export.saved_model",
                f"--model_dir={d}/model",
                f"--output_dir={d}/saved_model",
            ],
            f"{d}/saved_model/solo/1/saved_model.pb",
        ),
        (
            "export_tflite",
            [
                PY,
                "-m",
                "export.tflite",
                f"--model_dir={d}/model",
                f"--output_dir={d}/tflite",
                "--quantization=none,fp16",
                f"--calibration_images={data}/val",
            ],
            f"{d}/tflite/model_fp16.tflite",
        ),
        (
            "predict",
            [
                PY,
                "-m",
                "solo_tf.predict",
                f"--model_dir={d}/model",
                f"--images={data}/val",
                f"--output_dir={d}/predictions",
                "--max_images=12",
            ],
            f"{d}/predictions/results.json",
        ),
    ]


def run_stage(name, command, done_marker, summary):
    if os.path.exists(done_marker):
        print(f"[demo] {name}: already done ({done_marker})", flush=True)
        return
    print(f"[demo] {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    if name == "train":
        open(done_marker, "w").close()
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary["stages"][name] = {"seconds": round(seconds, 1)}
    summary["peak_rss_mib_so_far"] = round(peak_mib)
    print(f"[demo] {name}: {seconds:.0f} s, peak RSS so far {peak_mib:.0f} MiB", flush=True)


def main() -> int:
    os.makedirs(DEMO_DIR, exist_ok=True)
    summary = {"demo_dir": DEMO_DIR, "stages": {}}
    start = time.perf_counter()
    for name, command, marker in stages(DEMO_DIR):
        run_stage(name, command, marker, summary)
    summary["total_seconds"] = round(time.perf_counter() - start, 1)
    metrics_path = f"{DEMO_DIR}/eval/metrics.json"
    if os.path.exists(metrics_path):
        with open(metrics_path) as f:
            summary["metrics"] = json.load(f)
    with open(f"{DEMO_DIR}/summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
