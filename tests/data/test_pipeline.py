"""Tests for solo_tf.data.pipeline on tiny hand-made decoded examples."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from solo_tf.config import DataConfig, TargetConfig
from solo_tf.data.coco import EXAMPLE_SPEC
from solo_tf.data.inputs import from_examples, train_dataset
from solo_tf.data.pipeline import build_eval_dataset

DATA = DataConfig(
    short_sides=(64, 96),
    max_long_side=128,
    eval_short_side=96,
    output_size=(128, 128),
    shuffle_buffer=4,
    parallel_calls=2,
    deterministic=True,
    seed=3,
)
# Level 0: S=8 (16 px cells), level 1: S=4 (32 px cells); G = 80.
TARGETS = TargetConfig(
    num_grids=(8, 4), scale_ranges=((1, 48), (24, 128)), max_instances=4, mask_stride=4
)


def make_example(image_id, height, width, boxes, crowd=None, mask_size=None):
    """A decoded example with rectangular masks; boxes are (top, bottom, left, right) incl."""
    rng = np.random.default_rng(image_id)
    image = rng.integers(0, 256, [height, width, 3], dtype=np.uint8)
    mask_h, mask_w = mask_size or (height, width)
    masks = np.zeros([len(boxes), mask_h, mask_w], np.uint8)
    for n, (top, bottom, left, right) in enumerate(boxes):
        masks[n, top : bottom + 1, left : right + 1] = 1
    return {
        "image": image,
        "masks": masks,
        "classes": np.arange(len(boxes), dtype=np.int32) % 3,
        "is_crowd": np.zeros(len(boxes), bool) if crowd is None else np.asarray(crowd),
        "image_id": np.int64(image_id),
        "original_size": np.array([height, width], np.int32),
    }


FIXTURE = [
    make_example(1, 32, 48, [(4, 20, 2, 14), (10, 30, 30, 46)]),
    make_example(2, 40, 40, []),  # no instances
    make_example(3, 64, 32, [(0, 63, 0, 31), (10, 20, 5, 9), (40, 50, 20, 30)], [1, 0, 0]),
    make_example(4, 50, 70, [(5, 45, 5, 65)]),
    make_example(5, 30, 30, [(0, 29, 0, 14)]),
]


def as_dataset(examples):
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=EXAMPLE_SPEC)


def from_examples_of(examples):
    """The training pipeline's source for in-memory examples."""
    return from_examples(as_dataset(examples))


def take(dataset, count):
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in dataset.take(count)]


def test_train_batches_have_the_contract_shapes():
    dataset = train_dataset(from_examples_of(FIXTURE), DATA, TARGETS, batch_size=2)
    spec = dataset.element_spec
    assert spec["image"].shape == (2, 128, 128, 3) and spec["image"].dtype == tf.float32
    assert spec["image_info"].shape == (2, 4, 2) and spec["image_id"].dtype == tf.int64
    assert spec["targets"]["cate_targets"].shape == (2, 80)
    assert spec["targets"]["mask_indices"].shape == (2, 80)
    assert spec["targets"]["instance_masks"].shape == (2, 4, 32, 32)
    assert spec["targets"]["instance_masks"].dtype == tf.uint8
    assert spec["targets"]["num_instances"].shape == (2,)
    for batch in take(dataset, 4):
        targets = batch["targets"]
        np.testing.assert_array_equal(targets["cate_targets"] >= 0, targets["mask_indices"] >= 0)
        assert (targets["cate_targets"] >= 0).any(axis=1).all()  # skip_empty
        assert set(np.unique(targets["instance_masks"])) <= {0, 1}
        assert 2 not in batch["image_id"]


def test_deterministic_mode_repeats_exactly_across_runs_and_parallelism():
    def run(parallel_calls):
        config = dataclasses.replace(DATA, parallel_calls=parallel_calls)
        return take(train_dataset(from_examples_of(FIXTURE), config, TARGETS, 2), 6)

    first, second, serial = run(2), run(2), run(1)
    for a, b, c in zip(first, second, serial, strict=True):
        tf.nest.map_structure(np.testing.assert_array_equal, a, b)
        tf.nest.map_structure(np.testing.assert_array_equal, a, c)
    # Later epochs are reshuffled and re-augmented, not copies of the first.
    ids = np.concatenate([b["image_id"] for b in first])
    infos = np.concatenate([b["image_info"][:, 1] for b in first])
    assert len({tuple(i) for i in infos}) > 4 and len(ids) == 12


def test_skip_empty_and_image_info():
    config = dataclasses.replace(DATA, short_sides=(64,), flip_probability=0.0)
    kept = train_dataset(from_examples_of(FIXTURE), config, TARGETS, 1, shuffle=False, repeat=False)
    batches = take(kept, 10)
    assert [int(b["image_id"][0]) for b in batches] == [1, 3, 4, 5]
    # 32 x 48: short 64 -> 64 x 96. 50 x 70: 64 / 50 = 1.28 -> 64 x 89.6 -> 64 x 90.
    np.testing.assert_allclose(batches[0]["image_info"][0], [[32, 48], [64, 96], [2, 2], [0, 0]])
    np.testing.assert_allclose(
        batches[2]["image_info"][0], [[50, 70], [64, 90], [1.28, 90 / 70], [0, 0]], rtol=1e-6
    )
    everything = train_dataset(
        from_examples_of(FIXTURE),
        dataclasses.replace(config, skip_empty=False),
        TARGETS,
        1,
        shuffle=False,
        repeat=False,
    )
    empty = take(everything, 10)[1]
    assert empty["image_id"][0] == 2 and empty["targets"]["num_instances"][0] == 0
    assert (empty["targets"]["cate_targets"] == -1).all()


@pytest.mark.parametrize("probability, columns", [(0.0, {0, 1}), (1.0, {6, 7})])
def test_targets_follow_the_flip(probability, columns):
    # 64 x 64 -> 128 x 128; the object, rows 16..47 and cols 0..15, becomes rows 32..95 and
    # cols 0..31 (h 64, w 32, sqrt 45.3: both levels). Level 0: cy = 63.5, hh = 6.4 -> rows
    # 3..4; cx = 15.5, hw = 3.2 -> cols floor(12.3/16) = 0 .. floor(18.7/16) = 1. Flipped:
    # cols 96..127, cx = 111.5 -> floor(108.3/16) = 6 .. floor(114.7/16) = 7.
    example = make_example(9, 64, 64, [(16, 47, 0, 15)])
    config = dataclasses.replace(DATA, short_sides=(128,), flip_probability=probability)
    dataset = train_dataset(from_examples_of([example]), config, TARGETS, 1, shuffle=False)
    level0 = take(dataset, 1)[0]["targets"]["cate_targets"][0, :64].reshape(8, 8)
    rows, cols = np.nonzero(level0 >= 0)
    assert set(rows) == {3, 4} and set(cols) == columns


def test_too_many_instances_keeps_max_and_warns(capfd):
    boxes = [(k * 10, k * 10 + 5, k * 10, k * 10 + 5) for k in range(6)]
    dataset = train_dataset(
        from_examples_of([make_example(7, 64, 64, boxes)]), DATA, TARGETS, 1, shuffle=False
    )
    assert take(dataset, 1)[0]["targets"]["num_instances"][0] == 4
    assert "has 6 instances; keeping the first 4" in capfd.readouterr().err


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_bad_sample_policy(policy):
    bad = make_example(8, 32, 32, [(0, 5, 0, 5)], mask_size=(16, 16))
    config = dataclasses.replace(DATA, bad_sample_policy=policy)
    examples = [FIXTURE[0], bad, FIXTURE[3]]
    dataset = train_dataset(from_examples_of(examples), config, TARGETS, 1, shuffle=False)
    if policy == "error":
        with pytest.raises(tf.errors.InvalidArgumentError):
            take(dataset, 3)
    else:
        assert [int(b["image_id"][0]) for b in take(dataset, 3)] == [1, 4, 1]


def test_eval_dataset_keeps_order_and_the_last_partial_batch():
    batches = take(build_eval_dataset(as_dataset(FIXTURE), DATA, batch_size=2), 10)
    assert [b["image_id"].tolist() for b in batches] == [[1, 2], [3, 4], [5]]
    assert set(batches[0]) == {"image", "image_info", "image_id"}
    assert batches[2]["image"].shape == (1, 128, 128, 3)
    # 64 x 32: short side 96 -> 192 x 96, long cap 128 / 64 = 2 -> 128 x 64.
    np.testing.assert_allclose(batches[1]["image_info"][0], [[64, 32], [128, 64], [2, 2], [0, 0]])
