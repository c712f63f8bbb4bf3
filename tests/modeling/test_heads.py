"""SOLO heads: output shapes (square and not), CoordConv, level resizing, init, sharing."""

import math

import numpy as np
import pytest
import tensorflow as tf

from solo_tf.modeling.decoupled_head import DecoupledSOLOHead
from solo_tf.modeling.factory import build_model
from solo_tf.modeling.solo_head import SOLOHead, coordinate_channels, prior_bias
from tests.modeling.tiny import tiny_config

SIZES = [(64, 96), (128, 128), (96, 64)]
HEADS = {"vanilla": SOLOHead, "decoupled": DecoupledSOLOHead}


@pytest.fixture(scope="module", params=["vanilla", "decoupled"])
def model_and_config(request):
    config = tiny_config(head_type=request.param)
    return build_model(config), config


def _expected_shapes(config, height, width):
    shapes = {}
    for level, (grid, stride) in enumerate(zip(config.num_grids, config.strides, strict=True)):
        hm, wm = height * 2 // stride, width * 2 // stride  # mask stride = stride / 2
        shapes[f"cate_logits_{level}"] = (2, grid, grid, config.num_classes)
        if config.head_type == "vanilla":
            shapes[f"mask_logits_{level}"] = (2, hm, wm, grid * grid)
        else:
            shapes[f"mask_x_logits_{level}"] = (2, hm, wm, grid)
            shapes[f"mask_y_logits_{level}"] = (2, hm, wm, grid)
    return shapes


@pytest.mark.parametrize("height, width", SIZES)
def test_output_shapes(model_and_config, height, width):
    model, config = model_and_config
    images = np.random.default_rng(0).uniform(0, 255, (2, height, width, 3)).astype(np.float32)
    out = model(images)
    expected = _expected_shapes(config, height, width)
    assert {k: tuple(v.shape) for k, v in out.items()} == expected


def test_outputs_do_not_depend_on_training_flag(model_and_config):
    model = model_and_config[0]
    images = np.random.default_rng(1).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    a, b = model(images, training=True), model(images, training=False)
    # Frozen BatchNorm and GroupNorm: the same maths either way. A training call normalises
    # through the fused kernel (FusedGroupNormalization), whose float32 rounding differs from
    # Keras's inference path by an ulp.
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-6)


def test_coordinate_channels():
    coords = coordinate_channels(tf.zeros([1, 2, 3, 5], tf.bfloat16)).numpy()
    assert coords.shape == (1, 2, 3, 2) and coords.dtype == tf.bfloat16.as_numpy_dtype
    np.testing.assert_array_equal(coords[0, :, :, 0], [[-1, 0, 1], [-1, 0, 1]])  # x
    np.testing.assert_array_equal(coords[0, :, :, 1], [[-1, -1, -1], [1, 1, 1]])  # y
    only_y = coordinate_channels(tf.zeros([1, 1, 2, 4]), "y").numpy()
    np.testing.assert_array_equal(only_y[0, :, :, 0], [[-1, -1]])  # one row: just -1


def _features(channels=8):
    rng = np.random.default_rng(2)
    return {
        f"P{k}": rng.normal(size=(1, 128 >> k, 64 >> k, channels)).astype(np.float32)
        for k in range(2, 7)
    }


def test_level_features_resize_p2_down_and_p6_up():
    head = SOLOHead(3, num_grids=(4, 4, 3, 2, 2), head_channels=8, stacked_convs=1, norm_groups=2)
    feats = _features()
    levels = head.level_features(feats)
    # Bilinear x0.5 with half-pixel centres averages 2x2 blocks.
    p2 = feats["P2"]
    np.testing.assert_allclose(
        levels[0], p2.reshape(1, 16, 2, 8, 2, 8).mean(axis=(2, 4)), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(levels[2], feats["P4"])
    # P6 [2, 1] up to P5's [4, 2], half-pixel bilinear: rows r0, 3/4 r0 + 1/4 r1, ...
    p6, up = feats["P6"][0, :, 0], levels[4][0]
    assert up.shape == feats["P5"].shape[1:]
    np.testing.assert_allclose(up[:, 0], up[:, 1])
    np.testing.assert_allclose(up[0, 0], p6[0], rtol=1e-6)
    np.testing.assert_allclose(up[1, 0], 0.75 * p6[0] + 0.25 * p6[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head_type", ["vanilla", "decoupled"])
def test_zero_features_give_the_prior_on_categories(head_type):
    head = HEADS[head_type](
        3, num_grids=(4, 4, 3, 2, 2), head_channels=8, stacked_convs=2, norm_groups=2
    )
    feats = {k: np.zeros_like(v) for k, v in _features().items()}
    out = head(feats)
    expected = prior_bias(0.01)
    assert expected == pytest.approx(-math.log(99.0))
    for level in range(5):
        np.testing.assert_allclose(out[f"cate_logits_{level}"], expected, rtol=1e-6)


@pytest.mark.parametrize(
    "head_type, mask_vars", [("vanilla", 3 * 2 + 2 * 5), ("decoupled", 2 * (3 * 2 + 2 * 5))]
)
def test_towers_are_shared_by_levels(head_type, mask_vars):
    """2 stacked convs: each tower has 3 variables per conv (kernel, GN gamma, beta); only the
    last mask convs (kernel + bias) are per level (5 levels)."""
    head = HEADS[head_type](
        3, num_grids=(4, 4, 3, 2, 2), head_channels=8, stacked_convs=2, norm_groups=2
    )
    head(_features())
    cate_vars = 3 * 2 + 2
    assert len(head.trainable_weights) == cate_vars + mask_vars


@pytest.mark.parametrize("head_type", ["vanilla", "decoupled"])
def test_head_config_round_trip(head_type):
    head = HEADS[head_type](
        3,
        num_grids=(4, 4, 3, 2, 2),
        head_channels=8,
        stacked_convs=1,
        norm_groups=2,
        coord_conv=False,
        name="h",
    )
    clone = HEADS[head_type].from_config(head.get_config())
    assert clone.get_config() == head.get_config()


def test_decoupled_light_shares_one_tower_with_both_coordinates():
    """Decoupled SOLO Light: one mask tower (first conv sees F + 2: features, x, y) feeds the
    X and the Y convs; 3 variables per tower conv, X and Y convs per level as before."""
    head = DecoupledSOLOHead(
        3,
        num_grids=(4, 4, 3, 2, 2),
        head_channels=8,
        stacked_convs=2,
        norm_groups=2,
        shared_tower=True,
    )
    out = head(_features())
    assert head.mask_tower("x") is head.mask_tower("y") is head.mask_tower_xy
    assert head.mask_tower_xy.conv_0.kernel.shape == (3, 3, 8 + 2, 8)
    assert len(head.trainable_weights) == (3 * 2 + 2) + (3 * 2 + 2 * 2 * 5)
    assert out["mask_x_logits_0"].shape == out["mask_y_logits_0"].shape == (1, 32, 16, 4)
    clone = DecoupledSOLOHead.from_config(head.get_config())
    assert clone.shared_tower and clone.get_config() == head.get_config()
