"""TorchvisionResNet(stride_in_1x1=True): detectron2's MSRA bottleneck (stride 2 on the first
1x1 conv), same weights and output sizes as torchvision's, another function; checked against
a numpy bottleneck written here (1x1 stride 2, 3x3 with explicit padding 1, 1x1) and against
torch (fixture ``resnet50_stride_in_1x1_narrow`` of scripts/make_torch_fixtures.py)."""

import os

import keras
import numpy as np
import pytest

from solo_tf import config as cfg
from solo_tf.modeling import factory
from solo_tf.modeling.resnet import BN_EPSILON, TorchvisionResNet, load_torchvision_weights

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")

FILTERS = (4, 4, 8, 16)  # bottleneck outputs 16, 16, 32, 64


def randomized(model, seed=0):
    """Seeded random weights, BatchNorm statistics included (variance positive)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        value = rng.normal(0.0, 0.5, v.shape)
        if v.path.endswith(("moving_variance", "gamma")):
            value = rng.uniform(0.5, 1.5, v.shape)
        v.assign(value.astype(np.float32))
    return model


@pytest.fixture(scope="module")
def pair():
    """(torchvision-style, stride-in-1x1) ResNet-50s with the same seeded weights."""
    torchvision_style = randomized(TorchvisionResNet(depth=50, filters=FILTERS))
    msra = TorchvisionResNet(depth=50, filters=FILTERS, stride_in_1x1=True)
    msra.set_weights(torchvision_style.get_weights())
    return torchvision_style, msra


def test_stride_moves_to_the_1x1_and_sizes_stay(pair):
    torchvision_style, msra = pair
    for stage in (2, 3, 4):  # the first block of stages 2-4 strides; layer1 does not
        assert msra.get_layer(f"layer{stage}_0_conv1").strides == (2, 2)
        assert msra.get_layer(f"layer{stage}_0_conv2").strides == (1, 1)
        assert torchvision_style.get_layer(f"layer{stage}_0_conv1").strides == (1, 1)
        assert torchvision_style.get_layer(f"layer{stage}_0_conv2").strides == (2, 2)
        assert msra.get_layer(f"layer{stage}_0_downsample_0").strides == (2, 2)
    assert msra.get_layer("layer1_0_conv1").strides == (1, 1)
    assert msra.get_layer("layer2_1_conv1").strides == (1, 1)
    # Same weights (names and shapes), so checkpoints of either load into the other.
    assert [v.path for v in msra.weights] == [v.path for v in torchvision_style.weights]
    # 97 x 131: 49 x 66, 25 x 33 (P2); a 1x1 stride 2 pad 0 and a 3x3 stride 2 pad 1 both
    # give floor((n - 1) / 2) + 1: 13 x 17, 7 x 9, 4 x 5.
    image = np.random.default_rng(1).uniform(0, 255, (1, 97, 131, 3)).astype(np.float32)
    got, want = msra(image), torchvision_style(image)
    sizes = {"P2": (25, 33), "P3": (13, 17), "P4": (7, 9), "P5": (4, 5)}
    for level, size in sizes.items():
        assert got[level].shape[1:3] == want[level].shape[1:3] == size, level
    np.testing.assert_allclose(got["P2"], want["P2"], rtol=1e-5, atol=1e-5)  # no stride
    for level in ("P3", "P4", "P5"):
        assert np.abs(np.asarray(got[level]) - np.asarray(want[level])).max() > 1e-2, level


def np_conv(x, kernel, stride, pad):
    """torch's Conv2d without bias on [H, W, Cin], kernel [k, k, Cin, Cout]: explicit
    symmetric zero padding, then the window of output (i, j) starts at (i, j) * stride."""
    k = kernel.shape[0]
    x = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    rows = (x.shape[0] - k) // stride + 1
    cols = (x.shape[1] - k) // stride + 1
    out = np.zeros((rows, cols, kernel.shape[3]))
    for i in range(rows):
        for j in range(cols):
            window = x[i * stride : i * stride + k, j * stride : j * stride + k]
            out[i, j] = np.einsum("abc,abcd->d", window, kernel)
    return out


def np_bn(x, model, name):
    gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in model.get_layer(name).weights)
    return (x - mean) / np.sqrt(variance + BN_EPSILON) * gamma + beta


def np_msra_bottleneck(x, model, block):
    """detectron2's BottleneckBlock(stride_in_1x1=True, stride 2) in numpy, float64."""

    def kernel(conv):
        return np.asarray(model.get_layer(f"{block}_{conv}").kernel, np.float64)

    relu = lambda v: np.maximum(v, 0.0)  # noqa: E731
    y = relu(np_bn(np_conv(x, kernel("conv1"), 2, 0), model, f"{block}_bn1"))
    y = relu(np_bn(np_conv(y, kernel("conv2"), 1, 1), model, f"{block}_bn2"))
    y = np_bn(np_conv(y, kernel("conv3"), 1, 0), model, f"{block}_bn3")
    shortcut = np_bn(np_conv(x, kernel("downsample_0"), 2, 0), model, f"{block}_downsample_1")
    return relu(y + shortcut)


def test_first_block_of_stage2_matches_numpy(pair):
    _, msra = pair
    probe = keras.Model(
        msra.inputs, [msra.get_layer("layer1_2_out").output, msra.get_layer("layer2_0_out").output]
    )
    image = np.random.default_rng(2).uniform(0, 255, (1, 36, 44, 3)).astype(np.float32)
    block_in, block_out = (np.asarray(t)[0] for t in probe(image))
    assert block_in.shape == (9, 11, 16) and block_out.shape == (5, 6, 16)
    # The 1x1 stride 2 reads the even rows / columns only: output (i, j) is input (2i, 2j).
    want = np_msra_bottleneck(block_in.astype(np.float64), msra, "layer2_0")
    scale = np.abs(want).max()
    np.testing.assert_allclose(block_out, want, atol=1e-5 * scale)


def test_basic_blocks_and_keras_cv_refuse_it():
    with pytest.raises(ValueError, match="stride_in_1x1 needs bottleneck blocks"):
        TorchvisionResNet(depth=18, stride_in_1x1=True)
    config = cfg.ModelConfig(backbone_type="keras_cv", stride_in_1x1=True)
    with pytest.raises(ValueError, match="--stride_in_1x1 needs --backbone_type=torchvision"):
        factory.build_model(config, build=False)
    clone = TorchvisionResNet.from_config(
        TorchvisionResNet(depth=50, filters=FILTERS, stride_in_1x1=True).get_config()
    )
    assert clone.get_layer("layer3_0_conv1").strides == (2, 2)


def test_matches_torch_on_an_odd_input(pair):
    """65 x 97 -> P2 17 x 25, P3 9 x 13, P4 5 x 7, P5 3 x 4 (torch's sizes); within 1e-4 of
    each level's scale. The torchvision-style ResNet with the same weights is not."""
    torchvision_style, msra = pair
    source = os.path.join(FIXTURES, "resnet50_stride_in_1x1_narrow.pth")
    load_torchvision_weights(msra, source)
    want = np.load(os.path.join(FIXTURES, "resnet50_stride_in_1x1_narrow.npz"))
    got = msra(want["image"])
    sizes = {"P2": (17, 25), "P3": (9, 13), "P4": (5, 7), "P5": (3, 4)}
    for level, size in sizes.items():
        assert want[level].shape[1:3] == size, level
        scale = np.abs(want[level]).max()
        np.testing.assert_allclose(got[level], want[level], atol=1e-4 * scale, err_msg=level)
    load_torchvision_weights(torchvision_style, source)
    other = np.asarray(torchvision_style(want["image"])["P3"])
    assert np.abs(other - want["P3"]).max() > 1e-2 * np.abs(want["P3"]).max()
