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
from solo_tf.data import coco, copy_paste, geometry, pipeline, tfrecord
from solo_tf.data.label_map import LabelMap


@dataclasses.dataclass
class Source:
    """One split of a dataset: its label map, its size and where its examples come from.

    Exactly one of ``reader`` (COCO JSON + image folder: images are decoded after the
    shuffle, by index), ``tfrecord_pattern`` (Model Garden TFRecords) and ``examples`` (a
    dataset of decoded examples, e.g. in memory) is set.
    """

    label_map: LabelMap
    num_images: int
    reader: coco.CocoReader | None = None
    tfrecord_pattern: str = ""
    annotation_file: str = ""  # ground truth for COCO evaluation, when known
    examples: tf.data.Dataset | None = None
    bad_sample_policy: str = "error"
    cut_shards: dict = dataclasses.field(default_factory=dict)  # {file: records read}: tail lost

    def _decoded(self, parallel_calls, deterministic) -> tf.data.Dataset:
        if self.examples is not None:
            return self.examples
        return tfrecord.read_tfrecords(
            self.tfrecord_pattern,
            self.label_map,
            parallel_calls=parallel_calls,
            deterministic=deterministic,
            skip_corrupt_records=self.bad_sample_policy == "skip",
        )

    def positioned_examples(
        self, seed, shuffle_buffer: int, parallel_calls, deterministic, shuffle=True, repeat=True
    ) -> tf.data.Dataset:
        """``(position, element)`` stream: reshuffled each epoch with ``seed`` in a buffer of
        ``shuffle_buffer``, repeated. For JSON sources the element is an image index (decoded
        by ``decode`` after sharding and skipping, which is why both cost nothing there);
        otherwise it is the decoded example. ``position`` counts elements of the stream."""
        if self.reader is not None:
            stream = tf.data.Dataset.range(self.num_images)
            buffer = min(shuffle_buffer, self.num_images)
        else:
            stream = self._decoded(parallel_calls, deterministic)
            buffer = shuffle_buffer
        if shuffle:
            stream = stream.shuffle(max(buffer, 1), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            stream = stream.repeat()
        return stream.enumerate()

    def decode(self, stream: tf.data.Dataset, parallel_calls, deterministic):
        """Decodes a ``(position, index)`` stream of ``positioned_examples`` (JSON sources)."""
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
        return self._decoded(parallel_calls, True)


def _is_valid(position, example, valid):
    return valid


def _drop_valid(position, example, valid):
    return position, example


def from_examples(examples: tf.data.Dataset, label_map: LabelMap | None = None, **kwargs):
    """A ``Source`` of a dataset of decoded examples (tests, in-memory benchmarks)."""
    label_map = label_map or LabelMap(ids=(), names=())
    count = int(examples.cardinality())
    return Source(label_map, max(count, 0), examples=examples, **kwargs)


def open_source(data: cfg.DataConfig, split: str) -> Source:
    """The ``train`` or ``val`` split named by the config (TFRecords win over JSON)."""
    pattern = data.train_tfrecords if split == "train" else data.val_tfrecords
    annotations = data.train_annotations if split == "train" else data.val_annotations
    images = data.train_images if split == "train" else data.val_images
    policy = data.bad_sample_policy
    if pattern:
        files = sorted(tf.io.gfile.glob(pattern))
        if not files:
            raise FileNotFoundError(f"--{split}_tfrecords {pattern!r} matches no file")
        prefix = pattern.split("*")[0].rsplit("-", 1)[0]
        label_map = LabelMap.from_json(tfrecord.label_map_path(_label_prefix(prefix)))
        count, cut_shards = tfrecord.count_shards(files, policy)
        return Source(
            label_map,
            count,
            tfrecord_pattern=pattern,
            annotation_file=annotations,
            bad_sample_policy=policy,
            cut_shards=cut_shards,
        )
    if not annotations:
        raise ValueError(f"no {split} data: set --{split}_annotations or --{split}_tfrecords")
    reader = coco.CocoReader(
        annotations,
        images,
        skip_empty=(split == "train" and data.skip_empty),
        bad_sample_policy=policy,
        max_skip_fraction=data.max_skip_fraction,
        cache_bytes=data.decoded_cache_mb * 2**20 if split == "train" else 0,
    )
    return Source(
        reader.label_map,
        reader.num_images,
        reader=reader,
        annotation_file=annotations,
        bad_sample_policy=policy,
    )


def _label_prefix(prefix: str) -> str:
    for candidate in (prefix, prefix + "-"):
        if tf.io.gfile.exists(tfrecord.label_map_path(candidate)):
            return candidate
    return prefix


def base_seed(data: cfg.DataConfig) -> int:
    """The seed of the shuffle and the augmentation: ``data.seed`` in deterministic mode,
    else drawn once."""
    return data.seed if data.deterministic else random.SystemRandom().randrange(2**31)


def train_dataset(
    source: Source,
    data: cfg.DataConfig,
    targets: cfg.TargetConfig,
    batch_size: int,
    *,
    input_context: tf.distribute.InputContext | None = None,
    skip_elements: int = 0,
    seed: int | None = None,
    shuffle: bool = True,
    repeat: bool = True,
    drop_remainder: bool = True,
    colour=geometry.IMAGENET_MEAN,
) -> tf.data.Dataset:
    """The one training pipeline: batched inputs and targets (``pipeline`` module doc).

    Shuffles (``data.shuffle_buffer``, seeded), repeats, shards by ``input_context``, skips
    ``skip_elements`` of this pipeline's stream (resume), decodes, augments and builds
    (``pipeline.make_train_map_fn``), drops bad samples under
    ``data.bad_sample_policy="skip"`` and images without positives under ``skip_empty``,
    pastes objects between consecutive images under ``data.copy_paste`` (``copy_paste``),
    then batches and builds targets (``pipeline.batch_for_training``; padding: ``colour``,
    ``geometry.pad_colour`` of the model). ``seed``: the shuffle and augmentation seed
    (default ``base_seed(data)``).
    """
    seed = base_seed(data) if seed is None else seed
    parallel = tf.data.AUTOTUNE if data.parallel_calls < 0 else data.parallel_calls
    deterministic = True if data.deterministic else None
    stream = source.positioned_examples(
        seed, data.shuffle_buffer, parallel, deterministic, shuffle=shuffle, repeat=repeat
    )
    if input_context is not None and input_context.num_input_pipelines > 1:
        stream = stream.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    # Copy-paste makes one training image of two decoded ones, so a resumed run skips twice
    # as many elements of the stream.
    stream = stream.skip(skip_elements * (2 if data.copy_paste > 0 else 1))
    decoded = source.decode(stream, parallel, deterministic)
    map_fn = pipeline.make_train_map_fn(data, targets, seed)
    dataset = decoded.map(map_fn, num_parallel_calls=parallel, deterministic=deterministic)
    if data.bad_sample_policy == "skip" and source.reader is None:
        # JSON sources report bad images as ``valid`` = False and stop past
        # max_skip_fraction through a graph assertion, which ignore_errors would swallow
        # (every image missing then spins forever).
        dataset = dataset.ignore_errors(log_warning=True)
    if data.skip_empty:
        dataset = dataset.filter(lambda element: pipeline.has_positives(element, targets))
    if data.copy_paste > 0:
        dataset = copy_paste.paired(
            dataset, data.copy_paste, targets.max_instances, seed, parallel, deterministic
        )
    dataset = pipeline.batch_for_training(
        dataset, data, targets, batch_size, colour, drop_remainder=drop_remainder
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def early_data(data: cfg.DataConfig) -> cfg.DataConfig:
    """The input configuration of progressive resizing's early steps: the long-side cap
    ``early_size``, the short sides scaled by ``early_size / max_long_side`` (rounded to whole
    pixels) and the canvas by the same factor, rounded up to multiples of 32 (so that the
    scaled images still fit it), and copy-paste at ``early_copy_paste``."""
    factor = data.early_size / data.max_long_side
    return dataclasses.replace(
        data,
        short_sides=tuple(max(1, round(side * factor)) for side in data.short_sides),
        max_long_side=data.early_size,
        output_size=tuple(-(-round(side * factor) // 32) * 32 for side in data.output_size),
        copy_paste=data.early_copy_paste,
        early_steps=0,
        early_size=0,
        early_copy_paste=0.0,
    )


def data_at_step(data: cfg.DataConfig, step: int) -> cfg.DataConfig:
    """The input configuration training uses from ``step`` on: ``early_data(data)`` before
    ``data.early_steps``, ``data`` itself after (``--early_steps``, progressive resizing)."""
    return early_data(data) if step < data.early_steps else data


def train_input_fn(
    config: cfg.SOLOConfig, source: Source, start_step: int = 0, seed: int | None = None
):
    """``fn(input_context) -> dataset`` for ``distribute_datasets_from_function``: the
    ``train_dataset`` of each input pipeline, resumed at ``start_step``, with the image sizes
    of ``start_step`` (``data_at_step``: the stream changes sizes only by a new call). ``seed``:
    the shuffle and augmentation seed (default ``base_seed``); a run that continues its stream
    at new sizes passes the seed it drew."""
    global_batch = config.train.global_batch_size
    seed = base_seed(config.data) if seed is None else seed
    data = data_at_step(config.data, start_step)

    def input_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        per_pipeline = global_batch // ctx.num_input_pipelines
        return train_dataset(
            source,
            data,
            config.targets,
            ctx.get_per_replica_batch_size(global_batch),
            input_context=ctx,
            skip_elements=start_step * per_pipeline,
            seed=seed,
            colour=geometry.pad_colour(config.model.input_normalization),
        )

    return input_fn


def eval_dataset(
    config: cfg.SOLOConfig, source: Source, batch_size: int, max_images: int = 0
) -> tf.data.Dataset:
    """The first ``max_images`` validation images (0: all), resized for evaluation, padded
    with the model's mean colour and batched (``pipeline.build_eval_dataset``)."""
    data = config.data
    parallel = tf.data.AUTOTUNE if data.parallel_calls < 0 else data.parallel_calls
    if source.reader is not None:
        # JSON: bad images come back invalid, bounded by max_skip_fraction through a graph
        # assertion that the skip policy's ignore_errors would swallow.
        data = dataclasses.replace(data, bad_sample_policy="error")
    return pipeline.build_eval_dataset(
        source.eval_examples(parallel),
        data,
        batch_size,
        colour=geometry.pad_colour(config.model.input_normalization),
        max_images=max_images,
    )
