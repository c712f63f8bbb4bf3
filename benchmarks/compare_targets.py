"""The models of the Mask R-CNN comparison by name, their input sizes and where they go.

A target is one compared model: ``vanilla``, ``decoupled`` and ``solov2`` (SOLO R50 heads,
float32; SOLOv2 as ``experiments/solov2_r50.flags``), ``solov2light`` (SOLOv2-Light R50,
``experiments/solov2_light_r50_448.flags``, measured at its own 448 x 768 input only), each
with a ``_bf16`` twin (the same weights exported with ``--compute_dtype=bfloat16``), and
``maskrcnn`` (the peer, measured at every size). Shared by the parent process
(``benchmarks.compare``), its workers (``benchmarks.workers``) and the report
(``benchmarks.compare_report``); it imports nothing heavy, so the parent stays free of
TensorFlow.
"""

from __future__ import annotations

import os

HEADS = ("vanilla", "decoupled", "solov2", "solov2light")
# Heads measured only at their own input sizes (the authors' test size for Light: short side
# 448, long side <= 768); the other SOLO heads are not measured at those sizes, the peer is.
OWN_SIZES = {"solov2light": ("448x768",)}
PEER = "maskrcnn"
THROUGHPUT_BATCH = 8
TRAIN_BATCH = 2


def split_target(target: str) -> tuple[str, str]:
    """``vanilla`` -> (``vanilla``, ``float32``); ``decoupled_bf16`` -> (``decoupled``,
    ``bfloat16``): the head and the export's ``--compute_dtype``."""
    head, _, suffix = target.partition("_")
    return head, {"": "float32", "bf16": "bfloat16"}[suffix]


def targets_at(size, targets) -> list[str]:
    """The targets measured at ``size``: the peer always, a head of ``OWN_SIZES`` at its own
    sizes only, any other head at every size that is not one of those."""
    name = size_name(size)
    own = {s for sizes in OWN_SIZES.values() for s in sizes}
    out = []
    for target in targets:
        if target != PEER:
            sizes = OWN_SIZES.get(split_target(target)[0])
            measured = name in sizes if sizes else name not in own
            if not measured:
                continue
        out.append(target)
    return out


def parse_size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def size_name(size) -> str:
    return f"{size[0]}x{size[1]}"


def saved_model_dir(work_dir: str, target: str, size) -> str:
    """``WORK_DIR/saved_models/<name>_<H>x<W>/1``: the SavedModel of ``target`` at ``size``."""
    name = PEER if target == PEER else f"solo_{target}"
    return os.path.join(work_dir, "saved_models", f"{name}_{size_name(size)}", "1")


def solo_model_dir(work_dir: str, head: str) -> str:
    """``WORK_DIR/model_dirs/solo_<head>``: the random-weight model_dir that the float32 and
    bfloat16 exports of ``head`` share."""
    return os.path.join(work_dir, "model_dirs", f"solo_{head}")
