"""The peer: TF Model Garden's Mask R-CNN R50-FPN, built, exported and trained by Model Garden.

Everything comes from ``tf-models-official`` (Keras 2 through ``tf_keras``), so this module is
imported only by the peer's own subprocesses (``benchmarks.workers`` never mixes it with a
Keras 3 SOLO model in one process):

* ``experiment_config(image_size)``: the ``maskrcnn_resnetfpn_coco`` experiment from
  ``official.core.exp_factory`` (ResNet-50, FPN P2-P6, 91 classes with background, mask head
  28 x 28) with the input size set, no pretrained checkpoint (random weights: there is no
  network here) and float32 (the experiment's runtime asks for bfloat16 on TPU; SOLO is timed
  in float32 too);
* ``export_peer(export_dir, image_size)``: ``export_saved_model_lib.export_inference_graph``
  with ``input_type="image_tensor"`` and a dynamic batch size: a ``serving_default``
  signature ``inputs`` uint8 [B, H, W, 3] -> boxes, classes, scores, 28 x 28 masks per box
  (Model Garden does not paste masks into the image; SOLO returns full-size masks);
* ``serve_flops(image_size)``: FLOPs of the ``DetectionModule`` serving function at batch 1;
* ``make_train_step(batch_size, image_size)``: ``MaskRCNNTask.train_step`` (forward, losses,
  gradients, SGD momentum update) on synthetic examples parsed by Model Garden's own
  ``maskrcnn_input.Parser``, so the labels (anchors, RPN targets, cropped masks) have the
  structure and cost of real ones.

Model Garden pads its input to a multiple of 2^max_level = 64 (800 x 1333 -> 832 x 1344);
SOLO pads to a multiple of 32 (800 x 1344).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from official.core import exp_factory
from official.vision import registry_imports  # noqa: F401  (registers the experiments)
from official.vision.dataloaders import maskrcnn_input
from official.vision.serving import detection, export_saved_model_lib
from official.vision.tasks import maskrcnn as maskrcnn_task

from benchmarks import flops

EXPERIMENT = "maskrcnn_resnetfpn_coco"
NUM_INSTANCES = 8  # synthetic training instances per image, as in benchmarks.train_step


def experiment_config(image_size: tuple[int, int], batch_size: int = 2):
    """The Model Garden experiment for inputs of ``image_size`` (H, W), random init, fp32."""
    params = exp_factory.get_exp_config(EXPERIMENT)
    height, width = image_size
    params.override(
        {
            "runtime": {"mixed_precision_dtype": "float32", "enable_xla": False},
            "task": {
                "init_checkpoint": "",
                "model": {"input_size": [height, width, 3]},
                "train_data": {"global_batch_size": batch_size},
            },
        },
        is_strict=True,
    )
    params.validate()
    return params


def padded_size(image_size: tuple[int, int]) -> tuple[int, int]:
    """The size Model Garden pads an ``image_size`` input to (a multiple of 2^max_level)."""
    stride = 2 ** experiment_config(image_size).task.model.max_level
    return tuple(-(-s // stride) * stride for s in image_size)


def export_peer(export_dir: str, image_size: tuple[int, int], version: str = "1") -> str:
    """Writes the peer's SavedModel (random weights) into ``export_dir/version``; returns that.

    ``export_dir`` also gets Model Garden's ``params.yaml``; ``version`` gives the SavedModel
    the TF Serving layout our exports have.
    """
    tf.keras.utils.set_random_seed(0)
    params = experiment_config(image_size)
    export_saved_model_lib.export_inference_graph(
        input_type="image_tensor",
        batch_size=None,
        input_image_size=list(image_size),
        params=params,
        checkpoint_path=None,
        export_dir=export_dir,
        export_saved_model_subdir=version,
    )
    return os.path.join(export_dir, version)


def serve_flops(image_size: tuple[int, int]) -> tuple[int, dict[str, int]]:
    """(total, per op type) FLOPs of one batch-1 call of the ``DetectionModule`` serving
    function."""
    module = detection.DetectionModule(
        params=experiment_config(image_size),
        batch_size=1,
        input_image_size=list(image_size),
        input_type="image_tensor",
    )
    spec = tf.TensorSpec([1, *image_size, 3], tf.uint8)
    concrete = module.inference_from_image_tensors.get_concrete_function(spec)
    return flops.concrete_flops_by_type(concrete)


def synthetic_example(image_size: tuple[int, int], seed: int = 0) -> dict:
    """A decoded example in ``TfExampleDecoder``'s layout: random image, 8 box-shaped masks."""
    rng = np.random.default_rng(seed)
    height, width = image_size
    masks = np.zeros((NUM_INSTANCES, height, width), np.float32)
    boxes = np.zeros((NUM_INSTANCES, 4), np.float32)
    for n in range(NUM_INSTANCES):
        h, w = int(rng.integers(32, height // 3)), int(rng.integers(32, width // 3))
        y, x = int(rng.integers(0, height - h)), int(rng.integers(0, width - w))
        masks[n, y : y + h, x : x + w] = 1
        boxes[n] = (y / height, x / width, (y + h) / height, (x + w) / width)
    return {
        "image": tf.constant(rng.integers(0, 256, (height, width, 3)), tf.uint8),
        "height": tf.constant(height),
        "width": tf.constant(width),
        "groundtruth_classes": tf.constant(rng.integers(1, 91, NUM_INSTANCES), tf.int64),
        "groundtruth_is_crowd": tf.zeros([NUM_INSTANCES], tf.bool),
        "groundtruth_area": tf.constant(masks.sum((1, 2))),
        "groundtruth_boxes": tf.constant(boxes),
        "groundtruth_instance_masks": tf.constant(masks),
        "source_id": tf.constant("0"),
    }


def _parser(params) -> maskrcnn_input.Parser:
    """The training parser, configured the way ``MaskRCNNTask.build_inputs`` configures it."""
    model, parser = params.task.model, params.task.train_data.parser
    return maskrcnn_input.Parser(
        output_size=model.input_size[:2],
        min_level=model.min_level,
        max_level=model.max_level,
        num_scales=model.anchor.num_scales,
        aspect_ratios=model.anchor.aspect_ratios,
        anchor_size=model.anchor.anchor_size,
        rpn_match_threshold=parser.rpn_match_threshold,
        rpn_unmatched_threshold=parser.rpn_unmatched_threshold,
        rpn_batch_size_per_im=parser.rpn_batch_size_per_im,
        rpn_fg_fraction=parser.rpn_fg_fraction,
        aug_rand_hflip=parser.aug_rand_hflip,
        aug_scale_min=parser.aug_scale_min,
        aug_scale_max=parser.aug_scale_max,
        skip_crowd_during_training=parser.skip_crowd_during_training,
        max_num_instances=parser.max_num_instances,
        include_mask=model.include_mask,
        mask_crop_size=parser.mask_crop_size,
        dtype=params.task.train_data.dtype,
    )


def synthetic_batch(params, batch_size: int):
    """(images, labels) of ``batch_size`` synthetic examples through the training parser."""
    parse = _parser(params).parse_fn(is_training=True)
    size = tuple(params.task.model.input_size[:2])
    examples = [parse(synthetic_example(size, seed)) for seed in range(batch_size)]
    return tf.nest.map_structure(lambda *xs: tf.stack(xs), *examples)


def make_train_step(batch_size: int, image_size: tuple[int, int]):
    """``(step() -> total loss, model)``: one ``MaskRCNNTask.train_step`` on a fixed batch."""
    tf.keras.utils.set_random_seed(0)
    params = experiment_config(image_size, batch_size)
    task = maskrcnn_task.MaskRCNNTask(params.task)
    model = task.build_model()
    optimizer = task.create_optimizer(params.trainer.optimizer_config, params.runtime)
    inputs = synthetic_batch(params, batch_size)

    @tf.function
    def step(inputs):
        logs = task.train_step(inputs, model, optimizer)
        return logs[task.loss]

    return (lambda: step(inputs)), model
