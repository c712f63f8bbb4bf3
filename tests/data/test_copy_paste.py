"""Tests for solo_tf.data.copy_paste: a hand-worked paste, the random choice, and the op inside
the training pipeline (``inputs.train_dataset``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from solo_tf.config import DataConfig
from solo_tf.data import copy_paste, inputs
from tests.data.test_inputs import TINY_DATA, image_ids
from tests.data.test_pipeline import FIXTURE, TARGETS, as_dataset


def box(top, left, bottom, right, size=8):
    mask = np.zeros([size, size], np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


def element(fill, masks, classes, crowd=None, valid=(8, 8), image_id=1):
    """A make_train_map_fn element on an 8 x 8 canvas whose image covers ``valid`` pixels."""
    masks = np.array(masks, np.uint8).reshape([-1, 8, 8])
    n = len(classes)
    return {
        "image": tf.fill([8, 8, 3], float(fill)),
        "image_info": tf.constant([[8, 8], valid, [1, 1], [0, 0]], tf.float32),
        "masks": tf.constant(masks),
        "classes": tf.constant(classes, tf.int32),
        "is_crowd": tf.constant(crowd if crowd is not None else [False] * n, tf.bool),
        "image_id": tf.constant(image_id, tf.int64),
        "num_instances": tf.constant(n, tf.int32),
    }


# The target: image 10 whose last column is padding (its image is 8 x 7), instance A (class 1)
# in rows 0-3 / cols 0-3, instance B (class 2) in rows 6-7 / cols 5-6.
TARGET = dict(fill=10, masks=[box(0, 0, 4, 4), box(6, 5, 8, 7)], classes=[1, 2], valid=(8, 7))
# The source: image 200; S1 (class 3) rows 0-1 across the whole width (into the target's
# padding), S2 (class 4) rows 5-7 / cols 4-7 (covers B), S3 (class 3, crowd) rows 3-4 /
# cols 0-3.
SOURCE = dict(
    fill=200,
    masks=[box(0, 0, 2, 8), box(5, 4, 8, 8), box(3, 0, 5, 4)],
    classes=[3, 4, 3],
    crowd=[False, False, True],
    image_id=2,
)


def test_paste_hand_worked():
    out = copy_paste.paste(element(**TARGET), element(**SOURCE), tf.constant([True, True, False]))
    image = out["image"].numpy()[..., 0]
    expected = np.full([8, 8], 10.0)
    expected[0:2, 0:7] = 200  # S1 cut to the target's image: column 7 is padding
    expected[5:8, 4:7] = 200  # S2, likewise
    np.testing.assert_array_equal(image, expected)
    masks = out["masks"].numpy()
    # A keeps its uncovered rows 2-3; B is covered entirely and dropped; S1, S2 appended.
    np.testing.assert_array_equal(masks[0], box(2, 0, 4, 4))
    np.testing.assert_array_equal(masks[1], box(0, 0, 2, 7))
    np.testing.assert_array_equal(masks[2], box(5, 4, 8, 7))
    assert masks.shape == (3, 8, 8) and masks.dtype == np.uint8
    np.testing.assert_array_equal(out["classes"].numpy(), [1, 3, 4])
    np.testing.assert_array_equal(out["is_crowd"].numpy(), [False, False, False])
    assert int(out["num_instances"]) == 3 and int(out["image_id"]) == 1
    np.testing.assert_array_equal(out["image_info"].numpy(), element(**TARGET)["image_info"])


def test_paste_nothing_chosen_returns_the_target_and_padding_only_pastes_are_dropped():
    target, source = element(**TARGET), element(**SOURCE)
    out = copy_paste.paste(target, source, tf.constant([False, False, False]))
    for key in ("image", "masks", "classes", "is_crowd"):
        np.testing.assert_array_equal(out[key].numpy(), target[key].numpy())
    # A source object entirely in the target's padding column adds nothing.
    edge = element(fill=200, masks=[box(0, 7, 8, 8)], classes=[4], image_id=3)
    out = copy_paste.paste(target, edge, tf.constant([True]))
    np.testing.assert_array_equal(out["image"].numpy(), target["image"].numpy())
    np.testing.assert_array_equal(out["classes"].numpy(), [1, 2])


def test_random_choice_skips_crowds_and_respects_max_instances():
    target, source = element(**TARGET), element(**SOURCE)
    counts = []
    for i in range(64):
        chosen = copy_paste.random_choice(target, source, 10, tf.constant([i, 0], tf.int64))
        chosen = chosen.numpy()
        assert not chosen[2]  # the crowd
        counts.append(chosen.sum())
    assert 0 in counts and 2 in counts  # about half of each non-crowd instance
    for i in range(32):
        seed = tf.constant([i, 1], tf.int64)
        assert copy_paste.random_choice(target, source, 3, seed).numpy().sum() <= 1
        assert not copy_paste.random_choice(target, source, 2, seed).numpy().any()


def test_paired_inside_tf_data():
    """Consecutive elements pair up; probability 0 passes the targets through unchanged and
    probability 1 pastes source pixels exactly where the new masks are."""
    elements = [element(**TARGET), element(**SOURCE), element(**SOURCE), element(**TARGET)]
    dataset = tf.data.Dataset.from_tensors(elements[0])
    for e in elements[1:]:
        dataset = dataset.concatenate(tf.data.Dataset.from_tensors(e))

    off = list(copy_paste.paired(dataset, 0.0, 10, 0, 2, True))
    assert [int(e["image_id"]) for e in off] == [1, 2]
    np.testing.assert_array_equal(off[0]["masks"].numpy(), elements[0]["masks"].numpy())
    np.testing.assert_array_equal(off[1]["classes"].numpy(), [3, 4, 3])

    added = 0
    for seed in range(8):
        outputs = list(copy_paste.paired(dataset, 1.0, 10, seed, 2, True))
        for out, own in zip(outputs, (2, 3), strict=True):
            masks, classes = out["masks"].numpy(), out["classes"].numpy()
            assert len(masks) == len(classes) == int(out["num_instances"])
            assert all(m.max() == 1 for m in masks)  # no empty mask
            assert not (masks.sum(axis=0) > 1).any()  # masks stay disjoint
            # Classes 1-2 come from the image of 10s, classes 3-4 from the image of 200s,
            # whichever was the target: every mask covers its own image's pixels.
            image = out["image"].numpy()[..., 0]
            for mask, label in zip(masks, classes, strict=True):
                assert set(np.unique(image[mask > 0])) == {10.0 if label <= 2 else 200.0}
            added += len(classes) - own
    assert added > 0


def test_copy_paste_in_the_training_pipeline_and_its_resume():
    data = dataclasses.replace(TINY_DATA, copy_paste=1.0)
    source = inputs.from_examples(as_dataset(FIXTURE))
    batches = list(inputs.train_dataset(source, data, TARGETS, 1, seed=5).take(4))
    assert all(b["image"].shape[0] == 1 for b in batches)
    # One training image per two elements of the stream, and a resumed run (skipping two
    # steps) continues where the whole run was.
    whole = image_ids(inputs.train_dataset(source, data, TARGETS, 1, seed=5), 6)
    resumed = image_ids(inputs.train_dataset(source, data, TARGETS, 1, seed=5, skip_elements=2), 4)
    assert resumed == whole[2:]
    plain = image_ids(inputs.train_dataset(source, TINY_DATA, TARGETS, 1, seed=5), 12)
    assert whole == plain[0:12:2]


def test_copy_paste_config_is_validated():
    with pytest.raises(ValueError, match="copy_paste"):
        DataConfig(copy_paste=1.5)
