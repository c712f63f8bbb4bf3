"""The per-element transforms of the input pipelines: decoded examples -> model inputs and
training targets. The training pipeline itself (shuffle, shard, resume, decode, this map,
batch) is ``solo_tf.data.inputs.train_dataset``; evaluation's is ``build_eval_dataset``.

Shape letters: B batch, H W ``DataConfig.output_size``, G total grid cells, N_max
``TargetConfig.max_instances``, m ``TargetConfig.mask_stride``.

Training elements::

    {"image": float32 [B, H, W, 3], "image_info": float32 [B, 4, 2], "image_id": int64 [B],
     "targets": {"cate_targets": int32 [B, G], "mask_indices": int32 [B, G],
                 "instance_masks": uint8 [B, N_max, H/m, W/m], "num_instances": int32 [B]}}

Evaluation elements hold the first three keys only.

Determinism: with ``DataConfig.deterministic`` the shuffle is seeded with ``DataConfig.seed``,
the parallel map keeps its order, and each element's augmentation seed is
``(seed, position in the repeated stream)``; two runs give identical batches whatever
``parallel_calls`` is. Otherwise the shuffle is unseeded, the map may reorder, and the
augmentation seed is drawn once per call.
"""

from __future__ import annotations

import tensorflow as tf

from solo_tf.config import DataConfig, TargetConfig
from solo_tf.data.augment import augment_for_training, preprocess_for_eval
from solo_tf.targets import build_targets


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
    """The per-element training transform ``(position, decoded example) -> element``.

    The augmentation seed is ``(base_seed, position)``, the element's position in the
    shuffled stream before sharding, so the input pipelines of a multi-worker run never share
    seeds and a resumed run re-draws the augmentation of an uninterrupted one.
    """
    output_size = tuple(data_config.output_size)

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
            targets = build_targets(
                augmented["masks"],
                augmented["classes"],
                augmented["is_crowd"],
                target_config,
                output_size,
            )
        return {
            "image": augmented["image"],
            "image_info": augmented["image_info"],
            "image_id": augmented["image_id"],
            "targets": targets,
        }

    return map_fn


def has_positives(element: dict) -> tf.Tensor:
    """bool []: at least one positive grid cell (used to skip empty training images)."""
    return tf.reduce_any(element["targets"]["cate_targets"] >= 0)


def build_eval_dataset(
    decoded_ds: tf.data.Dataset,
    data_config: DataConfig,
    batch_size: int,
    *,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Batched evaluation inputs in dataset order; the last batch may be smaller."""
    dataset = _shard(decoded_ds, input_context)
    dataset = dataset.map(
        lambda example: preprocess_for_eval(example, data_config),
        num_parallel_calls=_parallel_calls(data_config),
        deterministic=True,
    )
    if data_config.bad_sample_policy == "skip":
        dataset = dataset.ignore_errors(log_warning=True)
    return dataset.batch(batch_size, drop_remainder=False).prefetch(tf.data.AUTOTUNE)
