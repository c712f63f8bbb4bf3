"""Trained models back from a model_dir, and detections over datasets.

A model_dir holds ``config.json`` and ``label_map.json`` (written by training) and
checkpoints; ``best/`` holds a copy of the best checkpoint when periodic evaluation ran.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from solo_tf import config as cfg
from solo_tf import postprocess
from solo_tf.data.label_map import LabelMap
from solo_tf.modeling import factory


def load_config(model_dir: str) -> cfg.SOLOConfig:
    path = os.path.join(model_dir, "config.json")
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: is {model_dir!r} a solo-tf model_dir?")
    with tf.io.gfile.GFile(path) as f:
        return cfg.from_dict(json.load(f))


def load_label_map(model_dir: str) -> LabelMap:
    return LabelMap.from_json(os.path.join(model_dir, "label_map.json"))


def find_checkpoint(model_dir: str, which: str = "best") -> str:
    """``best`` (falls back to the latest when no evaluation ran), ``latest``, or a path."""
    if which not in ("best", "latest"):
        return which
    if which == "best":
        best = tf.train.latest_checkpoint(os.path.join(model_dir, "best"))
        if best is None:
            prefixes = tf.io.gfile.glob(os.path.join(model_dir, "best", "ckpt-*.index"))
            best = prefixes[0][: -len(".index")] if prefixes else None
        if best:
            return best
    latest = tf.train.latest_checkpoint(model_dir)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {model_dir!r}")
    return latest


def load_model(model_dir: str, checkpoint: str = "best", config: cfg.SOLOConfig | None = None):
    """The SOLOModel of ``model_dir`` with its checkpoint's weights."""
    config = config or load_config(model_dir)
    model = factory.build_model(config.model)
    path = find_checkpoint(model_dir, checkpoint)
    status = tf.train.Checkpoint(model=model).restore(path)
    status.expect_partial().assert_existing_objects_matched()
    logging.info("Loaded %s", path)
    return model


def make_detect_fn(
    model, config: cfg.SOLOConfig, class_ids, output_size=None, per_image=True, lazy_masks=True
):
    """tf.function ``(images [B,H,W,3] float32, image_info [B,4,2]) -> detections``.

    The network runs on the batch; ``per_image`` (default) post-processes one image at a
    time, which gives the same detections with the memory of one image; ``lazy_masks``
    (default) computes the vanilla head's mask logits for the candidates only. Both only
    change the cost: ``False, False`` is the plain path the tests compare them against."""
    class_ids = tf.constant(np.asarray(class_ids, np.int32))
    run = postprocess.postprocess_each_image if per_image else postprocess.postprocess

    @tf.function
    def detect(images, image_info):
        outputs = model(images, training=False, lazy_masks=lazy_masks)
        return run(outputs, image_info, config.model, config.postprocess, class_ids, output_size)

    return detect


def detect_dataset(detect_fn, dataset, num_images=None, progress=True):
    """Runs ``detect_fn`` over eval batches; returns (COCO results, images per second)."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    from solo_tf import eval_lib  # noqa: PLC0415

    results, seen, timed, seconds = [], 0, 0, 0.0
    with tqdm(total=num_images, unit="img", disable=not progress, desc="detect") as bar:
        for batch in dataset:
            start = time.perf_counter()
            dets = detect_fn(batch["image"], batch["image_info"])
            dets = {k: v.numpy() for k, v in dets.items()}
            if seen:  # the first batch pays for tracing
                seconds += time.perf_counter() - start
                timed += int(batch["image"].shape[0])
            sizes = batch["image_info"].numpy()[:, 0]
            results += eval_lib.detections_to_coco_results(dets, batch["image_id"].numpy(), sizes)
            seen += int(batch["image"].shape[0])
            bar.update(int(batch["image"].shape[0]))
    return results, (timed / seconds) if seconds > 0 else float("nan")
