"""SOLO R50 and Decoupled SOLO R50 against Model Garden's Mask R-CNN R50-FPN, one command.

Run:   .venv/bin/python benchmarks/compare.py --work_dir runs/compare           # full run
       .venv/bin/python benchmarks/compare.py --work_dir runs/compare --quick   # 512x512 only
       .venv/bin/python benchmarks/compare.py --work_dir runs/compare --report_only
Models: SOLO R50 and Decoupled SOLO R50 in float32 and, with the same weights, exported
with ``--compute_dtype=bfloat16`` (``vanilla_bf16``, ``decoupled_bf16``), and the peer;
``--models`` picks a subset. The run takes about an hour on 2 CPU cores.
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
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: make ``benchmarks``, ``export``, ``solo_tf`` importable
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
HEADS = ("vanilla", "decoupled")
PEER = "maskrcnn"
THROUGHPUT_BATCH = 8
TRAIN_BATCH = 2
NUM_INSTANCES = 8
LABEL = {
    "vanilla": "SOLO R50",
    "decoupled": "Decoupled SOLO R50",
    "vanilla_bf16": "SOLO R50, bfloat16",
    "decoupled_bf16": "Decoupled SOLO R50, bfloat16",
    PEER: "Mask R-CNN R50-FPN (Model Garden)",
}


def split_target(target: str) -> tuple[str, str]:
    """``vanilla`` -> (``vanilla``, ``float32``); ``decoupled_bf16`` -> (``decoupled``,
    ``bfloat16``): the head and the export's ``--compute_dtype``."""
    head, _, suffix = target.partition("_")
    return head, {"": "float32", "bf16": "bfloat16"}[suffix]


def parse_size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def size_name(size) -> str:
    return f"{size[0]}x{size[1]}"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---------------------------------------------------------------- SOLO side (worker processes)


def solo_config(head: str, image_size=None):
    """The default ``SOLOConfig`` with ``head``; with ``image_size``, ``with_input_size``."""
    from solo_tf import config as cfg  # noqa: PLC0415

    config = cfg.SOLOConfig(model=cfg.ModelConfig(head_type=head))
    return config if image_size is None else with_input_size(config, image_size)


def with_input_size(config, image_size):
    """``config`` whose eval resize keeps (H, W) images as they are, padded to multiples of 32."""
    height, width = image_size
    data = dataclasses.replace(
        config.data,
        eval_short_side=min(height, width),
        max_long_side=max(height, width),
        output_size=(-(-height // 32) * 32, -(-width // 32) * 32),
    )
    return dataclasses.replace(config, data=data)


def write_model_dir(model_dir: str, head: str) -> None:
    """config.json, an 80-class label map and a random-weight checkpoint of SOLO R50 ``head``."""
    import tensorflow as tf  # noqa: PLC0415

    from solo_tf import model_dir as model_dir_lib  # noqa: PLC0415
    from solo_tf.data.label_map import LabelMap  # noqa: PLC0415
    from solo_tf.modeling import factory  # noqa: PLC0415

    tf.keras.utils.set_random_seed(0)
    config = solo_config(head)
    model = factory.build_model(config.model)
    ids = tuple(range(1, config.model.num_classes + 1))
    label_map = LabelMap(ids=ids, names=tuple(f"class_{i}" for i in ids))
    model_dir_lib.write_metadata(model_dir, config, label_map)
    model_dir_lib.save_model(model, model_dir)


def export_solo(model_dir: str, export_dir: str, image_size, compute_dtype="float32") -> dict:
    """Exports ``model_dir`` for ``image_size`` inputs; returns its FLOPs and parameters.

    FLOPs are counted on the batched post-processing (``per_image=False``: the profiler does
    not count ops inside the per-image ``tf.map_fn``); the arithmetic is the same."""
    import tensorflow as tf  # noqa: PLC0415

    from benchmarks import flops  # noqa: PLC0415
    from export import saved_model, serving_module  # noqa: PLC0415
    from solo_tf.detector import Detector  # noqa: PLC0415

    source = Detector.from_model_dir(model_dir, "latest", compute_dtype)
    source = dataclasses.replace(source, config=with_input_size(source.config, image_size))
    saved_model.export_saved_model(source, export_dir)
    spec = tf.TensorSpec([1, *image_size, 3], tf.uint8)
    serve = serving_module.serve_images_fn(source, per_image=False)
    count, by_type = flops.function_flops_by_type(serve, [spec])
    return {"flops": count, "flops_by_type": by_type, "params": int(source.model.count_params())}


def synthetic_boxes(rng, size) -> list[tuple[int, int, int, int]]:
    """``NUM_INSTANCES`` (y, x, h, w) boxes; the peer draws its instances the same way."""
    height, width = size
    boxes = []
    for _ in range(NUM_INSTANCES):
        h, w = int(rng.integers(32, height // 3)), int(rng.integers(32, width // 3))
        boxes.append((int(rng.integers(0, height - h)), int(rng.integers(0, width - w)), h, w))
    return boxes


def solo_train_step(head: str, batch_size: int, size):
    """``step() -> loss``: one ``train_lib`` loop step (one replica step) on a fixed batch."""
    import tensorflow as tf  # noqa: PLC0415

    from solo_tf import optimization, train_lib  # noqa: PLC0415
    from solo_tf.modeling import factory  # noqa: PLC0415
    from solo_tf.targets import build_targets  # noqa: PLC0415

    tf.keras.utils.set_random_seed(0)
    config = solo_config(head)
    model = factory.build_model(config.model)
    optimizer = optimization.build_optimizer(config.train, steps_per_epoch=1000)
    images, targets = [], []
    for seed in range(batch_size):
        rng = np.random.default_rng(seed)
        masks = np.zeros((NUM_INSTANCES, *size), np.uint8)
        for n, (y, x, h, w) in enumerate(synthetic_boxes(rng, size)):
            masks[n, y : y + h, x : x + w] = 1
        classes = tf.constant(rng.integers(0, 80, NUM_INSTANCES), tf.int32)
        crowd = tf.zeros([NUM_INSTANCES], tf.bool)
        targets.append(build_targets(tf.constant(masks), classes, crowd, config.targets, size))
        images.append(rng.uniform(0, 255, (*size, 3)).astype(np.float32))
    batch = {
        "image": np.stack(images),
        "targets": tf.nest.map_structure(lambda *t: tf.stack(t), *targets),
    }
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    strategy = tf.distribute.get_strategy()
    loop = train_lib.make_train_loop(
        strategy, train_lib.make_replica_step(model, optimizer, config)
    )
    return lambda: loop(iterator, tf.constant(1))["loss"]


# ---------------------------------------------------------------- worker processes


def emit(message: dict) -> None:
    print("@@" + json.dumps(message), flush=True)


def serve_loop(run) -> None:
    """Answers JSON commands on stdin: ``{"batch", "height", "width"}`` runs one timed call."""
    emit({"ready": True, "rss_mib": peak_rss_mib()})
    for line in sys.stdin:
        message = json.loads(line)
        if message.get("cmd") == "quit":
            break
        try:
            emit({**run(message), "rss_mib": peak_rss_mib()})
        except Exception:  # noqa: BLE001  (the parent reports it)
            emit({"error": traceback.format_exc()[-4000:]})


def serve_worker(path: str) -> None:
    import tensorflow as tf  # noqa: PLC0415

    fn = tf.saved_model.load(path).signatures["serving_default"]
    (input_name,) = fn.structured_input_signature[1].keys()
    inputs, rng = {}, np.random.default_rng(0)

    def run(message):
        key = (message["batch"], message["height"], message["width"])
        if key not in inputs:
            inputs[key] = tf.constant(rng.integers(0, 256, (*key, 3), np.uint8))
        start = time.perf_counter()
        outputs = fn(**{input_name: inputs[key]})
        count = outputs["num_detections"].numpy()  # waits for the whole call
        return {"seconds": time.perf_counter() - start, "detections": int(count.sum())}

    serve_loop(run)


def train_worker(target: str, size) -> None:
    if target == PEER:
        from benchmarks import peer_maskrcnn  # noqa: PLC0415

        step, _ = peer_maskrcnn.make_train_step(TRAIN_BATCH, size)
    else:
        step = solo_train_step(target, TRAIN_BATCH, size)

    def run(message):
        del message
        start = time.perf_counter()
        loss = float(step())
        return {"seconds": time.perf_counter() - start, "loss": loss}

    serve_loop(run)


def export_worker(target: str, size, work_dir: str) -> None:
    """Exports one model for one size (and its model_dir when missing); emits FLOPs."""
    start = time.perf_counter()
    export_dir = saved_model_dir(work_dir, target, size)
    if target == PEER:
        from benchmarks import peer_maskrcnn  # noqa: PLC0415

        peer_maskrcnn.export_peer(os.path.dirname(export_dir), size)
        count, by_type = peer_maskrcnn.serve_flops(size)
        result = {"flops": count, "flops_by_type": by_type}
    else:
        head, compute_dtype = split_target(target)  # bf16 exports share the fp32 weights
        model_dir = os.path.join(work_dir, "model_dirs", f"solo_{head}")
        if not os.path.exists(os.path.join(model_dir, "checkpoint")):
            write_model_dir(model_dir, head)
        result = export_solo(model_dir, export_dir, size, compute_dtype)
    emit({**result, "export_s": time.perf_counter() - start, "rss_mib": peak_rss_mib()})


def saved_model_dir(work_dir: str, target: str, size) -> str:
    name = PEER if target == PEER else f"solo_{target}"
    return os.path.join(work_dir, "saved_models", f"{name}_{size_name(size)}", "1")


# ---------------------------------------------------------------- the parent


class Worker:
    """A worker subprocess driven line by line; its stderr goes to ``log_path``."""

    def __init__(self, args: list[str], log_path: str):
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115  (closed in close())
        command = [sys.executable, os.path.abspath(__file__), *args]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
            env=env,
        )

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("@@"):
                message = json.loads(line[2:])
                if "error" in message:
                    raise RuntimeError(f"worker failed ({self.log_path}):\n{message['error']}")
                return message
        self.proc.wait()
        with open(self.log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(
            f"worker exited {self.proc.returncode} (-9: killed, e.g. out of memory) "
            f"({self.log_path}):\n{tail}"
        )

    def call(self, message: dict) -> dict:
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the worker died (killed for memory, say): read() reports how
        return self.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=120)
        if self.proc.returncode == -9:
            print(f"{self.log_path}: worker killed (SIGKILL: out of memory?)", flush=True)
        self.log.close()


def alternate(workers: dict, message: dict, warmup: int, runs: int) -> dict:
    """Rotating round-robin calls; returns per-worker lists of seconds and the last replies."""
    names = list(workers)
    for _ in range(warmup):
        for name in names:
            workers[name].call(message)
    times, last = {name: [] for name in names}, {}
    for run in range(runs):
        order = names[run % len(names) :] + names[: run % len(names)]
        for name in order:
            last[name] = workers[name].call(message)
            times[name].append(last[name]["seconds"])
    return {"times": times, "last": last}


def stats(times: list[float]) -> dict:
    return {
        "median_s": float(np.median(times)),
        "p90_s": float(np.percentile(times, 90)),
        "min_s": float(min(times)),
        "max_s": float(max(times)),
        "times_s": [float(t) for t in times],
    }


def start_workers(kind: str, targets, work_dir: str, size) -> tuple[dict, dict]:
    """Starts one worker per target (they load in parallel); returns them and their first
    replies. ``serve`` workers load the SavedModel of ``size``; ``train`` workers build their
    model for ``size`` inputs."""
    workers = {}
    for target in targets:
        if kind == "serve":
            args = [f"--target={saved_model_dir(work_dir, target, size)}"]
        else:
            args = [f"--target={target}", f"--size={size_name(size)}"]
        log = os.path.join(work_dir, "logs", f"{kind}_{target}_{size_name(size)}.log")
        workers[target] = Worker([f"--worker={kind}", *args], log)
    ready = {target: worker.read() for target, worker in workers.items()}
    return workers, ready


def run_export(target: str, size, work_dir: str, cache: dict) -> dict:
    key = f"{target}_{size_name(size)}"
    path = saved_model_dir(work_dir, target, size)
    if key in cache and os.path.exists(os.path.join(path, "saved_model.pb")):
        return cache[key]
    print(f"exporting {key} ...", flush=True)
    worker = Worker(
        [
            "--worker=export",
            f"--target={target}",
            f"--size={size_name(size)}",
            f"--work_dir={work_dir}",
        ],
        os.path.join(work_dir, "logs", f"export_{key}.log"),
    )
    cache[key] = {**worker.read(), "path": path}
    worker.close()
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
        ok = []
        for target in targets:
            try:
                results["exports"][f"{target}_{size_name(size)}"] = run_export(
                    target, size, work_dir, cache
                )
                ok.append(target)
            except RuntimeError as error:
                results["errors"][f"export_{target}_{size_name(size)}"] = str(error)
                print(error, flush=True)
        try:
            results["inference"][size_name(size)] = run_inference(
                size, ok, work_dir, runs, batch_runs, results["errors"]
            )
        except RuntimeError as error:
            results["errors"][f"inference_{size_name(size)}"] = str(error)
            print(error, flush=True)
        write_results(work_dir, results)
        if size == sizes[0] and not opts.skip_train:  # before the largest, slowest size
            train_targets = [t for t in targets if t in (*HEADS, PEER)]  # float32 only
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
    flags.DEFINE_string("sizes", "512x512,800x1333", "Image sizes HxW, comma-separated.")
    flags.DEFINE_integer("runs", 20, "Timed batch-1 calls per model and size.")
    flags.DEFINE_integer("batch_runs", 4, "Timed batch-8 calls per model and size.")
    flags.DEFINE_integer("train_runs", 5, "Timed training steps per model.")
    flags.DEFINE_bool("quick", False, "512x512 only, 20 / 2 / 3 runs, no decoupled step.")
    flags.DEFINE_bool("skip_train", False, "Leave out the training-step comparison.")
    flags.DEFINE_bool("write_docs", True, "Write the section of docs/benchmarks.md.")
    flags.DEFINE_bool("report_only", False, "Only redo the plot and docs from results.json.")
    flags.DEFINE_string("worker", "", "Internal: serve, train, export or peak.")
    flags.DEFINE_string("target", "", "Internal: the worker's model.")
    flags.DEFINE_string("size", "", "Internal: the worker's image size HxW.")
    flags.DEFINE_string("train_size", "640x640", "Training-step input HxW.")
    flags.DEFINE_string(
        "models",
        "vanilla,decoupled,vanilla_bf16,decoupled_bf16,maskrcnn",
        "Models to measure (_bf16: the same weights exported with --compute_dtype=bfloat16).",
    )


# ---------------------------------------------------------------- the report

SECTION = "## Against Model Garden's Mask R-CNN"
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")
PLOT = os.path.join(ROOT, "docs", "images", "latency_vs_size.png")
# Model Garden pads to 2^max_level.
PAD = {"vanilla": 32, "decoupled": 32, "vanilla_bf16": 32, "decoupled_bf16": 32, PEER: 64}


def machine_info() -> dict:
    """CPU model, cores, TF version and GPU (if any), without importing TensorFlow."""
    from importlib import metadata  # noqa: PLC0415

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


def plot(results: dict, paths: list[str]) -> None:
    """Batch-1 latency (median, bar up to p90) against input pixels, one line per model."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = list(results["inference"])
    for target in LABEL:
        points = [
            (s, results["inference"][s][target]["batch1"])
            for s in sizes
            if target in results["inference"][s]
        ]
        if not points:
            continue
        x = [np.prod(parse_size(s)) / 1e6 for s, _ in points]
        y = [p["median_s"] * 1e3 for _, p in points]
        up = [(p["p90_s"] - p["median_s"]) * 1e3 for _, p in points]
        ax.errorbar(x, y, yerr=[[0] * len(up), up], marker="o", capsize=3, label=LABEL[target])
    ax.set_xticks([np.prod(parse_size(s)) / 1e6 for s in sizes], sizes)
    ax.set_xlabel("input image (H x W)")
    ax.set_ylabel("batch-1 latency, ms (median; bar to p90)")
    machine = results["machine"]
    device = machine["gpu"] if machine["gpu"] != "none" else f"{machine['cores']} CPU cores"
    ax.set_title(f"SavedModel serving_default, {device}", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    for path in paths:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fig.savefig(path, dpi=110)
    plt.close(fig)


def _dtype(target: str) -> str:
    return "float32" if target == PEER else split_target(target)[1]


def _ratio(ours: float, peer: float | None) -> str:
    return f"{ours / peer:.2f}" if peer else "-"


def inference_rows(results: dict, peaks: dict) -> list[str]:
    """One table row per (size, model); % of peak is of the row's own dtype's matmul peak."""
    rows = []
    for size, by_target in results["inference"].items():
        peer = by_target.get(PEER)
        h, w = parse_size(size)
        for target, r in by_target.items():
            b1, b8 = r["batch1"], r.get("batch8")
            ips = THROUGHPUT_BATCH / b8["median_s"] if b8 else float("nan")
            peer_ips = peer and peer.get("batch8") and THROUGHPUT_BATCH / peer["batch8"]["median_s"]
            rss8 = f"{r['rss_batch8_mib'] / 1024:.2f}" if b8 else "-"
            ips_text = f"{ips:.2f}" if b8 else "-"
            flops = results["exports"].get(f"{target}_{size}", {}).get("flops", 0)
            achieved = flops / b1["median_s"] / 1e9
            pad = PAD[target]
            padded = f"{-(-h // pad) * pad}x{-(-w // pad) * pad}"
            rows.append(
                f"| {LABEL[target]} | {size} ({padded}) | {b1['median_s'] * 1e3:.0f} | "
                f"{b1['p90_s'] * 1e3:.0f} | "
                f"{_ratio(b1['median_s'], peer and peer['batch1']['median_s'])} | "
                f"{ips_text} | {_ratio(ips, peer_ips) if b8 else '-'} | "
                f"{r['rss_batch1_mib'] / 1024:.2f} / {rss8} | "
                f"{flops / 1e9:.0f} | {achieved:.0f} | "
                f"{100 * achieved / peaks[_dtype(target)]:.0f}% {_dtype(target)} |"
            )
    return rows


def training_rows(results: dict) -> list[str]:
    training = results.get("training", {})
    peer = training.get(PEER)
    return [
        f"| {LABEL[t]} | {r['median_s']:.2f} | {r['p90_s']:.2f} | "
        f"{_ratio(r['median_s'], peer and peer['median_s'])} | "
        f"{r['peak_rss_mib'] / 1024:.2f} |"
        for t, r in training.items()
    ]


def flops_breakdown(results: dict) -> list[str]:
    """One line per export: the op types that hold most of its counted FLOPs."""
    lines = []
    for key, export in results["exports"].items():
        by_type = export.get("flops_by_type")
        if not by_type:
            continue
        target, size = key.rsplit("_", 1)
        top = sorted(by_type.items(), key=lambda kv: -kv[1])[:4]
        shares = ", ".join(f"{op} {100 * n / export['flops']:.0f}%" for op, n in top)
        lines.append(f"- {LABEL[target]}, {size}: {export['flops'] / 1e9:.0f} GFLOPs; {shares}")
    return lines


def markdown(results: dict) -> str:
    m, runs = results["machine"], results["runs"]
    peaks = {p["dtype"]: p for p in results["machine_peak"]}
    fp32 = peaks.get("float32", {}).get("gflops", float("nan"))
    device = f"{m['cores']} CPU cores ({m['cpu']}), {m['memory_gib']:.0f} GiB" + (
        f", GPU {m['gpu']}" if m["gpu"] != "none" else ", no GPU"
    )
    mode = "`--quick` (512x512 only, fewer runs)" if results["quick"] else "the full run"
    lines = [
        SECTION,
        "",
        f"`{results['command']}` ({mode}, {results['started']} to {results.get('finished', '?')}) "
        f"on {device}; TensorFlow {m['tensorflow']}, tf-models-official "
        f"{m['tf_models_official']}; 1-minute load average {m['load_average_start'][0]:.1f} at "
        f"the start, {results.get('load_average_end', [float('nan')])[0]:.1f} at the end.",
        *(["", results["note"]] if results.get("note") else []),
        "",
        "Models, all with random weights: SOLO R50 and Decoupled SOLO R50 (the "
        "default `ModelConfig`: ResNet-50, FPN, 7-conv heads, grids 40..12, 80 classes; exported "
        "by `export.saved_model`, post-processing inside: Matrix NMS, masks resized to the "
        "image; float32, and the same weights exported with `--compute_dtype=bfloat16`: "
        "bfloat16 convolutions under Keras' `mixed_bfloat16` policy, float32 "
        "post-processing; the SavedModels post-process one image at a time) and Model Garden's "
        "`maskrcnn_resnetfpn_coco` (ResNet-50-FPN, 91 classes, "
        "exported by `official.vision.serving.export_saved_model_lib`, `image_tensor` input, "
        "dynamic batch; its masks come out as 28 x 28 crops per box, not pasted into the "
        "image). Inference: each SavedModel's `serving_default` on a uint8 [B, H, W, 3] "
        "tensor, each model in its own worker process, calls alternated between the models "
        f"in a rotating order; batch 1: median and p90 of {runs['batch1']} calls after 2 "
        f"warm-up calls; batch {THROUGHPUT_BATCH}: images/s from the median of "
        f"{runs['batch8']} calls after 1 warm-up call, one model at a time (its own fresh "
        "worker, the others closed, so that their memory does not add up). "
        "x peer: ours / Mask R-CNN from the same run (latency: below 1 "
        "is faster; throughput: above 1 is faster). Peak RSS: the worker's `ru_maxrss` after "
        "the batch-1 calls / after the batch-8 calls (the model loaded included). GFLOPs: one "
        "batch-1 call of the serving function, counted by the TF profiler "
        "(`benchmarks/flops.py`: multiply-add = 2; ops inside while loops and dynamically "
        "shaped ops after NMS not counted); achieved = GFLOPs / batch-1 median; % peak: of "
        f"the matmul peak below in the row's dtype (float32 {fp32:.0f} GFLOP/s, bfloat16 "
        f"{peaks.get('bfloat16', {}).get('gflops', float('nan')):.0f}).",
        "",
        "| model | input (padded) | batch-1 median ms | p90 ms | x peer | "
        f"batch-{THROUGHPUT_BATCH} images/s | x peer | peak RSS GiB (b1 / b{THROUGHPUT_BATCH}) "
        "| GFLOPs / image | achieved GFLOP/s | % of peak |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *inference_rows(results, {d: p.get("gflops", float("nan")) for d, p in peaks.items()}),
        "",
        "![latency vs input size](images/latency_vs_size.png)",
        "",
        "Where the counted FLOPs of one batch-1 serving call go (op types, share of the total):",
        "",
        *flops_breakdown(results),
        "",
    ]
    if results.get("training"):
        lines += [
            f"Training step, batch {TRAIN_BATCH}, {size_name(results['train_size'])}, float32, "
            f"{runs['train']} steps per model after 2 warm-up steps, alternated: SOLO through "
            "`train_lib.make_train_loop` + `make_replica_step` (forward, `solo_loss`, gradients, "
            "clip, SGD momentum update); Mask R-CNN through Model Garden's "
            "`MaskRCNNTask.train_step` (forward with RPN and RoI sampling, losses, gradients, "
            "SGD momentum update) on examples made by its own `maskrcnn_input.Parser`; 8 "
            "box-shaped instances per image for both. Peak RSS: the worker's `ru_maxrss`.",
            "",
            "| model | step median s | p90 s | x peer | peak RSS GiB |",
            "|---|---:|---:|---:|---:|",
            *training_rows(results),
            "",
        ]
    lines += [
        "Machine peak (`benchmarks/machine_peak.py`, best of 5 square matmuls, 2 n^3 FLOPs):",
        "",
        "| dtype | n | GFLOP/s |",
        "|---|---:|---:|",
        *[f"| {p['dtype']} | {p['n']} | {p['gflops']:.0f} |" for p in results["machine_peak"]],
    ]
    if results["errors"]:
        lines += [
            "",
            "Did not run: "
            + "; ".join(f"{k}: {v.strip().splitlines()[0]}" for k, v in results["errors"].items()),
        ]
    return "\n".join(lines) + "\n"


def report(results: dict, work_dir: str, write_docs: bool = True) -> str:
    paths = [os.path.join(work_dir, "latency_vs_size.png")] + ([PLOT] if write_docs else [])
    if results["inference"]:
        plot(results, paths)
    from benchmarks.docs_section import replace_section  # noqa: PLC0415

    section = markdown(results)
    with open(os.path.join(work_dir, "section.md"), "w") as f:
        f.write(section)
    if write_docs:
        replace_section(DOCS, section)
    return section


def main(argv):
    del argv
    if FLAGS.worker == "serve":
        serve_worker(FLAGS.target)
    elif FLAGS.worker == "train":
        train_worker(FLAGS.target, parse_size(FLAGS.size))
    elif FLAGS.worker == "export":
        export_worker(FLAGS.target, parse_size(FLAGS.size), FLAGS.work_dir)
    else:
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
