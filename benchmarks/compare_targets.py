"""The models of the Mask R-CNN comparison by name, their input sizes and where they go.

A target is one compared model: ``vanilla`` and ``decoupled`` (SOLO R50 heads, float32),
``vanilla_bf16`` and ``decoupled_bf16`` (the same weights exported with
``--compute_dtype=bfloat16``), and ``maskrcnn`` (the peer). Shared by the parent process
(``benchmarks.compare``), its workers (``benchmarks.workers``) and the report
(``benchmarks.compare_report``); it imports nothing heavy, so the parent stays free of
TensorFlow.
"""

from __future__ import annotations

import os

HEADS = ("vanilla", "decoupled")
PEER = "maskrcnn"
THROUGHPUT_BATCH = 8
TRAIN_BATCH = 2


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


def saved_model_dir(work_dir: str, target: str, size) -> str:
    """``WORK_DIR/saved_models/<name>_<H>x<W>/1``: the SavedModel of ``target`` at ``size``."""
    name = PEER if target == PEER else f"solo_{target}"
    return os.path.join(work_dir, "saved_models", f"{name}_{size_name(size)}", "1")


def solo_model_dir(work_dir: str, head: str) -> str:
    """``WORK_DIR/model_dirs/solo_<head>``: the random-weight model_dir that the float32 and
    bfloat16 exports of ``head`` share."""
    return os.path.join(work_dir, "model_dirs", f"solo_{head}")
