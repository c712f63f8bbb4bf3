"""Training and evaluation inputs from a DataConfig: sources, sharding, resume.

Training shuffles *image indices* each epoch with a fixed seed and decodes after the shuffle,
so the shuffle buffer costs nothing and a resumed run skips the indices it already consumed
without decoding them. Augmentation is keyed by each element's position in that stream
(``pipeline.make_train_map_fn``), so in deterministic mode a resumed run sees the very batches
an uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import random

import tensorflow as tf

from solo_tf import config as cfg
from solo_tf.data import coco, pipeline, tfrecord
from solo_tf.data.label_map import LabelMap


@dataclasses.dataclass
class Source:
    """One split of a dataset: its label map, size and a decoder."""

    label_map: LabelMap
    num_images: int
    reader: coco.CocoReader | None = None  # JSON sources
    tfrecord_pattern: str = ""  # TFRecord sources
    annotation_file: str = ""  # ground truth for COCO evaluation, when known

    def positioned_examples(self, seed: int, parallel_calls, deterministic):
        """Endless ``(position, example)`` stream, reshuffled each epoch with ``seed``.

        ``position`` counts elements of the stream before decoding; sharding and skipping
        act on it before any image is decoded (JSON sources).
        """
        if self.reader is None:
            examples = tfrecord.read_tfrecords(
                self.tfrecord_pattern,
                self.label_map,
                parallel_calls=parallel_calls,
                deterministic=deterministic,
            )
            return examples.shuffle(1000, seed=seed).repeat().enumerate()
        n = self.num_images
        indices = tf.data.Dataset.range(n).shuffle(n, seed=seed, reshuffle_each_iteration=True)
        return indices.repeat().enumerate()

    def decode(self, stream: tf.data.Dataset, parallel_calls, deterministic):
        """Decodes a ``(position, index)`` stream from ``positioned_examples``."""
        if self.reader is None:
            return stream
        reader = self.reader

        def decode_one(position, index):
            example, valid = reader.decode_index(index)
            return position, example, valid

        decoded = stream.map(
            decode_one, num_parallel_calls=parallel_calls, deterministic=deterministic
        )
        return decoded.filter(_is_valid).map(_drop_valid)

    def eval_examples(self, parallel_calls):
        """Every image once, in dataset order."""
        if self.reader is not None:
            return self.reader.dataset(parallel_calls=parallel_calls, deterministic=True)
        return tfrecord.read_tfrecords(
            self.tfrecord_pattern,
            self.label_map,
            parallel_calls=parallel_calls,
            deterministic=True,
        )


def _is_valid(position, example, valid):
    return valid


def _drop_valid(position, example, valid):
    return position, example


def open_source(data: cfg.DataConfig, split: str) -> Source:
    """The ``train`` or ``val`` split named by the config (TFRecords win over JSON)."""
    pattern = data.train_tfrecords if split == "train" else data.val_tfrecords
    annotations = data.train_annotations if split == "train" else data.val_annotations
    images = data.train_images if split == "train" else data.val_images
    if pattern:
        files = tf.io.gfile.glob(pattern)
        if not files:
            raise FileNotFoundError(f"--{split}_tfrecords {pattern!r} matches no file")
        prefix = pattern.split("*")[0].rsplit("-", 1)[0]
        label_map = LabelMap.from_json(tfrecord.label_map_path(_label_prefix(prefix)))
        count = sum(1 for _ in tf.data.TFRecordDataset(files))
        return Source(label_map, count, tfrecord_pattern=pattern, annotation_file=annotations)
    if not annotations:
        raise ValueError(f"no {split} data: set --{split}_annotations or --{split}_tfrecords")
    reader = coco.CocoReader(
        annotations,
        images,
        skip_empty=(split == "train" and data.skip_empty),
        bad_sample_policy=data.bad_sample_policy,
    )
    return Source(reader.label_map, reader.num_images, reader=reader, annotation_file=annotations)


def _label_prefix(prefix: str) -> str:
    for candidate in (prefix, prefix + "-"):
        if tf.io.gfile.exists(tfrecord.label_map_path(candidate)):
            return candidate
    return prefix


def train_input_fn(config: cfg.SOLOConfig, source: Source, start_step: int = 0):
    """``fn(input_context) -> dataset`` for ``distribute_datasets_from_function``."""
    data = config.data
    global_batch = config.train.global_batch_size
    base_seed = data.seed if data.deterministic else random.SystemRandom().randrange(2**31)

    def input_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        batch = ctx.get_per_replica_batch_size(global_batch)
        per_pipeline = global_batch // ctx.num_input_pipelines
        parallel = tf.data.AUTOTUNE if data.parallel_calls < 0 else data.parallel_calls
        deterministic = True if data.deterministic else None
        stream = source.positioned_examples(base_seed, parallel, deterministic)
        stream = stream.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
        stream = stream.skip(start_step * per_pipeline)
        decoded = source.decode(stream, parallel, deterministic)
        map_fn = pipeline.make_train_map_fn(data, config.targets, base_seed)
        dataset = decoded.map(map_fn, num_parallel_calls=parallel, deterministic=deterministic)
        if data.skip_empty:
            dataset = dataset.filter(pipeline.has_positives)
        dataset = dataset.batch(batch, drop_remainder=True)
        return dataset.prefetch(tf.data.AUTOTUNE)

    return input_fn


def eval_dataset(config: cfg.SOLOConfig, source: Source, batch_size: int) -> tf.data.Dataset:
    """Validation images in dataset order, resized for evaluation and batched."""
    parallel = tf.data.AUTOTUNE if config.data.parallel_calls < 0 else config.data.parallel_calls
    return pipeline.build_eval_dataset(source.eval_examples(parallel), config.data, batch_size)
