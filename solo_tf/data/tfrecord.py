"""COCO -> TFRecords in TF Model Garden's format, and the reader that reads them back.

Convert (writes ``PREFIX-00000-of-0000K.tfrecord`` ... and ``PREFIX`` + ``label_map.json``)::

    python -m solo_tf.data.tfrecord --annotations instances_train2017.json \\
        --images train2017 --output /data/coco/train --num_shards 256

Each ``tf.train.Example`` carries the keys of Model Garden's ``create_coco_tf_record.py``
(``image/encoded``, ``image/source_id``, ``image/height``, ``image/width``, ``image/format``,
``image/object/class/label`` (dataset category id), ``image/object/class/text``,
``image/object/is_crowd``, ``image/object/area``, ``image/object/bbox/{x,y}{min,max}``
normalised, ``image/object/mask`` (one 0/1 PNG per instance)). The examples come from
``CocoReader``, so they hold exactly what the JSON reader yields: the same validation and
``bad_sample_policy``, every image (empty ones too), every mask decoded by pycocotools.
Differences from Model Garden's script, on purpose: RLE masks of non-crowd objects work,
annotations are never dropped for a box outside the image, boxes come from the masks (tight
pixel boxes) and ``image/format`` tells the truth. JPEG and PNG files are stored as they are;
other formats (BMP, TIFF...) as a lossless PNG of the decoded RGB image.

``read_tfrecords`` decodes with Model Garden's ``TfExampleDecoder(include_mask=True)`` and
yields the dict of ``docs/architecture.md`` section 1, identical to ``CocoReader.dataset()``.
"""

from __future__ import annotations

import functools
import os
import re

import numpy as np
import tensorflow as tf
from absl import flags, logging
from official.vision.data import tfrecord_lib
from official.vision.dataloaders import tf_example_decoder

from solo_tf import entry_point
from solo_tf.data import errors
from solo_tf.data.coco import CocoReader
from solo_tf.data.label_map import LabelMap
from solo_tf.images import IMAGE_MAGIC, boxes_from_masks, is_tf_decodable


def label_map_path(output_prefix: str) -> str:
    """Where the converter writes the label map: ``PREFIX`` + ``label_map.json``."""
    return output_prefix + "label_map.json"


def shard_paths(output_prefix: str, num_shards: int) -> list[str]:
    """The shard files ``tfrecord_lib.write_tf_record_dataset`` writes for a prefix."""
    return [f"{output_prefix}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)]


def example_to_tf_example(example: dict, label_map: LabelMap) -> tf.train.Example:
    """A ``CocoReader.load(..., with_source=True)`` dict as a Model Garden tf.train.Example."""
    encoded = example["encoded"]
    if not is_tf_decodable(encoded):  # keep what TfExampleDecoder reads: JPEG or PNG
        encoded = tfrecord_lib.encode_mask_as_png(example["image"])
    image_format = "jpeg" if encoded.startswith(IMAGE_MAGIC["JPEG"]) else "png"
    height, width = (int(v) for v in example["original_size"])
    feature = tfrecord_lib.image_info_to_feature_dict(
        height, width, example["file_name"], int(example["image_id"]), encoded, image_format
    )
    masks = example["masks"]  # [N, H0, W0]
    boxes = boxes_from_masks(masks) / np.array([height, width, height, width], np.float32)
    category_ids = label_map.class_ids[example["classes"]]
    names = [label_map.names[k].encode("utf8") for k in example["classes"]]
    to_feature = tfrecord_lib.convert_to_feature
    feature.update(
        {
            "image/object/bbox/ymin": to_feature(boxes[:, 0].tolist(), "float_list"),
            "image/object/bbox/xmin": to_feature(boxes[:, 1].tolist(), "float_list"),
            "image/object/bbox/ymax": to_feature(boxes[:, 2].tolist(), "float_list"),
            "image/object/bbox/xmax": to_feature(boxes[:, 3].tolist(), "float_list"),
            "image/object/class/label": to_feature(category_ids.tolist(), "int64_list"),
            "image/object/class/text": to_feature(names, "bytes_list"),
            "image/object/is_crowd": to_feature(example["is_crowd"].tolist(), "int64_list"),
            "image/object/area": to_feature(example["areas"].tolist(), "float_list"),
            "image/object/mask": to_feature(
                [tfrecord_lib.encode_mask_as_png(m) for m in masks], "bytes_list"
            ),
        }
    )
    return tf.train.Example(features=tf.train.Features(feature=feature))


def convert_coco_to_tfrecords(
    annotation_file: str,
    image_dir: str,
    output_prefix: str,
    num_shards: int = 1,
    bad_sample_policy: str = "error",
) -> dict:
    """Writes every (valid) image of a COCO dataset to ``num_shards`` TFRecord files.

    Example ``i`` goes to shard ``i % num_shards``. Returns ``{"files", "label_map",
    "num_examples", "skipped"}`` (``skipped``: Counter of bad samples by reason).
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    reader = CocoReader(
        annotation_file, image_dir, skip_empty=False, bad_sample_policy=bad_sample_policy
    )
    directory = os.path.dirname(output_prefix)
    if directory:
        tf.io.gfile.makedirs(directory)
    reader.label_map.to_json(label_map_path(output_prefix))
    written = [0]

    def tasks():
        for index in range(reader.num_images):
            example = reader.load(index, with_source=True)
            if example is not None:
                written[0] += 1
                yield example, reader.label_map

    def to_record(example, label_map):
        return example_to_tf_example(example, label_map), 0

    tfrecord_lib.write_tf_record_dataset(
        output_prefix, tasks(), to_record, num_shards, multiple_processes=0
    )
    logging.info(
        "wrote %d examples to %d shards at %s, skipped %s",
        written[0],
        num_shards,
        output_prefix,
        dict(reader.skipped),
    )
    return {
        "files": shard_paths(output_prefix, num_shards),
        "label_map": label_map_path(output_prefix),
        "num_examples": written[0],
        "skipped": reader.skipped,
    }


def read_tfrecords(
    file_pattern: str,
    label_map: LabelMap,
    skip_empty: bool = False,
    shuffle: bool = False,
    seed: int | None = None,
    parallel_calls: int = tf.data.AUTOTUNE,
    deterministic: bool | None = None,
    skip_corrupt_records: bool = False,
) -> tf.data.Dataset:
    """Decoded examples (architecture section 1) from Model Garden TFRecords.

    ``skip_corrupt_records`` (the ``skip`` policy): a record that cannot be read (corrupt,
    truncated) ends its shard's reading with a warning instead of failing, as do examples
    that fail to decode. Otherwise such a record fails naming its shard.

    Shards are read in name order, interleaved one record at a time, which gives back the
    converter's image order. ``shuffle`` shuffles the shard order only; shuffle examples
    downstream with a buffer. ``skip_empty`` drops images without a non-crowd instance. A
    category id missing from ``label_map`` fails with an error naming the source id.
    """
    files = sorted(tf.io.gfile.glob(file_pattern))
    if not files:
        raise ValueError(f"no TFRecord file matches {file_pattern!r}")
    filenames = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        filenames = filenames.shuffle(len(files), seed=seed)
    cycle = min(len(files), 64)
    records = filenames.interleave(
        functools.partial(_records, skip_corrupt=skip_corrupt_records),
        cycle_length=cycle,
        block_length=1,
        num_parallel_calls=parallel_calls if parallel_calls < 0 else min(parallel_calls, cycle),
        deterministic=deterministic,
    )
    decoder = tf_example_decoder.TfExampleDecoder(include_mask=True)
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(label_map.ids, tf.int64), tf.range(len(label_map), dtype=tf.int32)
        ),
        default_value=-1,
    )

    def decode(serialized):
        return _to_example(decoder.decode(serialized), table)

    examples = records.map(decode, num_parallel_calls=parallel_calls, deterministic=deterministic)
    if skip_corrupt_records:
        examples = examples.ignore_errors(log_warning=True)
    if skip_empty:
        examples = examples.filter(_has_instances)
    return examples


def _records(filename: tf.Tensor, skip_corrupt: bool) -> tf.data.Dataset:
    records = tf.data.TFRecordDataset(filename)
    return records.ignore_errors(log_warning=True) if skip_corrupt else records


def count_records(path: str, policy: str = "error") -> int:
    """The readable records of one TFRecord file.

    A corrupt or truncated record raises a ``ValueError`` naming the file and the record
    under the ``error`` policy; under ``skip`` the records before it count, and a warning
    names the file and says how many were read.
    """
    return _count(path, policy)[0]


def count_shards(files, policy: str = "error") -> tuple[int, dict[str, int]]:
    """The readable records of ``files`` in all, and ``{file: records read}`` of the files
    whose tail cannot be read (``skip``; under ``error`` such a file raises as in
    ``count_records``)."""
    total, cut = 0, {}
    for path in files:
        count, complete = _count(path, policy)
        total += count
        if not complete:
            cut[path] = count
    return total, cut


def _count(path: str, policy: str) -> tuple[int, bool]:
    """(records read, whether the whole file could be read)."""
    count = 0
    try:
        for _ in tf.data.TFRecordDataset(path):
            count += 1
    except tf.errors.DataLossError as error:
        reason = re.sub(r"\{\{function_node [^}]*\}\}|\[Op:\w+\]|name:", "", error.message)
        where = f"{path}: record {count + 1} cannot be read ({reason.strip()})"
        if policy != "skip":
            raise ValueError(
                f"{where}; fix or drop the file, or use --bad_sample_policy=skip"
            ) from None
        logging.warning("%s: skipped with the rest of the file, %d records read", where, count)
        return count, False
    return count, True


def _to_example(decoded: dict, table: tf.lookup.StaticHashTable) -> dict:
    """Model Garden's decoded tensors -> the contract dict, checking ids and shapes."""
    image = decoded["image"]  # [H0, W0, 3] uint8
    category_ids = decoded["groundtruth_classes"]  # [N] int64
    classes = table.lookup(category_ids)  # [N] int32, -1 when unknown
    masks = decoded["groundtruth_instance_masks"]  # [N', h, w] float32
    source_id = decoded["source_id"]
    size = tf.shape(image)[:2]
    checks = [
        tf.debugging.Assert(
            tf.reduce_all(classes >= 0),
            ["source_id", source_id, "has category ids missing from the label map:", category_ids],
        ),
        tf.debugging.Assert(
            tf.logical_and(
                tf.equal(tf.shape(masks)[0], tf.shape(classes)[0]),
                tf.reduce_all(tf.equal(tf.shape(masks)[1:], size)),
            ),
            [
                "source_id",
                source_id,
                "masks",
                tf.shape(masks),
                "do not match the objects and image",
                tf.shape(classes),
                size,
            ],
        ),
    ]
    with tf.control_dependencies(checks):
        return {
            "image": tf.identity(image),
            "masks": tf.cast(masks > 0, tf.uint8),
            "classes": tf.identity(classes),
            "is_crowd": tf.identity(decoded["groundtruth_is_crowd"]),
            "image_id": tf.strings.to_number(source_id, out_type=tf.int64),
            "original_size": tf.identity(size),
        }


def _has_instances(example: dict):
    return tf.reduce_any(tf.logical_not(example["is_crowd"]))


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The converter's flags (defined only by the entry point, never on import)."""
    flags.DEFINE_string("annotations", None, "COCO instances JSON.", flag_values=flag_values)
    flags.DEFINE_string("images", None, "Folder holding the images.", flag_values=flag_values)
    flags.DEFINE_string(
        "output", None, "Output prefix: PREFIX-00000-of-0000K.tfrecord.", flag_values=flag_values
    )
    flags.DEFINE_integer("num_shards", 1, "Number of TFRecord files.", flag_values=flag_values)
    flags.DEFINE_enum(
        "bad_sample_policy",
        "error",
        list(errors.POLICIES),
        "error: stop at the first bad sample; skip: drop, log and count it.",
        flag_values=flag_values,
    )
    for name in ("annotations", "images", "output"):
        flags.mark_flag_as_required(name, flag_values=flag_values)


def main(argv) -> None:
    del argv
    flag_values = flags.FLAGS
    result = convert_coco_to_tfrecords(
        flag_values.annotations,
        flag_values.images,
        flag_values.output,
        num_shards=flag_values.num_shards,
        bad_sample_policy=flag_values.bad_sample_policy,
    )
    print(
        f"{result['num_examples']} examples -> {len(result['files'])} shards "
        f"({result['files'][0]} ...), label map {result['label_map']}, "
        f"skipped {dict(result['skipped'])}"
    )


if __name__ == "__main__":
    define_flags()
    entry_point.run(main)
