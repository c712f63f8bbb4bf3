"""SOLOv2 head: output shapes, the mask feature branch against a NumPy reference at stride 4,
the kernel branch's inputs, initialisation and config round trips."""

import numpy as np
import pytest
import tensorflow as tf

from solo_tf.modeling.factory import build_model
from solo_tf.modeling.mask_feature_head import MaskFeatureHead
from solo_tf.modeling.solo_head import prior_bias
from solo_tf.modeling.solo_model import SOLOModel
from solo_tf.modeling.solov2_head import SOLOv2Head
from tests.modeling.tiny import tiny_config

E = 8  # mask feature channels of the tiny SOLOv2
CONFIG = tiny_config(head_type="solov2", mask_feature_channels=E, mask_feature_mid=12)


@pytest.fixture(scope="module")
def model():
    return build_model(CONFIG)


@pytest.mark.parametrize("height, width", [(64, 96), (128, 128), (96, 64), (160, 32)])
def test_output_shapes(model, height, width):
    images = np.random.default_rng(0).uniform(0, 255, (2, height, width, 3)).astype(np.float32)
    out = model(images)
    expected = {"mask_features": (2, height // 4, width // 4, E)}
    for level, grid in enumerate(CONFIG.num_grids):
        expected[f"cate_logits_{level}"] = (2, grid, grid, CONFIG.num_classes)
        expected[f"kernel_preds_{level}"] = (2, grid, grid, E)
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    lazy = model(images, training=False, lazy_masks=True)
    for key in out:  # the masks are always left to the consumer: same outputs either way
        np.testing.assert_array_equal(lazy[key], out[key])


def test_mask_strides_are_four_for_every_level():
    assert CONFIG.mask_strides == (4, 4, 4, 4, 4)
    assert tiny_config(head_type="decoupled").mask_strides == (4, 4, 8, 16, 16)


# --- the mask feature branch against NumPy --------------------------------------------------


def _conv(x, kernel):
    """'same' conv of [h, w, c] with [k, k, c, o], no bias."""
    k = kernel.shape[0]
    padded = np.pad(x, [(k // 2, k // 2), (k // 2, k // 2), (0, 0)])
    h, w = x.shape[:2]
    out = np.zeros((h, w, kernel.shape[3]), np.float64)
    for dy in range(k):
        for dx in range(k):
            out += padded[dy : dy + h, dx : dx + w] @ kernel[dy, dx]
    return out


def _group_norm_relu(x, groups, gamma, beta):
    h, w, c = x.shape
    g = x.reshape(h, w, groups, c // groups)
    g = (g - g.mean(axis=(0, 1, 3), keepdims=True)) / np.sqrt(
        g.var(axis=(0, 1, 3), keepdims=True) + 1e-5
    )
    return np.maximum(g.reshape(h, w, c) * gamma + beta, 0.0)


def _up2(x):
    """torch's bilinear x2, align_corners=False: output i samples (i + 0.5) / 2 - 0.5."""

    def axis(a, n):
        src = np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        frac = (src - lo).reshape([-1 if d == 0 else 1 for d in range(a.ndim)])
        return a[lo] * (1 - frac) + a[hi] * frac

    x = axis(x, x.shape[0])
    return np.swapaxes(axis(np.swapaxes(x, 0, 1), x.shape[1]), 0, 1)


def _coords(h, w):
    xs = np.broadcast_to(np.linspace(-1, 1, w)[None, :], (h, w))
    ys = np.broadcast_to(np.linspace(-1, 1, h)[:, None], (h, w))
    return np.stack([xs, ys], axis=-1)


def _reference_mask_features(layer, feats):
    """The authors' MaskFeatHead.forward for one image, with the layer's weights."""
    fused = 0.0
    for level in range(4):
        x = feats[f"P{level + 2}"][0].astype(np.float64)
        if level == 3:
            x = np.concatenate([x, _coords(*x.shape[:2])], axis=-1)
        for conv, norm in layer.units(level):
            x = _conv(x, conv.kernel.numpy())
            x = _group_norm_relu(x, norm.groups, norm.gamma.numpy(), norm.beta.numpy())
            if level > 0:
                x = _up2(x)
        fused = fused + x
    out = _conv(fused, layer.pred_conv.kernel.numpy())
    norm = layer.pred_gn
    return _group_norm_relu(out, norm.groups, norm.gamma.numpy(), norm.beta.numpy())


@pytest.mark.parametrize("height, width", [(64, 64), (96, 32), (32, 160)])
def test_mask_feature_branch_matches_numpy_at_stride_4(height, width):
    layer = MaskFeatureHead(out_channels=4, mid_channels=6, norm_groups=2)
    rng = np.random.default_rng(height + width)
    feats = {
        f"P{k}": rng.normal(size=(1, height >> k, width >> k, 5)).astype(np.float32)
        for k in range(2, 6)
    }
    layer(feats)
    for weight in layer.weights:  # gammas and betas away from 1 and 0, larger kernels
        weight.assign(rng.normal(0.5, 0.5, weight.shape))
    got = layer(feats).numpy()
    assert got.shape == (1, height // 4, width // 4, 4)
    np.testing.assert_allclose(got[0], _reference_mask_features(layer, feats), atol=2e-4)


def test_mask_feature_branch_layout():
    """Per-level units as the authors' convs_all_levels: 1, 1, 2, 3; coordinates on P5."""
    layer = MaskFeatureHead(out_channels=16, mid_channels=8, norm_groups=4)
    layer({f"P{k}": tf.zeros([1, 128 >> k, 128 >> k, 10]) for k in range(2, 6)})
    in_channels = [[conv.kernel.shape[2] for conv, _ in layer.units(i)] for i in range(4)]
    assert in_channels == [[10], [10], [10, 8], [12, 8, 8]]
    assert layer.pred_conv.kernel.shape == (1, 1, 8, 16)
    assert not any(conv.use_bias for i in range(4) for conv, _ in layer.units(i))


# --- kernel and category branches -----------------------------------------------------------


def test_kernel_branch_coordinates_are_resized_with_the_features():
    head = SOLOv2Head(
        3,
        num_grids=(2,),
        strides=(8,),
        head_channels=8,
        stacked_convs=1,
        norm_groups=2,
        mask_feature_channels=4,
        mask_feature_mid=4,
    )
    captured = {}
    tower_call = head.kernel_tower.call
    head.kernel_tower.call = lambda x: (captured.setdefault("kernel", x), tower_call(x))[1]
    cate_call = head.cate_tower.call
    head.cate_tower.call = lambda x: (captured.setdefault("cate", x), cate_call(x))[1]
    x = tf.random.normal([1, 4, 4, 6])
    head.build({"P2": (None, None, None, 6)})
    head.grid_outputs(0, x)
    kernel_in, cate_in = captured["kernel"].numpy(), captured["cate"].numpy()
    assert kernel_in.shape == (1, 2, 2, 8) and cate_in.shape == (1, 2, 2, 6)
    np.testing.assert_allclose(cate_in, kernel_in[..., :6])
    # x ramp (-1, -1/3, 1/3, 1) resized 4 -> 2 averages pairs: -2/3, 2/3.
    np.testing.assert_allclose(kernel_in[0, :, :, 6], [[-2 / 3, 2 / 3]] * 2, rtol=1e-6)
    np.testing.assert_allclose(kernel_in[0, :, :, 7], [[-2 / 3] * 2, [2 / 3] * 2], rtol=1e-6)


def test_initialisation_and_layer_shapes(model):
    head = model.head
    f = CONFIG.fpn_channels
    assert head.kernel_tower.convs[0].kernel.shape == (3, 3, f + 2, CONFIG.head_channels)
    assert head.cate_tower.convs[0].kernel.shape == (3, 3, f, CONFIG.head_channels)
    assert head.kernel_conv.kernel.shape == (3, 3, CONFIG.head_channels, E)
    np.testing.assert_array_equal(head.kernel_conv.bias.numpy(), np.zeros(E))
    np.testing.assert_allclose(head.cate_conv.bias.numpy(), prior_bias(0.01), rtol=1e-6)
    assert abs(float(np.std(head.kernel_conv.kernel.numpy())) - 0.01) < 0.002


def test_head_get_config_round_trip(model):
    config = model.head.get_config()
    assert config["mask_feature_channels"] == E and config["mask_feature_mid"] == 12
    clone = SOLOv2Head.from_config(config)
    assert clone.get_config() == config
    feature_config = model.head.mask_feature_head.get_config()
    assert MaskFeatureHead.from_config(feature_config).get_config() == feature_config


def test_model_round_trip_gives_the_same_outputs(model):
    clone = SOLOModel.from_config(model.get_config())
    images = np.random.default_rng(3).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    clone(images)
    clone.set_weights(model.get_weights())
    a, b = model(images), clone(images)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
