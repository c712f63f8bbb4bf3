"""SOLO, Decoupled SOLO and SOLOv2 R50 against Model Garden's Mask R-CNN R50-FPN, one command.

Run:   .venv/bin/python benchmarks/compare.py --work_dir runs/compare           # full run
       .venv/bin/python benchmarks/compare.py --work_dir runs/compare --quick   # 512x512 only
       .venv/bin/python benchmarks/compare.py --work_dir runs/compare --report_only
Models: SOLO R50, Decoupled SOLO R50 and SOLOv2 R50 in float32 and, with the same weights,
exported with ``--compute_dtype=bfloat16`` (``vanilla_bf16``, ``decoupled_bf16``,
``solov2_bf16``), SOLOv2-Light R50 (``solov2light``, at its own 448x768 size only, see
``compare_targets.OWN_SIZES``), and the peer; ``--models`` picks a subset. The run takes
about an hour on 2 CPU cores.
Writes ``WORK_DIR/results.json``, ``WORK_DIR/latency_vs_size.png`` (also
``docs/images/latency_vs_size.png``) and the section "## Against Model Garden's Mask R-CNN" of
``docs/benchmarks.md`` (``--nowrite_docs`` to leave the docs alone). ``WORK_DIR`` keeps the
model_dirs and every SavedModel (``saved_models/<name>_<H>x<W>/1``); a second run reuses them.

What is measured, each model in a subprocess of its own (peak memory is its ``ru_maxrss``):
* inference through each SavedModel's ``serving_default`` signature on uint8 [B, H, W, 3]
  image tensors (pre-processing, network and post-processing in the graph): batch-1 latency
  (median and p90 of ``--runs`` calls) and batch-8 throughput. For batch 1 the models of one
  input size are loaded by one worker process each, which the parent drives in turn, one
  call at a time, in a rotating order, so drift in the machine's load hits all of them
  alike; batch 8 then runs one model at a time (a fresh worker, the others closed), so that
  the models' batch-8 memory does not add up on a 24 GiB machine;
* one training step at batch 2, 640 x 640: our ``train_lib`` replica step (forward,
  ``solo_loss``, gradients, clipping, SGD update) and Model Garden's ``MaskRCNNTask.train_step``
  (``benchmarks.peer_maskrcnn``), alternated the same way;
* FLOPs of each serving function at batch 1 (``benchmarks.flops``) and this machine's float32
  and bfloat16 matmul peak (``benchmarks.machine_peak``).
SOLO models: the full default ``ModelConfig`` (ResNet-50, 80 classes) with random weights,
written as a model_dir and exported by ``export.saved_model``; the input size sets the
``DataConfig`` of the export (short side, long-side cap, padding to a multiple of 32).

This module runs the measurements (the ``run_*`` functions) and holds the command line. The
rest, by job: ``benchmarks.compare_targets`` (the models' names, sizes and paths),
``benchmarks.compare_models`` (the SOLO models, their exports and training step),
``benchmarks.peer_maskrcnn`` (the peer), ``benchmarks.workers`` (the worker processes and
their protocol) and ``benchmarks.compare_report`` (the plot and the docs section).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: make ``benchmarks``, ``export``, ``solo_tf`` importable
    sys.path.insert(0, ROOT)

from absl import app, flags  # noqa: E402

from benchmarks.compare_report import report  # noqa: E402
from benchmarks.compare_targets import (  # noqa: E402
    HEADS,
    PEER,
    THROUGHPUT_BATCH,
    parse_size,
    saved_model_dir,
    size_name,
    targets_at,
)
from benchmarks.workers import alternate, export_in_worker, start_workers, stats  # noqa: E402

FLAGS = flags.FLAGS


def machine_info() -> dict:
    """CPU model, cores, TF version and GPU (if any), without importing TensorFlow."""
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        names = [x.split(":", 1)[1].strip() for x in open("/proc/cpuinfo") if "model name" in x]
        cpu = names[0] if names else cpu
    gpu = ""
    try:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "gpu": gpu or "none",
        "tensorflow": metadata.version("tensorflow"),
        "tf_models_official": metadata.version("tf-models-official"),
        "load_average_start": os.getloadavg(),
    }


def run_export(target: str, size, work_dir: str, cache: dict) -> dict:
    """Exports ``target`` for ``size`` in a worker, unless ``cache`` has it and it is there."""
    key = f"{target}_{size_name(size)}"
    path = saved_model_dir(work_dir, target, size)
    if key in cache and os.path.exists(os.path.join(path, "saved_model.pb")):
        return cache[key]
    print(f"exporting {key} ...", flush=True)
    log = os.path.join(work_dir, "logs", f"export_{key}.log")
    cache[key] = {**export_in_worker(target, size, work_dir, log), "path": path}
    with open(os.path.join(work_dir, "exports.json"), "w") as f:
        json.dump(cache, f, indent=1)
    return cache[key]


def run_inference(size, targets, work_dir: str, runs: int, batch_runs: int, errors: dict):
    """Batch-1 latency of every target at ``size``, alternated, then batch-8 throughput.

    Batch 8 runs one model at a time (a fresh worker each, the others closed), so that the
    models' batch-8 memory does not add up and each peak RSS is the model's own. A failure at
    batch 8 (memory, say) is recorded in ``errors`` and keeps the batch-1 figures.
    """
    print(f"inference {size_name(size)}: {', '.join(targets)}", flush=True)
    workers, ready = start_workers("serve", targets, work_dir, size)
    out = {t: {"rss_loaded_mib": ready[t]["rss_mib"]} for t in targets}
    try:
        one = {"batch": 1, "height": size[0], "width": size[1]}
        batch1 = alternate(workers, one, warmup=2, runs=runs)
        for t in targets:
            out[t].update(
                batch1=stats(batch1["times"][t]), rss_batch1_mib=batch1["last"][t]["rss_mib"]
            )
    finally:
        for worker in workers.values():
            worker.close()
    eight = {**one, "batch": THROUGHPUT_BATCH}
    for target in targets:
        try:
            workers, _ = start_workers("serve", [target], work_dir, size)
            try:
                batch8 = alternate(workers, eight, warmup=1, runs=batch_runs)
            finally:
                workers[target].close()
            out[target].update(
                batch8=stats(batch8["times"][target]),
                rss_batch8_mib=batch8["last"][target]["rss_mib"],
            )
        except RuntimeError as error:
            errors[f"batch{THROUGHPUT_BATCH}_{size_name(size)}_{target}"] = str(error)
            print(error, flush=True)
    return out


def run_training(targets, work_dir: str, runs: int, size) -> dict:
    print(f"training step {size_name(size)}: {', '.join(targets)}", flush=True)
    workers, ready = start_workers("train", targets, work_dir, size)
    try:
        result = alternate(workers, {"cmd": "step"}, warmup=2, runs=runs)
    finally:
        for worker in workers.values():
            worker.close()
    return {
        target: {
            **stats(result["times"][target]),
            "loss": result["last"][target]["loss"],
            "rss_built_mib": ready[target]["rss_mib"],
            "peak_rss_mib": result["last"][target]["rss_mib"],
        }
        for target in targets
    }


def run_machine_peak(work_dir: str) -> list[dict]:
    print("machine peak ...", flush=True)
    command = [sys.executable, "-m", "benchmarks.machine_peak"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    with open(os.path.join(work_dir, "logs", "machine_peak.log"), "w") as f:
        f.write(done.stderr)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def run_size(results: dict, size, targets, work_dir: str, cache: dict, runs, batch_runs):
    """Exports every target for ``size`` and measures the inference of those exported; a
    failure is recorded in ``results["errors"]`` and the rest goes on."""
    ok = []
    for target in targets_at(size, targets):
        key = f"{target}_{size_name(size)}"
        try:
            results["exports"][key] = run_export(target, size, work_dir, cache)
            ok.append(target)
        except RuntimeError as error:
            results["errors"][f"export_{key}"] = str(error)
            print(error, flush=True)
    try:
        results["inference"][size_name(size)] = run_inference(
            size, ok, work_dir, runs, batch_runs, results["errors"]
        )
    except RuntimeError as error:
        results["errors"][f"inference_{size_name(size)}"] = str(error)
        print(error, flush=True)
    write_results(work_dir, results)


def run_all(work_dir: str, opts) -> dict:
    """Every measurement; ``opts`` has the attributes of the flags (``flags.FLAGS``)."""
    quick = opts.quick
    sizes = [(512, 512)] if quick else [parse_size(s) for s in opts.sizes.split(",")]
    runs, batch_runs = opts.runs, (2 if quick else opts.batch_runs)
    train_runs = 3 if quick else opts.train_runs
    targets = opts.models.split(",")
    train_size = parse_size(opts.train_size)
    os.makedirs(os.path.join(work_dir, "logs"), exist_ok=True)
    cache_path = os.path.join(work_dir, "exports.json")
    cache = json.load(open(cache_path)) if os.path.exists(cache_path) else {}
    results = {
        "command": "python " + " ".join(sys.argv),
        "machine": machine_info(),
        "quick": quick,
        "runs": {"batch1": runs, "batch8": batch_runs, "train": train_runs},
        "train_size": list(train_size),
        "errors": {},
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    results["machine_peak"] = run_machine_peak(work_dir)
    results["exports"], results["inference"] = {}, {}
    for size in sizes:
        run_size(results, size, targets, work_dir, cache, runs, batch_runs)
        if size == sizes[0] and not opts.skip_train:  # before the largest, slowest size
            # float32 only, at the training size whatever a head's own inference sizes
            train_targets = [t for t in targets if t in (*HEADS, PEER)]
            if quick:
                train_targets = [t for t in train_targets if t != "decoupled"]
            try:
                results["training"] = run_training(train_targets, work_dir, train_runs, train_size)
            except RuntimeError as error:
                results["errors"]["training"] = str(error)
                print(error, flush=True)
            write_results(work_dir, results)
    results["load_average_end"] = os.getloadavg()
    results["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    write_results(work_dir, results)
    return results


def write_results(work_dir: str, results: dict) -> None:
    with open(os.path.join(work_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


def define_flags() -> None:
    """The command line (defined only when run as a script, so tests can import this)."""
    flags.DEFINE_string("work_dir", None, "Keeps model_dirs, SavedModels, results.json.")
    flags.DEFINE_string("sizes", "512x512,800x1333,448x768", "Image sizes HxW, comma-separated.")
    flags.DEFINE_integer("runs", 20, "Timed batch-1 calls per model and size.")
    flags.DEFINE_integer("batch_runs", 4, "Timed batch-8 calls per model and size.")
    flags.DEFINE_integer("train_runs", 5, "Timed training steps per model.")
    flags.DEFINE_bool("quick", False, "512x512 only, 20 / 2 / 3 runs, no decoupled step.")
    flags.DEFINE_bool("skip_train", False, "Leave out the training-step comparison.")
    flags.DEFINE_bool("write_docs", True, "Write the section of docs/benchmarks.md.")
    flags.DEFINE_bool("report_only", False, "Only redo the plot and docs from results.json.")
    flags.DEFINE_string("train_size", "640x640", "Training-step input HxW.")
    flags.DEFINE_string(
        "models",
        "vanilla,decoupled,solov2,vanilla_bf16,decoupled_bf16,solov2_bf16,solov2light,maskrcnn",
        "Models to measure (_bf16: the same weights exported with --compute_dtype=bfloat16).",
    )


def main(argv):
    del argv
    if not FLAGS.work_dir:
        raise app.UsageError("--work_dir is required")
    work_dir = os.path.abspath(FLAGS.work_dir)
    if FLAGS.report_only:
        with open(os.path.join(work_dir, "results.json")) as f:
            results = json.load(f)
    else:
        results = run_all(work_dir, FLAGS)
    section = report(results, work_dir, write_docs=FLAGS.write_docs)
    print(section)


if __name__ == "__main__":
    define_flags()
    app.run(main)
