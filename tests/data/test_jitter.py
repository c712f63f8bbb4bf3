"""Tests for solo_tf.data.jitter and its use in augment_for_training: hand-worked values."""

import numpy as np
import pytest
import tensorflow as tf

from solo_tf.config import DataConfig
from solo_tf.data import jitter
from solo_tf.data.augment import augment_for_training

PIXELS = np.array([[[10.0, 20.0, 30.0], [50.0, 60.0, 70.0]]], np.float32)  # [1, 2, 3], mean 40


def test_adjust_colours_brightness_and_contrast_exact():
    # +10 -> [[20, 30, 40], [60, 70, 80]], mean 50; contrast 2 -> 2 (x - 50) + 50.
    got = jitter.adjust_colours(PIXELS, brightness=10.0, contrast=2.0)
    np.testing.assert_allclose(got.numpy(), [[[0, 10, 30], [70, 90, 110]]], atol=1e-3)


def test_adjust_colours_saturation_zero_gives_grey_and_clips():
    grey = PIXELS @ np.array(jitter.GREY_WEIGHTS, np.float32)  # [1, 2]
    got = jitter.adjust_colours(PIXELS, saturation=0.0)
    np.testing.assert_allclose(got.numpy(), np.repeat(grey[..., None], 3, axis=-1), atol=1e-3)
    bright = jitter.adjust_colours(PIXELS, brightness=250.0)
    np.testing.assert_allclose(bright.numpy(), 255.0)


def test_adjust_colours_hue_turns_and_permutation():
    red = np.array([[[200.0, 0.0, 0.0]]], np.float32)
    # A third of a turn about the grey axis takes red to green, two thirds to blue (as HSV).
    for turns, want in ((1 / 3, [0, 200, 0]), (2 / 3, [0, 0, 200]), (-1 / 3, [0, 0, 200])):
        got = jitter.adjust_colours(red, hue=turns).numpy()
        np.testing.assert_allclose(got, [[want]], atol=1e-3)
    # Half a turn: the grey part 200/3 stays, the rest (400/3, -200/3, -200/3) is reversed:
    # (-200/3, 400/3, 400/3), clipped to (0, 400/3, 400/3).
    np.testing.assert_allclose(
        jitter.adjust_colours(red, hue=0.5).numpy(), [[[0, 400 / 3, 400 / 3]]], atol=1e-3
    )
    swapped = jitter.adjust_colours(PIXELS, permutation=tf.constant([2, 0, 1]))
    np.testing.assert_allclose(swapped.numpy(), PIXELS[..., [2, 0, 1]], atol=1e-3)


def test_adjust_colours_is_the_steps_one_after_another():
    # The one-pass affine map equals the five steps applied in turn (numpy), where no step
    # leaves 0..255 (the steps clip only at the end).
    pixels = np.random.default_rng(0).uniform(60, 190, [4, 5, 3]).astype(np.float32)
    b, c, s, h, perm = 7.0, 1.2, 0.8, 0.05, [1, 2, 0]
    x = pixels + b
    x = (x - x.mean()) * c + x.mean()
    grey = x @ np.array(jitter.GREY_WEIGHTS, np.float32)
    x = (x - grey[..., None]) * s + grey[..., None]
    u = np.ones(3) / np.sqrt(3.0)  # Rodrigues' rotation of each pixel about the grey axis
    t = 2 * np.pi * h
    x = x * np.cos(t) + np.cross(u, x) * np.sin(t) + (x @ u)[..., None] * u * (1 - np.cos(t))
    want = x[..., perm]
    assert want.min() > 0 and want.max() < 255
    got = jitter.adjust_colours(pixels, b, c, s, h, tf.constant(perm)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-3)


def test_random_photometric_strength_zero_is_identity_and_draws_follow_the_seed():
    image = tf.constant(np.random.default_rng(0).uniform(0, 255, [6, 5, 3]), tf.float32)
    same = jitter.random_photometric(image, 0.0, tf.constant([1, 2], tf.int64))
    np.testing.assert_allclose(same.numpy(), image.numpy(), atol=1e-2)
    first = jitter.random_photometric(image, 1.0, tf.constant([1, 2], tf.int64)).numpy()
    again = jitter.random_photometric(image, 1.0, tf.constant([1, 2], tf.int64)).numpy()
    other = jitter.random_photometric(image, 1.0, tf.constant([3, 4], tf.int64)).numpy()
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - other).max() > 1.0
    assert first.min() >= 0.0 and first.max() <= 255.0


def test_jittered_size_is_the_factor_times_the_size():
    size = tf.constant([100.0, 60.0])
    np.testing.assert_array_equal(
        jitter.jittered_size(size, (1.5, 1.5), tf.constant([0, 1], tf.int64)).numpy(), [150, 90]
    )
    draws = [
        jitter.jittered_size(size, (0.5, 2.0), tf.constant([0, i], tf.int64)).numpy()
        for i in range(40)
    ]
    heights = np.array([d[0] for d in draws])
    assert heights.min() >= 50 and heights.max() <= 200
    assert heights.min() < 80 and heights.max() > 130  # the range is used, not one end


def test_crop_offset_stays_inside_and_is_zero_where_the_image_fits():
    for i in range(20):
        offset = jitter.crop_offset([50.0, 20.0], (32, 32), tf.constant([i, 7], tf.int64))
        y, x = offset.numpy()
        assert 0 <= y <= 18 and x == 0


def test_crop_to_canvas_crops_image_and_masks_together_and_pads():
    image = tf.reshape(tf.range(4 * 6 * 3, dtype=tf.float32), [4, 6, 3])
    masks = tf.constant(np.arange(2 * 4 * 6).reshape(2, 4, 6) % 2, tf.uint8)
    got_image, got_masks = jitter.crop_to_canvas(image, masks, tf.constant([1, 2]), (5, 3))
    expected_image = np.zeros([5, 3, 3], np.float32)
    expected_image[:3] = image.numpy()[1:, 2:5]
    expected_masks = np.zeros([2, 5, 3], np.uint8)
    expected_masks[:, :3] = masks.numpy()[:, 1:, 2:5]
    np.testing.assert_array_equal(got_image.numpy(), expected_image)
    np.testing.assert_array_equal(got_masks.numpy(), expected_masks)


def _corners_example():
    """32 x 32: instance 0 top-left 6 x 6, instance 1 bottom-right 6 x 6; image = 200 * mask."""
    masks = np.zeros([2, 32, 32], np.uint8)
    masks[0, :6, :6] = 1
    masks[1, 26:, 26:] = 1
    image = (masks.max(axis=0) * 200).astype(np.uint8)
    return {
        "image": tf.constant(np.repeat(image[..., None], 3, axis=-1)),
        "masks": tf.constant(masks),
        "classes": tf.constant([1, 2], tf.int32),
        "is_crowd": tf.constant([False, False]),
        "image_id": tf.constant(5, tf.int64),
    }


JITTER = DataConfig(
    short_sides=(32,),
    max_long_side=32,
    output_size=(32, 32),
    flip_probability=0.0,
    scale_jitter=(2.0, 2.0),
)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_scale_jitter_moves_image_and_masks_together_and_drops_cropped_instances(seed):
    example = _corners_example()
    out = augment_for_training(example, JITTER, tf.constant([seed, 9], tf.int64))
    info = out["image_info"].numpy()
    np.testing.assert_allclose(info[:3], [[32, 32], [64, 64], [2, 2]])
    y0, x0 = info[3].astype(int)
    assert 0 <= y0 <= 32 and 0 <= x0 <= 32
    # The instances' 2x-scaled boxes: [0, 12) and [52, 64); kept iff they meet the window.
    window = lambda lo, hi, start: lo < start + 32 and hi > start  # noqa: E731
    expected = [
        c
        for c, (lo, hi) in zip([1, 2], [(0, 12), (52, 64)], strict=True)
        if window(lo, hi, y0) and window(lo, hi, x0)
    ]
    np.testing.assert_array_equal(out["classes"].numpy(), expected)
    masks, image = out["masks"].numpy(), out["image"].numpy()[..., 0]
    assert masks.shape[0] == len(expected)
    union = masks.max(axis=0) if len(expected) else np.zeros([32, 32], np.uint8)
    # Bilinear x2 of a 0/200 image: the source pixel that nearest-neighbour picks carries 3/4
    # of the weight along each axis, 9/16 in all, so a pixel inside a mask is >= 112.5 and one
    # outside is <= 87.5 (200 x 7/16). Crossing edges would break this.
    assert (image[union == 1] >= 112.5 - 1e-3).all()
    assert (image[union == 0] <= 87.5 + 1e-3).all()


def test_photometric_jitter_leaves_masks_alone():
    config = DataConfig(
        short_sides=(32,),
        max_long_side=32,
        output_size=(32, 32),
        flip_probability=0.0,
        photometric_jitter=1.0,
    )
    example = _corners_example()
    out = augment_for_training(example, config, tf.constant([3, 3], tf.int64))
    np.testing.assert_array_equal(out["masks"].numpy(), example["masks"].numpy())
    plain = augment_for_training(
        example, DataConfig(**{**config.__dict__, "photometric_jitter": 0.0}), tf.constant([3, 3])
    )
    assert np.abs(out["image"].numpy() - plain["image"].numpy()).max() > 1.0


def test_photometric_jitter_recolours_the_resized_image_only():
    # The 32 x 32 example brought to 16 x 16 on a 32 x 32 canvas: the jitter is the one
    # random_photometric draws from the element's colour seed, applied to the resized image;
    # the padding stays 0 (the batch gives it the mean colour).
    config = DataConfig(
        short_sides=(16,), max_long_side=16, output_size=(32, 32), flip_probability=0.0
    )
    seed = tf.constant([3, 3], tf.int64)
    plain = augment_for_training(_corners_example(), config, seed)["image"].numpy()
    jittered = augment_for_training(
        _corners_example(), DataConfig(**{**config.__dict__, "photometric_jitter": 1.0}), seed
    )["image"].numpy()
    colour_seed = tf.random.experimental.stateless_split(
        tf.random.experimental.stateless_fold_in(seed, 1), 3
    )[0]
    expected = jitter.random_photometric(tf.constant(plain[:16, :16]), 1.0, colour_seed).numpy()
    np.testing.assert_allclose(jittered[:16, :16], expected, atol=1e-4)
    assert np.abs(expected - plain[:16, :16]).max() > 1.0  # the draw changed the colours
    assert (jittered[16:] == 0).all() and (jittered[:, 16:] == 0).all()


def test_jitters_off_leave_the_paper_augmentation_unchanged():
    """With both jitters off the draws are the ones the paper recipes always had."""
    base = DataConfig(short_sides=(16, 24, 32), max_long_side=32, output_size=(32, 32))
    for seed in range(6):
        out = augment_for_training(_corners_example(), base, tf.constant([seed, 1], tf.int64))
        # Flip and size draws from the first two split seeds, as before the jitters existed.
        size_seed, _ = tf.unstack(
            tf.random.experimental.stateless_split(tf.constant([seed, 1], tf.int64), 2)
        )
        choice = tf.random.stateless_uniform([], size_seed, minval=0, maxval=3, dtype=tf.int32)
        side = [16, 24, 32][int(choice)]
        np.testing.assert_array_equal(out["image_info"].numpy()[1], [side, side])


def test_both_jitters_inside_tf_data_map():
    config = DataConfig(
        **{**JITTER.__dict__, "scale_jitter": (0.5, 2.0), "photometric_jitter": 0.5}
    )
    dataset = tf.data.Dataset.from_tensors(_corners_example()).repeat(8).enumerate()
    dataset = dataset.map(
        lambda i, ex: augment_for_training(ex, config, tf.stack([tf.constant(0, tf.int64), i])),
        num_parallel_calls=2,
    )
    assert dataset.element_spec["image"].shape == (32, 32, 3)
    assert dataset.element_spec["masks"].shape.as_list() == [None, 32, 32]
    sizes = set()
    for element in dataset:
        masks = element["masks"].numpy()
        assert masks.dtype == np.uint8 and all(m.max() == 1 for m in masks)  # no empty mask
        assert len(masks) == len(element["classes"].numpy())
        sizes.add(tuple(element["image_info"].numpy()[1]))
    assert len(sizes) > 2


def test_jitter_config_is_validated():
    with pytest.raises(ValueError, match="photometric_jitter"):
        DataConfig(photometric_jitter=1.5)
    with pytest.raises(ValueError, match="scale_jitter"):
        DataConfig(scale_jitter=(2.0, 1.0))


def test_shape_matrix_identity_and_inverse_of_stretch_and_shear():
    np.testing.assert_allclose(jitter.shape_matrix([5, 7], 1.0, 0.0).numpy(), [1, 0, 0, 0, 1, 0])
    # Stretch 4 (x by 2, y by 1/2) and shear 1 about the centre (3, 2) of a 5 x 7 image: the
    # output-to-input map is x_in = (x - 3) / 2 - (y - 2) / 2 + 3, y_in = 2 (y - 2) + 2.
    np.testing.assert_allclose(
        jitter.shape_matrix([5, 7], 4.0, 1.0).numpy(), [0.5, -0.5, 2.5, 0, 2, -2], atol=1e-6
    )


def test_affine_transform_shear_hand_worked():
    # x_in = x - (y - 2), y_in = y on a 5 x 5 image: input column 2 becomes the diagonal x = y.
    masks = np.zeros([1, 5, 5], np.uint8)
    masks[0, :, 2] = 1
    image = np.repeat((masks[0] * 200.0 + 10.0)[..., None], 3, axis=-1)  # mean 50
    matrix = tf.constant([1.0, -1.0, 2.0, 0.0, 1.0, 0.0])
    out_image, out_masks = jitter.affine_transform(tf.constant(image), tf.constant(masks), matrix)
    np.testing.assert_array_equal(out_masks.numpy()[0], np.eye(5, dtype=np.uint8))
    expected = np.where(np.eye(5) > 0, 210.0, 10.0)
    # Output pixels whose input lies outside the image (x - y + 2 outside 0..4) take the mean.
    x, y = np.meshgrid(np.arange(5), np.arange(5))
    outside = (x - y + 2 < 0) | (x - y + 2 > 4)
    expected[outside] = 50.0
    np.testing.assert_allclose(out_image.numpy()[..., 0], expected, atol=1e-4)
    assert out_masks.dtype == tf.uint8 and out_image.dtype == tf.float32


def test_shape_jitter_strength_zero_is_identity_and_no_instances_work():
    example = _corners_example()
    image, masks = jitter.random_shape_jitter(
        example["image"], example["masks"], 0.0, tf.constant([1, 2], tf.int64)
    )
    np.testing.assert_allclose(image.numpy(), example["image"].numpy().astype(np.float32))
    np.testing.assert_array_equal(masks.numpy(), example["masks"].numpy())
    _, none = jitter.random_shape_jitter(
        example["image"], tf.zeros([0, 32, 32], tf.uint8), 1.0, tf.constant([1, 2], tf.int64)
    )
    assert none.shape == (0, 32, 32)


def test_shape_jitter_moves_image_and_masks_together_inside_tf_data_map():
    """A centred 16 x 16 square, image = 200 inside: after the warp the mask still covers the
    bright pixels (bilinear image against nearest-neighbour masks: borders may differ)."""
    masks = np.zeros([1, 32, 32], np.uint8)
    masks[0, 8:24, 8:24] = 1
    example = {
        "image": tf.constant(np.repeat((masks[0] * 200)[..., None], 3, axis=-1)),
        "masks": tf.constant(masks),
        "classes": tf.constant([3], tf.int32),
        "is_crowd": tf.constant([False]),
        "image_id": tf.constant(5, tf.int64),
    }
    config = DataConfig(**{**JITTER.__dict__, "scale_jitter": (), "shape_jitter": 1.0})
    dataset = tf.data.Dataset.from_tensors(example).repeat(12).enumerate()
    dataset = dataset.map(
        lambda i, ex: augment_for_training(ex, config, tf.stack([tf.constant(0, tf.int64), i])),
        num_parallel_calls=2,
    )
    widths = set()
    for element in dataset:
        mask = element["masks"].numpy()[0] > 0
        bright = element["image"].numpy()[..., 0] > 100
        assert (mask & bright).sum() >= 0.9 * max(mask.sum(), bright.sum())
        assert 200 <= mask.sum() <= 312  # area kept up to the resampling: 256 before
        widths.add(int(mask.any(axis=0).sum()))
    assert len(widths) > 2  # stretched and sheared differently


def test_shape_jitter_config_is_validated():
    with pytest.raises(ValueError, match="shape_jitter"):
        DataConfig(shape_jitter=-0.1)
