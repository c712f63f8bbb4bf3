"""The one training pipeline (``solo_tf.data.inputs``) over every source: shuffle buffer,
resume, and a corrupt TFRecord under both bad-sample policies."""

from __future__ import annotations

import dataclasses
import logging
import os
import struct

import numpy as np
import pytest
import tensorflow as tf

from solo_tf import config as cfg
from solo_tf.data import inputs
from solo_tf.data.tfrecord import convert_coco_to_tfrecords
from tests.data import fixtures
from tests.data.test_pipeline import DATA, FIXTURE, TARGETS, as_dataset, take

# Level sizes of the tiny COCO (images up to 60 px) kept small: the pipeline only.
TINY_DATA = dataclasses.replace(DATA, skip_empty=False, flip_probability=0.0)


@pytest.fixture
def tiny(tmp_path):
    return fixtures.write_tiny_coco(str(tmp_path / "coco"))


def image_ids(dataset, count) -> list[int]:
    return [int(i) for b in take(dataset, count) for i in b["image_id"]]


def test_shuffle_buffer_changes_the_training_order_of_in_memory_examples():
    def order(buffer):
        data = dataclasses.replace(TINY_DATA, shuffle_buffer=buffer)
        source = inputs.from_examples(as_dataset(FIXTURE))
        return image_ids(inputs.train_dataset(source, data, TARGETS, 1), 5)

    assert order(1) == [1, 2, 3, 4, 5]  # a buffer of one keeps the dataset order
    assert sorted(order(5)) == [1, 2, 3, 4, 5] and order(5) != [1, 2, 3, 4, 5]
    assert order(5) == order(5)  # seeded (deterministic mode)


def test_shuffle_buffer_changes_the_training_order_of_a_coco_json(tiny):
    def order(buffer, seed=0):
        data = dataclasses.replace(
            TINY_DATA,
            train_annotations=tiny.annotation_file,
            train_images=tiny.image_dir,
            shuffle_buffer=buffer,
            seed=seed,
        )
        source = inputs.open_source(data, "train")
        return image_ids(inputs.train_dataset(source, data, TARGETS, 1), 4)

    in_file_order = order(1)
    assert in_file_order == list(tiny.expected)  # a buffer of one keeps the file's order
    assert any(order(4, seed) != in_file_order for seed in range(4))


def test_decoded_cache_gives_the_same_training_batches(tiny):
    # Deterministic mode: the cache changes where examples come from, not what they are; the
    # second epoch comes from memory (the image files are gone by then).
    def batches(cache_mb, remove_after=None):
        data = dataclasses.replace(
            TINY_DATA,
            train_annotations=tiny.annotation_file,
            train_images=tiny.image_dir,
            decoded_cache_mb=cache_mb,
        )
        source = inputs.open_source(data, "train")
        it = iter(inputs.train_dataset(source, data, TARGETS, 1))
        out = [next(it) for _ in range(4)]
        if remove_after:
            remove_after()
        return out + [next(it) for _ in range(4)]

    plain = batches(0)

    def remove_images():
        for name in os.listdir(tiny.image_dir):
            os.remove(os.path.join(tiny.image_dir, name))

    cached = batches(1, remove_images)
    for a, b in zip(plain, cached, strict=True):
        np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
        for key in ("cate_targets", "mask_indices", "instance_masks"):
            np.testing.assert_array_equal(a["targets"][key].numpy(), b["targets"][key].numpy())


def test_resume_skips_the_elements_already_consumed():
    source = inputs.from_examples(as_dataset(FIXTURE))
    whole = image_ids(inputs.train_dataset(source, TINY_DATA, TARGETS, 1, seed=5), 7)
    resumed = image_ids(
        inputs.train_dataset(source, TINY_DATA, TARGETS, 1, seed=5, skip_elements=3), 4
    )
    assert resumed == whole[3:]


def corrupt_record(path: str, index: int) -> None:
    """Flips one byte in the payload of record ``index`` (its CRC no longer matches)."""
    with open(path, "rb") as f:
        data = bytearray(f.read())
    offset = 0
    for _ in range(index):
        (length,) = struct.unpack("<Q", data[offset : offset + 8])
        offset += 8 + 4 + length + 4
    data[offset + 12 + 10] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))


@pytest.fixture
def corrupt_tfrecords(tiny, tmp_path):
    """One shard of the tiny COCO's 4 records whose third record is corrupt."""
    prefix = str(tmp_path / "records" / "train")
    result = convert_coco_to_tfrecords(tiny.annotation_file, tiny.image_dir, prefix, num_shards=1)
    corrupt_record(result["files"][0], 2)
    return prefix, result["files"][0]


def test_a_corrupt_tfrecord_is_refused_naming_the_file_under_error(corrupt_tfrecords):
    prefix, path = corrupt_tfrecords
    data = dataclasses.replace(TINY_DATA, train_tfrecords=prefix + "-*")
    with pytest.raises(ValueError, match=f"{path}: record 3 cannot be read"):
        inputs.open_source(data, "train")


def tiny_ids_in_file_order(path: str):
    """Image ids of the records of a TFRecord file up to its first unreadable record."""
    records = tf.data.TFRecordDataset(path).ignore_errors()
    for serialized in records:
        example = tf.train.Example.FromString(serialized.numpy())
        yield int(example.features.feature["image/source_id"].bytes_list.value[0])


def test_a_corrupt_tfrecord_is_skipped_and_counted_under_skip(corrupt_tfrecords, caplog):
    prefix, path = corrupt_tfrecords
    data = dataclasses.replace(
        TINY_DATA, train_tfrecords=prefix + "-*", bad_sample_policy="skip", shuffle_buffer=1
    )
    with caplog.at_level(logging.WARNING):
        source = inputs.open_source(data, "train")
    assert source.num_images == 2
    assert any(
        path in r.getMessage() and "2 records read" in r.getMessage() for r in caplog.records
    )
    ids = image_ids(inputs.train_dataset(source, data, TARGETS, 1), 6)
    # Only the two records before the corrupt one are read, epoch after epoch.
    assert ids[:2] == list(tiny_ids_in_file_order(path))[:2] and ids[:2] == ids[2:4] == ids[4:6]


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["skip", "error"])
def test_training_on_a_corrupt_tfrecord(corrupt_tfrecords, tmp_path, policy, caplog):
    from solo_tf import train_lib

    prefix, path = corrupt_tfrecords
    config = tiny_train_config(str(tmp_path / "model"), prefix + "-*", policy)
    if policy == "error":
        with pytest.raises(ValueError, match=f"{path}: record 3 cannot be read"):
            train_lib.train(config, progress=False)
        return
    with caplog.at_level(logging.WARNING):
        _, metrics = train_lib.train(config, progress=False)
    assert metrics["step"] == 2 and np.isfinite(metrics["loss"])
    assert any(path in r.getMessage() and "skipped" in r.getMessage() for r in caplog.records)


def tiny_train_config(model_dir: str, pattern: str, policy: str) -> cfg.SOLOConfig:
    grids = (8, 4)
    return cfg.SOLOConfig(
        model=cfg.ModelConfig(
            num_classes=3,
            backbone_depth=18,
            backbone_filters=(16, 16, 16, 16),
            fpn_channels=16,
            head_type="decoupled",
            head_channels=16,
            stacked_convs=1,
            norm_groups=4,
            num_grids=grids,
            strides=(8, 16),
        ),
        targets=cfg.TargetConfig(num_grids=grids, scale_ranges=((1, 48), (24, 2048))),
        data=dataclasses.replace(
            TINY_DATA,
            train_tfrecords=pattern,
            bad_sample_policy=policy,
            short_sides=(64,),
            max_long_side=64,
            output_size=(64, 64),
        ),
        train=cfg.TrainConfig(
            model_dir=model_dir,
            global_batch_size=2,
            total_steps=2,
            steps_per_loop=1,
            warmup_steps=1,
            strategy="one_device",
        ),
    )


def test_early_data_scales_sides_and_canvas_by_hand():
    # The demo's sizes with --early_size=288: factor 288 / 352; short sides 235.6 -> 236,
    # 261.8 -> 262, 288; the canvas 288 x 288.
    data = cfg.DataConfig(
        short_sides=(288, 320, 352),
        max_long_side=352,
        output_size=(352, 352),
        early_steps=1000,
        early_size=288,
        copy_paste=0.5,
    )
    early = inputs.early_data(data)
    assert early.short_sides == (236, 262, 288)
    assert early.max_long_side == 288 and early.output_size == (288, 288)
    assert early.early_steps == 0  # a configuration of one size
    assert early.copy_paste == 0.0  # --early_copy_paste's default
    assert inputs.early_data(dataclasses.replace(data, early_copy_paste=0.25)).copy_paste == 0.25
    assert dataclasses.replace(early, copy_paste=0.5, short_sides=(288, 320, 352)) == (
        dataclasses.replace(
            data, early_steps=0, early_size=0, max_long_side=288, output_size=(288, 288)
        )
    )  # nothing else changes
    # A non-square canvas: factor 480 / 640 = 0.75; 352 * 0.75 = 264 -> up to 288, 640 -> 480.
    wide = cfg.DataConfig(
        short_sides=(320, 352),
        max_long_side=640,
        output_size=(352, 640),
        early_steps=5,
        early_size=480,
    )
    early = inputs.early_data(wide)
    assert early.short_sides == (240, 264) and early.output_size == (288, 480)
    # The step decides: early sizes before early_steps, the configuration itself from then on.
    assert inputs.data_at_step(data, 0) == inputs.early_data(data)
    assert inputs.data_at_step(data, 999) == inputs.early_data(data)
    assert inputs.data_at_step(data, 1000) is data
    plain = cfg.DataConfig()
    assert inputs.data_at_step(plain, 0) is plain


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"early_steps": -1}, "--early_steps=-1"),
        ({"early_steps": 10}, "--early_size"),  # no size
        ({"early_steps": 10, "early_size": 1333}, "--max_long_side=1333"),
        ({"early_copy_paste": 1.5}, "--early_copy_paste=1.5"),
    ],
)
def test_early_resizing_refuses_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        cfg.DataConfig(**fields)


def test_training_stream_has_the_early_canvas_then_the_full_one():
    # The same stream (seed) at two start steps: the early steps' batches are 96 x 96 (factor
    # 96 / 128), the later ones 128 x 128; the images are the stream's next ones either way.
    data = dataclasses.replace(TINY_DATA, early_steps=2, early_size=96)
    config = cfg.SOLOConfig(
        data=data,
        targets=TARGETS,
        model=cfg.ModelConfig(num_grids=TARGETS.num_grids, strides=(8, 16)),
        train=cfg.TrainConfig(global_batch_size=1),
    )
    source = inputs.from_examples(as_dataset(FIXTURE))
    context = tf.distribute.InputContext()

    def batches(start_step, count):
        fn = inputs.train_input_fn(config, source, start_step=start_step, seed=5)
        return take(fn(context), count)

    early, late = batches(0, 4), batches(2, 2)
    assert [tuple(b["image"].shape[1:3]) for b in early] == [(96, 96)] * 4
    assert [tuple(b["image"].shape[1:3]) for b in late] == [(128, 128)] * 2
    ids = [int(b["image_id"][0]) for b in early]
    assert [int(b["image_id"][0]) for b in late] == ids[2:]
    # Instance masks follow the canvas (stride 4).
    assert early[0]["targets"]["instance_masks"].shape[-2:] == (24, 24)
    assert late[0]["targets"]["instance_masks"].shape[-2:] == (32, 32)
