"""The worker processes of the Mask R-CNN comparison and the parent's side of their protocol.

Each model is measured in a process of its own, so that its peak memory (``ru_maxrss``) is
its own: ``python -m benchmarks.workers --worker=KIND --target=...`` where KIND is

* ``serve``: loads the SavedModel ``--target`` and answers ``{"batch", "height", "width"}``
  with one timed ``serving_default`` call on a random uint8 batch of that size;
* ``train``: builds ``--target``'s training step for ``--size`` inputs and answers each line
  with one timed step;
* ``export``: exports ``--target`` for ``--size`` (writing its model_dir first when missing),
  prints its FLOPs and exits.

Protocol: the parent writes one JSON command a line on the worker's stdin (``{"cmd": "quit"}``
ends it); the worker answers each with one stdout line ``@@{json}`` holding ``seconds`` and
``rss_mib`` (``{"error": traceback}`` when the call failed), after a first ``{"ready": true}``.

Imports: this module is imported by the parent process too, which stays free of TensorFlow,
and a worker loads only its own model's libraries (its ``ru_maxrss`` is a reported figure, and
Model Garden's Keras 2 never shares a process with a Keras 3 SOLO model). So the model
libraries are imported inside the worker functions, not at the top.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import traceback

import numpy as np
from absl import app, flags

from benchmarks.compare_targets import PEER, TRAIN_BATCH, parse_size, saved_model_dir, size_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---------------------------------------------------------------- in the worker process


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
    import tensorflow as tf  # here: the parent imports this module and stays free of TF

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
    # Each side imported here: a worker loads only its own model's libraries.
    if target == PEER:
        from benchmarks import peer_maskrcnn

        step, _ = peer_maskrcnn.make_train_step(TRAIN_BATCH, size)
    else:
        from benchmarks import compare_models

        step = compare_models.solo_train_step(target, TRAIN_BATCH, size)

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
    # Each side imported here: a worker loads only its own model's libraries.
    if target == PEER:
        from benchmarks import peer_maskrcnn

        peer_maskrcnn.export_peer(os.path.dirname(export_dir), size)
        count, by_type = peer_maskrcnn.serve_flops(size)
        result = {"flops": count, "flops_by_type": by_type}
    else:
        from benchmarks import compare_models

        result = compare_models.export_target(target, size, work_dir, export_dir)
    emit({**result, "export_s": time.perf_counter() - start, "rss_mib": peak_rss_mib()})


# ---------------------------------------------------------------- in the parent


class Worker:
    """A worker subprocess driven line by line; its stderr goes to ``log_path``."""

    def __init__(self, args: list[str], log_path: str):
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115  (closed in close())
        command = [sys.executable, "-m", "benchmarks.workers", *args]
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


def export_in_worker(target: str, size, work_dir: str, log_path: str) -> dict:
    """Runs one ``export`` worker to its end; returns its reply (FLOPs, export seconds)."""
    worker = Worker(
        [
            "--worker=export",
            f"--target={target}",
            f"--size={size_name(size)}",
            f"--work_dir={work_dir}",
        ],
        log_path,
    )
    reply = worker.read()
    worker.close()
    return reply


# ---------------------------------------------------------------- the worker's command line


def define_flags() -> None:
    """The worker's command line (defined only when run as a worker, so the parent can import
    this module next to its own flags)."""
    flags.DEFINE_enum("worker", None, ["serve", "train", "export"], "The worker's job.")
    flags.DEFINE_string("target", "", "serve: a SavedModel folder; train, export: a target.")
    flags.DEFINE_string("size", "", "train, export: the image size HxW.")
    flags.DEFINE_string("work_dir", "", "export: the comparison's work_dir.")
    flags.mark_flag_as_required("worker")


def main(argv):
    del argv
    if FLAGS.worker == "serve":
        serve_worker(FLAGS.target)
    elif FLAGS.worker == "train":
        train_worker(FLAGS.target, parse_size(FLAGS.size))
    else:
        export_worker(FLAGS.target, parse_size(FLAGS.size), FLAGS.work_dir)


if __name__ == "__main__":
    define_flags()
    app.run(main)
