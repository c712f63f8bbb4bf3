"""The model_dir layout, owned here: every writer and reader of a model_dir calls this module.

A model_dir holds::

    config.json        the SOLOConfig the model was built with (``solo_tf.config.to_dict``)
    label_map.json     dataset category ids and names in class-index order (``LabelMap``)
    ckpt-<step>.*      checkpoints of ``tf.train.Checkpoint(model=..., optimizer=...)``
    checkpoint         TensorFlow's index of the latest checkpoints
    best/              a copy of the best checkpoint and its metrics.json (periodic evaluation)
    train/             TensorBoard summaries

Training writes it (``solo_tf.train_lib``), the converter writes it (``solo_tf.convert``), and
evaluation, ``predict``, the exports and the benchmarks read it through ``load_config``,
``load_label_map`` and ``find_checkpoint`` / ``restore``.
"""

from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf
from absl import logging

from solo_tf import config as cfg
from solo_tf.data.label_map import LabelMap

CONFIG = "config.json"
LABEL_MAP = "label_map.json"
BEST = "best"
CHECKPOINT_PREFIX = "ckpt"


def config_path(model_dir: str) -> str:
    return os.path.join(model_dir, CONFIG)


def label_map_path(model_dir: str) -> str:
    return os.path.join(model_dir, LABEL_MAP)


def write_metadata(model_dir: str, config: cfg.SOLOConfig, label_map: LabelMap) -> None:
    """Writes ``config.json`` and ``label_map.json`` (makes the folder)."""
    tf.io.gfile.makedirs(model_dir)
    with tf.io.gfile.GFile(config_path(model_dir), "w") as f:
        json.dump(cfg.to_dict(config), f, indent=2)
    label_map.to_json(label_map_path(model_dir))


def has_config(model_dir: str) -> bool:
    return tf.io.gfile.exists(config_path(model_dir))


def load_config(model_dir: str) -> cfg.SOLOConfig:
    path = config_path(model_dir)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: is {model_dir!r} a solo-tf model_dir?")
    with tf.io.gfile.GFile(path) as f:
        return cfg.from_dict(json.load(f))


def load_label_map(model_dir: str) -> LabelMap:
    return LabelMap.from_json(label_map_path(model_dir))


def checkpoint_readable(prefix: str) -> bool:
    """Whether a checkpoint's index and data files can be read whole."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, IndexError, OSError) as error:
        logging.warning("checkpoint %s is unreadable: %s", prefix, error)
        return False
    return True


def checkpoints(model_dir: str) -> list[str]:
    """The checkpoint prefixes of ``model_dir`` (not ``best/``), newest first."""
    state = tf.train.get_checkpoint_state(model_dir)
    prefixes = list(state.all_model_checkpoint_paths) if state else []
    if not prefixes:
        found = tf.io.gfile.glob(os.path.join(model_dir, f"{CHECKPOINT_PREFIX}-*.index"))
        prefixes = [p[: -len(".index")] for p in found]
    prefixes = [p if os.path.isabs(p) else os.path.join(model_dir, p) for p in prefixes]
    return sorted(set(prefixes), key=_step_of, reverse=True)


def _step_of(prefix: str) -> int:
    tail = prefix.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def latest_readable_checkpoint(model_dir: str) -> str | None:
    """The newest checkpoint of ``model_dir`` that reads whole; broken newer ones are named
    in a warning and passed over. None when there is no checkpoint at all."""
    candidates = checkpoints(model_dir)
    for index, prefix in enumerate(candidates):
        if checkpoint_readable(prefix):
            if index:
                logging.warning(
                    "using %s: the newer checkpoint(s) %s cannot be read",
                    prefix,
                    candidates[:index],
                )
            return prefix
    if candidates:
        raise ValueError(f"no readable checkpoint in {model_dir!r}: {candidates} are all broken")
    return None


def find_checkpoint(model_dir: str, which: str = "best") -> str:
    """``best`` (falls back to the latest when no evaluation ran), ``latest``, or a path."""
    if which not in ("best", "latest"):
        return which
    if which == "best":
        best = tf.train.latest_checkpoint(os.path.join(model_dir, BEST))
        if best is None:
            prefixes = tf.io.gfile.glob(os.path.join(model_dir, BEST, "ckpt-*.index"))
            best = prefixes[0][: -len(".index")] if prefixes else None
        if best and checkpoint_readable(best):
            return best
    latest = latest_readable_checkpoint(model_dir)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {model_dir!r}")
    return latest


def restore(model, model_dir: str, which: str = "best") -> str:
    """Restores ``model``'s weights from ``find_checkpoint(model_dir, which)``; returns it."""
    path = find_checkpoint(model_dir, which)
    status = tf.train.Checkpoint(model=model).restore(path)
    status.expect_partial().assert_existing_objects_matched()
    logging.info("Loaded %s", path)
    return path


def save_model(model, model_dir: str, step: int = 0) -> str:
    """Writes ``model`` as checkpoint ``ckpt-<step>`` (with TF's ``checkpoint`` index)."""
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model), model_dir, max_to_keep=None
    )
    return manager.save(checkpoint_number=step)


# Model fields that only act at initialisation or on which layers train: they may differ on resume.
_RESUMABLE_FIELDS = ("freeze_stem_and_stage1", "freeze_batchnorm", "prior_prob", "mask_prior_prob")


def model_differences(saved: cfg.ModelConfig, wanted: cfg.ModelConfig) -> list[str]:
    """``model.<field>: ...`` for each field, other than init-only ones, on which the
    model_dir's model and the one asked for differ (they would not share variables or
    would compute something else with them)."""
    saved_fields, wanted_fields = dataclasses.asdict(saved), dataclasses.asdict(wanted)
    names = dict.fromkeys([*saved_fields, *wanted_fields])
    return [
        f"model.{name}: {saved_fields.get(name)!r} saved, {wanted_fields.get(name)!r} asked"
        for name in names
        if name not in _RESUMABLE_FIELDS and saved_fields.get(name) != wanted_fields.get(name)
    ]
