"""The main job on the embedded dataset: generate, train, evaluate, export, predict.

Run by ``make demo``; everything lands under ``$DEMO_DIR`` (default ``runs/demo``):
``data/``, ``model/``, ``eval/metrics.json`` (the val split), ``eval_heldout/metrics.json``
(the held-out style split), ``saved_model/``, ``tflite/``, ``predictions/`` and
``summary.json`` (the machine, the estimate, wall time and peak memory of every stage). Each
stage is a separate process, as a user would run it; a stage whose output exists is skipped, so
an interrupted demo resumes (training resumes from its checkpoint by itself).

Before anything else the demo measures this machine's matmul peak in the precision training
will use (``--mixed_precision=auto``) and prints its estimate of the whole run, with a warning
when that is over the 15 minutes the recipe is sized for.
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
# DEMO_FLAGFILE picks another recipe (e.g. experiments/shapes_decoupled.flags) for the same stages.
FLAGFILE = os.environ.get("DEMO_FLAGFILE", "experiments/shapes.flags")
# Extra options of the dataset stage (python -m solo_tf.data.shapes --helpfull), e.g.
# DEMO_DATA_FLAGS="--num_train=1000 --train_variety=0.5" for the varied training looks (README:
# held-out AP 0.227 against 0.205, val AP 0.461 against 0.515, one run each). By default the
# plain 600-image train split.
DATA_FLAGS = os.environ.get("DEMO_DATA_FLAGS", "").split()
BUDGET_S = 15 * 60
# Calibration of the estimate, from make demo runs (README, "What make demo does"). Training
# runs at TRAIN_EFFICIENCY * (matmul peak in the training precision) / (the recipe's forward
# GFLOPs per image, averaged over its schedule) images per second, the train stage's start and
# traces included. Measured 2026-12-02 on issue 15's AVX-512 BF16 EPYC in bfloat16: 0.097 and
# 0.085 for shapes.flags with the SOLOv2 head (13600 images of 1.69 GFLOPs on average in 755 s
# at probe 314 and in 675 s at probe 402; its dynamic kernels and stride-4 Dice cost more per
# FLOP of the forward pass); before it, 0.120 for the Decoupled head (shapes_decoupled.flags:
# 13600 images of 1.96 GFLOPs on average in 722 s at probe 309) and 0.133-0.142 for its
# neighbours with early steps at 256;
# 0.160 for the 352 x 352 recipe (shapes_352.flags, 3.77 GFLOPs, 988 s at probe 325) and 0.134
# for its 320 x 320 / stem-32 variant; before them 0.121 (session 12), 0.099-0.104 before the
# fused normalisation kernels, 0.129 on an AVX2 EPYC in float32 (probe 114). The narrow demo
# models are far from the matmul peak (small channel counts, normalisation, the loss, the input
# pipeline on the same two cores, which weighs more on small images).
TRAIN_EFFICIENCY = 0.085
# The rest (the probe, generate, evaluate twice, export, predict; training's start is in the
# train stage): OTHER_STAGES_S plus OTHER_STAGES_GFLOP / peak s. Measured 2026-12-02 on the
# AVX-512 BF16 EPYC: 127 s at probe 325 (shapes.flags) and 106 s at probe 362 (the 320 x 320
# variant), mostly single-threaded Python and tracing, which the matmul peak tracks only in
# part; before the faster evaluation (session 12) ~160 s, and ~440 s one stage after another
# on the AVX2 EPYC (probe 114).
OTHER_STAGES_S = 50.0
OTHER_STAGES_GFLOP = 25000.0
# oneDNN's kernels: on by default only on CPUs with AVX-512; on an AVX2-only CPU they make the
# demo's training step 1.27x faster (1.9 against 1.5 images/s, docs/benchmarks.md).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# Measures the matmul peak in the precision training will use, and counts the recipe's
# forward FLOPs per image at its canvas (benchmarks.flops; inference mode, same convolutions),
# and their mean over the training schedule (progressive resizing's early steps are cheaper).
PROBE = """
import json, sys
import tensorflow as tf
from benchmarks.flops import function_flops
from benchmarks.machine_peak import matmul_peak
from solo_tf import flags, hardware
from solo_tf.data import inputs
from solo_tf.modeling import factory
config = flags.config_from_args([f"--flagfile={sys.argv[1]}", "--model_dir=unused"], "demo")
# The precision training will resolve the recipe's --mixed_precision to is the one measured.
dtype = hardware.resolve_mixed_precision(config.train.mixed_precision) or "float32"
peak = matmul_peak(dtype, n=1024, runs=5)
model = factory.build_model(config.model)
def forward_gflops(size):
    spec = tf.TensorSpec([1, *size, 3], tf.float32)
    return function_flops(lambda x: model(x, training=False), [spec]) / 1e9
forward = forward_gflops(config.data.output_size)
steps = config.train.total_steps
early = min(config.data.early_steps, steps)
mean = forward
if early:
    early_forward = forward_gflops(inputs.early_data(config.data).output_size)
    mean = (early * early_forward + (steps - early) * forward) / steps
print(json.dumps({"cpu": hardware.describe_cpu(), "dtype": dtype, "gflops": peak["gflops"],
                  "forward_gflops_per_image": forward, "train_gflops_per_image": mean,
                  "train_images": steps * config.train.global_batch_size}))
"""


def expected_seconds(images: int, forward_gflops: float, peak_gflops: float) -> tuple[float, float]:
    """(training, whole demo) seconds expected for ``images`` training images of a recipe whose
    forward pass costs ``forward_gflops`` per image, on a machine of ``peak_gflops``."""
    train_s = images * forward_gflops / (TRAIN_EFFICIENCY * peak_gflops)
    return train_s, train_s + OTHER_STAGES_S + OTHER_STAGES_GFLOP / peak_gflops


def estimate(summary: dict) -> None:
    """Measures the machine, prints the expected wall time, warns when over the budget."""
    out = subprocess.run([PY, "-c", PROBE, FLAGFILE], capture_output=True, text=True, check=True)
    machine = json.loads(out.stdout.strip().splitlines()[-1])
    images = machine.pop("train_images")
    train_s, total_s = expected_seconds(
        images, machine["train_gflops_per_image"], machine["gflops"]
    )
    summary["machine"] = machine
    summary["estimate_s"] = {"train": round(train_s), "total": round(total_s)}
    print(
        f"[demo] this machine: {machine['cpu']}; training in {machine['dtype']}, matmul peak "
        f"{machine['gflops']:.0f} GFLOP/s; the recipe: {images} training images of "
        f"{machine['train_gflops_per_image']:.2f} GFLOPs forward on average. Expected: about "
        f"{total_s / 60:.0f} min in all (training {train_s / 60:.0f} min).",
        flush=True,
    )
    if total_s > BUDGET_S:
        print(
            f"[demo] WARNING: expect ~{total_s / 60:.0f} min, more than the {BUDGET_S // 60} "
            f"min the demo is meant to take (this machine's {machine['gflops']:.0f} GFLOP/s is "
            "too slow for this recipe). Ctrl-C stops it; make demo resumes where it stopped.",
            flush=True,
        )


def stages(d: str) -> list[tuple[str, list[str], str]]:
    """(name, command, output that marks the stage done)."""
    data = f"{d}/data"
    ann = f"{data}/annotations"
    return [
        (
            "generate",
            [PY, "-m", "solo_tf.data.shapes", f"--output_dir={data}", *DATA_FLAGS],
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
            "evaluate_heldout",
            [
                PY,
                "-m",
                "solo_tf.evaluate",
                f"--model_dir={d}/model",
                f"--val_annotations={ann}/instances_heldout.json",
                f"--val_images={data}/heldout",
                f"--output_dir={d}/eval_heldout",
            ],
            f"{d}/eval_heldout/metrics.json",
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


# The stages after training are independent of each other (each reads the model_dir or the
# data); they run JOBS at a time, each with its log in DEMO_DIR/logs/. Much of their time is
# single-threaded Python (tracing, COCO evaluation). Measured 2026-12-01 on the AVX-512 BF16
# EPYC, two runs of the same model size: 108 s two at a time against 122 s one after the other.
JOBS = int(os.environ.get("DEMO_JOBS", "0")) or min(os.cpu_count() or 1, 2)
FOREGROUND = ("generate", "train")


def _should_run(name, command, done_marker) -> bool:
    if os.path.exists(done_marker):
        print(f"[demo] {name}: already done ({done_marker})", flush=True)
        return False
    needed = [a.split("=", 1)[1] for a in command if a.startswith("--val_annotations=")]
    if needed and not os.path.exists(needed[0]):
        print(f"[demo] {name}: skipped, {needed[0]} does not exist", flush=True)
        return False
    return True


def _finished(name, seconds, summary):
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    summary["stages"][name] = {"seconds": round(seconds, 1)}
    summary["peak_rss_mib_so_far"] = round(peak_mib)
    print(f"[demo] {name}: {seconds:.0f} s, peak RSS so far {peak_mib:.0f} MiB", flush=True)


def run_stage(name, command, done_marker, summary):
    """Runs one stage in the foreground (its output on the terminal)."""
    if not _should_run(name, command, done_marker):
        return
    print(f"[demo] {name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    if name == "train":
        open(done_marker, "w").close()
    _finished(name, time.perf_counter() - start, summary)


def run_stages_side_by_side(todo, summary, log_dir: str, jobs: int = JOBS) -> None:
    """Runs ``(name, command, done_marker)`` stages ``jobs`` at a time, in the given order,
    each writing ``log_dir/<name>.log``. A failed stage stops the others and raises naming
    its log."""
    todo = [stage for stage in todo if _should_run(*stage)]
    os.makedirs(log_dir, exist_ok=True)
    running = {}  # name -> (process, log file, its path, start)
    try:
        while todo or running:
            while todo and len(running) < max(jobs, 1):
                name, command, _ = todo.pop(0)
                log_path = os.path.join(log_dir, f"{name}.log")
                print(f"[demo] {name}: {' '.join(command)}  (log: {log_path})", flush=True)
                log = open(log_path, "w")
                process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
                running[name] = (process, log, log_path, time.perf_counter())
            time.sleep(0.2)
            for name, (process, log, log_path, start) in list(running.items()):
                if process.poll() is None:
                    continue
                log.close()
                del running[name]
                if process.returncode != 0:
                    raise RuntimeError(
                        f"demo stage {name} failed (exit {process.returncode}); its log: {log_path}"
                    )
                _finished(name, time.perf_counter() - start, summary)
    finally:
        for process, log, _, _ in running.values():
            process.kill()
            process.wait()
            log.close()


def main() -> int:
    os.makedirs(DEMO_DIR, exist_ok=True)
    summary = {"demo_dir": DEMO_DIR, "stages": {}}
    start = time.perf_counter()
    estimate(summary)
    all_stages = stages(DEMO_DIR)
    for name, command, marker in all_stages:
        if name in FOREGROUND:
            run_stage(name, command, marker, summary)
    later = [stage for stage in all_stages if stage[0] not in FOREGROUND]
    run_stages_side_by_side(later, summary, os.path.join(DEMO_DIR, "logs"))
    summary["total_seconds"] = round(time.perf_counter() - start, 1)
    for key, folder in (("metrics", "eval"), ("metrics_heldout", "eval_heldout")):
        path = f"{DEMO_DIR}/{folder}/metrics.json"
        if os.path.exists(path):
            with open(path) as f:
                summary[key] = json.load(f)
    with open(f"{DEMO_DIR}/summary.json", "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    aps = [
        f"{label} AP {summary[key]['AP']:.3f}"
        for key, label in (("metrics", "val"), ("metrics_heldout", "held-out style"))
        if key in summary
    ]
    print(f"[demo] done in {summary['total_seconds'] / 60:.1f} min: {', '.join(aps)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
