"""Tests for solo_tf.data.augment: exact sizes, image_info, flips, stateless determinism."""

import numpy as np
import pytest
import tensorflow as tf

from solo_tf.config import DataConfig
from solo_tf.data.augment import (
    augment_for_training,
    flip_left_right,
    preprocess_for_eval,
    resize_and_pad,
    scaled_size,
)

TINY = DataConfig(
    short_sides=(64, 96),
    max_long_side=128,
    eval_short_side=96,
    output_size=(128, 128),
    flip_probability=0.5,
)


@pytest.mark.parametrize(
    "size, short, long, expected",
    [
        # 640 / 300 = 2.133: 500 * 2.133 = 1066.7 -> 1067.
        ((300, 500), 640, 1333, (640, 1067)),
        ((500, 300), 640, 1333, (1067, 640)),
        # Short side would give 6400 px: the long-side cap 1333 / 1000 wins -> 133.3 -> 133.
        ((100, 1000), 640, 1333, (133, 1333)),
        # 800 / 427 = 1.8735: 640 * 1.8735 = 1199.06 -> 1199; no cap but the long side's.
        ((640, 427), 800, 1333, (1199, 800)),
        ((427, 640), 800, 1333, (800, 1199)),
        ((480, 640), 800, 1333, (800, 1067)),
        ((480, 640), 384, 512, (384, 512)),
        ((256, 256), 448, 512, (448, 448)),
    ],
)
def test_scaled_size_is_exact(size, short, long, expected):
    got = scaled_size(tf.constant(size), short, long)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_resize_and_pad_image_info_masks_and_padding():
    image = tf.fill([10, 20, 3], tf.constant(200, tf.uint8))
    masks = np.zeros([2, 10, 20], np.uint8)
    masks[0, 2:5, 4:10] = 1
    masks[1, 0, 0] = 1
    out_image, out_masks, info = resize_and_pad(image, tf.constant(masks), [20.0, 40.0], (32, 48))
    np.testing.assert_allclose(info.numpy(), [[10, 20], [20, 40], [2, 2], [0, 0]])
    assert out_image.dtype == tf.float32 and out_image.shape == (32, 48, 3)
    np.testing.assert_allclose(out_image[:20, :40].numpy(), 200.0)
    assert not out_image[20:].numpy().any() and not out_image[:, 40:].numpy().any()
    # Nearest-neighbour upscaling by exactly 2: every pixel becomes a 2 x 2 block.
    expected = np.zeros([2, 32, 48], np.uint8)
    expected[:, :20, :40] = masks.repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_array_equal(out_masks.numpy(), expected)


def test_eval_preprocessing_uses_eval_short_side():
    example = {"image": tf.zeros([30, 60, 3], tf.uint8), "image_id": tf.constant(7, tf.int64)}
    out = preprocess_for_eval(example, TINY)
    # 96 / 30 = 3.2 -> 96 x 192, long cap 128 / 60 -> 64 x 128.
    np.testing.assert_allclose(
        out["image_info"].numpy(), [[30, 60], [64, 128], [64 / 30, 128 / 60], [0, 0]], rtol=1e-6
    )
    assert out["image"].shape == (128, 128, 3) and out["image_id"].numpy() == 7


def _example(height=32, width=32):
    """A red left half, one mask on the left quarter and one tiny mask."""
    image = np.zeros([height, width, 3], np.uint8)
    image[:, : width // 2, 0] = 255
    masks = np.zeros([2, height, width], np.uint8)
    masks[0, 8:24, 0 : width // 4] = 1
    masks[1, 0, width - 1] = 1  # a single pixel: lost when downscaled
    return {
        "image": tf.constant(image),
        "masks": tf.constant(masks),
        "classes": tf.constant([3, 4], tf.int32),
        "is_crowd": tf.constant([False, True]),
        "image_id": tf.constant(11, tf.int64),
        "original_size": tf.constant([height, width], tf.int32),
    }


def test_flip_mirrors_image_and_masks_together():
    image = tf.reshape(tf.range(2 * 3 * 3, dtype=tf.int32), [2, 3, 3])
    masks = tf.constant([[[1, 0, 0], [1, 1, 0]]], tf.uint8)
    flipped_image, flipped_masks = flip_left_right(image, masks)
    np.testing.assert_array_equal(flipped_image.numpy(), image.numpy()[:, ::-1])
    np.testing.assert_array_equal(flipped_masks.numpy(), [[[0, 0, 1], [0, 1, 1]]])


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_training_flip_follows_probability(probability):
    config = DataConfig(
        short_sides=(64,), max_long_side=128, output_size=(128, 128), flip_probability=probability
    )
    out = augment_for_training(_example(), config, tf.constant([1, 2], tf.int64))
    red = out["image"][:64, :64, 0].numpy()
    mask = out["masks"][0, :64, :64].numpy()
    if probability == 0.0:
        assert red[:, :31].min() == 255 and red[:, 33:].max() == 0  # bilinear blends 31, 32
        assert mask[16:48, :16].all() and mask.sum() == 32 * 16
    else:
        assert red[:, 33:].min() == 255 and red[:, :31].max() == 0
        assert mask[16:48, 48:].all() and mask.sum() == 32 * 16


def test_training_drops_instances_emptied_by_the_resize():
    config = DataConfig(short_sides=(8,), max_long_side=128, output_size=(32, 32))
    # 32 -> 8: nearest neighbour samples pixels 2, 6, ..., 30; the pixel at (0, 31) is lost.
    out = augment_for_training(_example(), config, tf.constant([0, 0], tf.int64))
    assert out["masks"].shape == (1, 32, 32)
    np.testing.assert_array_equal(out["classes"].numpy(), [3])
    np.testing.assert_array_equal(out["is_crowd"].numpy(), [False])
    assert set(np.unique(out["masks"].numpy())) == {0, 1}


def test_training_randomness_is_a_function_of_the_seed():
    def run(seed):
        out = augment_for_training(_example(), TINY, tf.constant(seed, tf.int64))
        return out["image_info"].numpy(), out["image"].numpy()

    for seed in ([0, 1], [5, 9]):
        first, second = run(seed), run(seed)
        np.testing.assert_array_equal(first[0], second[0])
        np.testing.assert_array_equal(first[1], second[1])
    sizes = {tuple(run([0, i])[0][1]) for i in range(12)}
    assert sizes == {(64.0, 64.0), (96.0, 96.0)}  # both short sides get drawn


def test_augment_inside_tf_data_map():
    dataset = tf.data.Dataset.from_tensors(_example()).repeat(3).enumerate()
    dataset = dataset.map(
        lambda i, ex: augment_for_training(ex, TINY, tf.stack([tf.constant(0, tf.int64), i])),
        num_parallel_calls=2,
    )
    assert dataset.element_spec["image"].shape == (128, 128, 3)
    assert dataset.element_spec["masks"].shape.as_list() == [None, 128, 128]
    for element in dataset:
        assert element["masks"].shape[0] == 2
        assert element["masks"].dtype == tf.uint8
