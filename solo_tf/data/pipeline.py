"""The per-element transforms of the input pipelines: decoded examples -> model inputs and
training targets. The training pipeline itself (shuffle, shard, resume, decode, this map,
batch) is ``solo_tf.data.inputs.train_dataset``; evaluation's is ``build_eval_dataset``.

Shape letters: B batch, H W the padded size of a batch (``solo_tf.data.geometry``: the fixed
``DataConfig.output_size``, or the batch's largest image rounded up to 32), G total grid
cells, N_max ``TargetConfig.max_instances``, m ``TargetConfig.mask_stride``.

Training runs in two steps: ``make_train_map_fn`` augments each element (resized, padded to
its own padded size, instance masks at full resolution), ``batch_for_training`` pads a batch
to its largest element, fills the padding with the mean colour and builds the targets on
the batch's padded size, since the grid spans it. Training batches::

    {"image": float32 [B, H, W, 3], "image_info": float32 [B, 4, 2], "image_id": int64 [B],
     "targets": {"cate_targets": int32 [B, G], "mask_indices": int32 [B, G],
                 "instance_masks": uint8 [B, N_max, H/m, W/m], "num_instances": int32 [B]}}

Evaluation batches hold the first three keys only; with ``pad_mode="multiple"`` a batch
holds images of one padded size (``geometry.group_by_padded_size``), so that each image is
padded exactly as when it is alone.

Determinism: with ``DataConfig.deterministic`` the shuffle is seeded with ``DataConfig.seed``,
the parallel map keeps its order, and each element's augmentation seed is
``(seed, position in the repeated stream)``; two runs give identical batches whatever
``parallel_calls`` is. Otherwise the shuffle is unseeded, the map may reorder, and the
augmentation seed is drawn once per call.
"""

from __future__ import annotations

import tensorflow as tf

from solo_tf.config import DataConfig, TargetConfig
from solo_tf.data import geometry
from solo_tf.data.augment import augment_for_training, preprocess_for_eval
from solo_tf.targets import build_targets, has_positive_cells


def _parallel_calls(config: DataConfig) -> int:
    return tf.data.AUTOTUNE if config.parallel_calls < 0 else config.parallel_calls


def _shard(dataset: tf.data.Dataset, input_context) -> tf.data.Dataset:
    if input_context is None or input_context.num_input_pipelines == 1:
        return dataset
    return dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)


def _warn_if_truncated(num: tf.Tensor, image_id: tf.Tensor, max_instances: int) -> tf.Tensor:
    """Prints a warning when an image has more than ``max_instances``; returns the test."""
    truncated = num > max_instances

    def warn():
        tf.print(
            "WARNING solo_tf.data: image",
            image_id,
            "has",
            num,
            "instances; keeping the first",
            max_instances,
            "(raise targets.max_instances to keep all)",
        )
        return truncated

    return tf.cond(truncated, warn, lambda: truncated)


def make_train_map_fn(data_config: DataConfig, target_config: TargetConfig, base_seed: int):
    """The per-element training transform ``(position, decoded example) -> element``:
    ``augment_for_training``'s dict plus ``num_instances`` int32 [] (``batch_for_training``
    takes it from there). H, W are static with ``pad_mode="canvas"``.

    The augmentation seed is ``(base_seed, position)``, the element's position in the
    shuffled stream before sharding, so the input pipelines of a multi-worker run never share
    seeds and a resumed run re-draws the augmentation of an uninterrupted one.
    """
    height, width = geometry.static_size(data_config)

    def map_fn(position: tf.Tensor, example: dict[str, tf.Tensor]) -> dict:
        image = example["image"]
        tf.debugging.assert_equal(
            tf.shape(example["masks"])[1:], tf.shape(image)[:2], "masks and image differ"
        )
        seed = tf.stack([tf.constant(base_seed, tf.int64), position])
        augmented = augment_for_training(example, data_config, seed)
        num = tf.shape(augmented["classes"])[0]
        warned = _warn_if_truncated(num, augmented["image_id"], target_config.max_instances)
        with tf.control_dependencies([warned]):
            num = tf.identity(num)
        return {
            **augmented,
            "image": tf.ensure_shape(augmented["image"], [height, width, 3]),
            "masks": tf.ensure_shape(augmented["masks"], [None, height, width]),
            "num_instances": num,
        }

    return map_fn


def has_positives(element: dict, target_config: TargetConfig) -> tf.Tensor:
    """bool []: the element of ``make_train_map_fn`` will have a positive grid cell whatever
    its batch (``targets.has_positive_cells``; used to skip empty training images)."""
    return has_positive_cells(element["masks"], element["is_crowd"], target_config)


def batch_for_training(
    dataset: tf.data.Dataset,
    data_config: DataConfig,
    target_config: TargetConfig,
    batch_size: int,
    colour=geometry.IMAGENET_MEAN,
    drop_remainder: bool = True,
) -> tf.data.Dataset:
    """Training batches of ``make_train_map_fn`` elements: padded to the largest element
    (``padded_batch``), the padding set to ``colour`` (``geometry.pad_colour`` of the model),
    the targets built on the batch's padded size (the module doc's training batches)."""
    batches = dataset.padded_batch(batch_size, drop_remainder=drop_remainder)
    return batches.map(
        lambda batch: _with_targets(batch, target_config, colour),
        num_parallel_calls=_parallel_calls(data_config),
        deterministic=True if data_config.deterministic else None,
    )


def _with_targets(batch: dict, target_config: TargetConfig, colour) -> dict:
    """A padded batch -> model inputs and the targets of each image on the batch's size."""
    images = geometry.fill_padding(batch["image"], batch["image_info"], colour)
    size = [images.shape[k] if images.shape[k] is not None else tf.shape(images)[k] for k in (1, 2)]

    def one_image(args):
        masks, classes, is_crowd, num = args
        return build_targets(masks[:num], classes[:num], is_crowd[:num], target_config, size)

    stride, cells = target_config.mask_stride, sum(s * s for s in target_config.num_grids)
    mask_size = [v // stride if isinstance(v, int) else None for v in size]
    targets = tf.map_fn(
        one_image,
        (batch["masks"], batch["classes"], batch["is_crowd"], batch["num_instances"]),
        fn_output_signature={
            "cate_targets": tf.TensorSpec([cells], tf.int32),
            "mask_indices": tf.TensorSpec([cells], tf.int32),
            "instance_masks": tf.TensorSpec([target_config.max_instances, *mask_size], tf.uint8),
            "num_instances": tf.TensorSpec([], tf.int32),
        },
    )
    return {
        "image": images,
        "image_info": batch["image_info"],
        "image_id": batch["image_id"],
        "targets": targets,
    }


def build_eval_dataset(
    decoded_ds: tf.data.Dataset,
    data_config: DataConfig,
    batch_size: int,
    *,
    input_context: tf.distribute.InputContext | None = None,
    colour=geometry.IMAGENET_MEAN,
    max_images: int = 0,
) -> tf.data.Dataset:
    """Batched evaluation inputs of the first ``max_images`` images (0: all), padded with
    ``colour``. ``pad_mode="canvas"``: in dataset order, the last batch may be smaller;
    ``"multiple"``: batches of one padded size each (``geometry.group_by_padded_size``)."""
    dataset = _shard(decoded_ds, input_context)
    dataset = dataset.map(
        lambda example: preprocess_for_eval(example, data_config, colour),
        num_parallel_calls=_parallel_calls(data_config),
        deterministic=True,
    )
    if data_config.bad_sample_policy == "skip":
        dataset = dataset.ignore_errors(log_warning=True)
    if max_images:
        dataset = dataset.take(max_images)
    if data_config.pad_mode == "multiple":
        dataset = geometry.group_by_padded_size(dataset, batch_size)
    else:
        dataset = dataset.batch(batch_size, drop_remainder=False)
    return dataset.prefetch(tf.data.AUTOTUNE)
