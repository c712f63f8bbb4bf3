"""The SOLO side of the Mask R-CNN comparison: its models, exports and training step.

SOLO models: the full default ``ModelConfig`` (ResNet-50, 80 classes) with the head, or for
SOLOv2 the model section of the authors' config in ``experiments/`` (``FLAGFILES``), with
random weights, written as a model_dir (``solo_tf.model_dir``) and exported by
``export.saved_model`` from a ``Detector``; the input size sets the ``DataConfig`` of the
export (short side, long-side cap, padding to a multiple of 32). Imported only by the SOLO
worker processes of ``benchmarks.compare`` (see ``benchmarks.workers``).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from benchmarks import flops
from benchmarks.compare_targets import solo_model_dir, split_target
from export import saved_model, serving_module
from solo_tf import config as cfg
from solo_tf import flags as solo_flags
from solo_tf import model_dir as model_dir_lib
from solo_tf import optimization, train_lib
from solo_tf.data.label_map import LabelMap
from solo_tf.detector import Detector
from solo_tf.modeling import factory
from solo_tf.targets import build_targets

NUM_INSTANCES = 8
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Heads whose model is an experiment flagfile's (the authors' config) rather than the default
# ModelConfig with another head_type.
FLAGFILES = {
    "solov2": "experiments/solov2_r50.flags",
    "solov2light": "experiments/solov2_light_r50_448.flags",
}


def _flagfile_config(path: str) -> cfg.SOLOConfig:
    """A flagfile's model, targets and post-processing; the default data and training
    sections (no pretrained backbone: random weights here; the export sets the input size)."""
    config = solo_flags.config_from_args([f"--flagfile={os.path.join(ROOT, path)}"], "compare")
    return cfg.SOLOConfig(
        model=config.model, targets=config.targets, postprocess=config.postprocess
    )


def solo_config(head: str, image_size=None) -> cfg.SOLOConfig:
    """The default ``SOLOConfig`` with ``head`` (for a ``FLAGFILES`` head, the model of its
    flagfile, the rest default); with ``image_size``, ``with_input_size``."""
    if head in FLAGFILES:
        config = _flagfile_config(FLAGFILES[head])
    else:
        config = cfg.SOLOConfig(model=cfg.ModelConfig(head_type=head))
    return config if image_size is None else with_input_size(config, image_size)


def with_input_size(config: cfg.SOLOConfig, image_size) -> cfg.SOLOConfig:
    """``config`` whose eval resize keeps (H, W) images as they are, padded to multiples of 32."""
    height, width = image_size
    data = dataclasses.replace(
        config.data,
        eval_short_side=min(height, width),
        max_long_side=max(height, width),
        output_size=(-(-height // 32) * 32, -(-width // 32) * 32),
    )
    return dataclasses.replace(config, data=data)


def numbered_label_map(num_classes: int) -> LabelMap:
    """Category ids 1..num_classes named ``class_<id>``: the label map of random-weight models."""
    ids = tuple(range(1, num_classes + 1))
    return LabelMap(ids=ids, names=tuple(f"class_{i}" for i in ids))


def write_model_dir(model_dir: str, head: str) -> None:
    """config.json, an 80-class label map and a random-weight checkpoint of SOLO R50 ``head``."""
    tf.keras.utils.set_random_seed(0)
    config = solo_config(head)
    model = factory.build_model(config.model)
    model_dir_lib.write_metadata(model_dir, config, numbered_label_map(config.model.num_classes))
    model_dir_lib.save_model(model, model_dir)


def export_solo(model_dir: str, export_dir: str, image_size, compute_dtype="float32") -> dict:
    """Exports ``model_dir`` for ``image_size`` inputs; returns its FLOPs and parameters.

    FLOPs are counted on the batched post-processing (``per_image=False``: the profiler does
    not count ops inside the per-image ``tf.map_fn``); the arithmetic is the same."""
    config = with_input_size(model_dir_lib.load_config(model_dir), image_size)
    detector = Detector.from_model_dir(model_dir, "latest", compute_dtype, config=config)
    saved_model.export_saved_model(detector, export_dir)
    spec = tf.TensorSpec([1, *image_size, 3], tf.uint8)
    serve = serving_module.serve_images_fn(detector, per_image=False)
    count, by_type = flops.function_flops_by_type(serve, [spec])
    return {"flops": count, "flops_by_type": by_type, "params": int(detector.model.count_params())}


def export_target(target: str, size, work_dir: str, export_dir: str) -> dict:
    """Exports SOLO ``target`` for ``size`` inputs, writing its model_dir first when missing
    (the bfloat16 export of a head shares the float32 one's weights)."""
    head, compute_dtype = split_target(target)
    model_dir = solo_model_dir(work_dir, head)
    if not model_dir_lib.checkpoints(model_dir):
        write_model_dir(model_dir, head)
    return export_solo(model_dir, export_dir, size, compute_dtype)


def synthetic_boxes(rng, size) -> list[tuple[int, int, int, int]]:
    """``NUM_INSTANCES`` (y, x, h, w) boxes; the peer draws its instances the same way."""
    height, width = size
    boxes = []
    for _ in range(NUM_INSTANCES):
        h, w = int(rng.integers(32, height // 3)), int(rng.integers(32, width // 3))
        boxes.append((int(rng.integers(0, height - h)), int(rng.integers(0, width - w)), h, w))
    return boxes


def synthetic_batch(config: cfg.SOLOConfig, batch_size: int, size) -> dict:
    """``batch_size`` random images of ``size`` with box-shaped instances and their targets."""
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
    return {
        "image": np.stack(images),
        "targets": tf.nest.map_structure(lambda *t: tf.stack(t), *targets),
    }


def solo_train_step(head: str, batch_size: int, size):
    """``step() -> loss``: one ``train_lib`` loop step (one replica step) on a fixed batch."""
    tf.keras.utils.set_random_seed(0)
    config = solo_config(head)
    model = factory.build_model(config.model)
    optimizer = optimization.build_optimizer(config.train, steps_per_epoch=1000)
    batch = synthetic_batch(config, batch_size, size)
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    strategy = tf.distribute.get_strategy()
    loop = train_lib.make_train_loop(
        strategy, train_lib.make_replica_step(model, optimizer, config)
    )
    return lambda: loop(iterator, tf.constant(1))["loss"]
