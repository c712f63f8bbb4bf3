"""TorchvisionResNet: torch's padding and output sizes, stride on the 3x3, parity with a
torchvision ResNet-18 (fixture written by torch) on an odd-sized input, freezing, loading."""

import os

import keras
import numpy as np
import pytest

from solo_tf.modeling.normalization import IMAGENET_MEAN, IMAGENET_STD
from solo_tf.modeling.resnet import TorchvisionResNet, load_torchvision_weights, torch_variables

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
NARROW = (8, 8, 16, 16)  # the resnet18_narrow fixture's stage widths


def torch_size(n, kernel, stride, pad):
    """torch's Conv2d / MaxPool2d output size."""
    return (n + 2 * pad - kernel) // stride + 1


@pytest.fixture(scope="module")
def r18():
    return TorchvisionResNet(depth=18, filters=NARROW)


def test_output_sizes_follow_torchs_formula_on_odd_inputs(r18):
    # 97 -> conv1 (7, 2, 3): 49 -> maxpool (3, 2, 1): 25 -> 13 -> 7 -> 4.
    # 131 -> 66 -> 33 -> 17 -> 9 -> 5.
    out = r18(np.zeros((1, 97, 131, 3), np.float32))
    assert out["P2"].shape == (1, 25, 33, 8) and out["P5"].shape == (1, 4, 5, 16)
    for n, sizes in ((97, (25, 13, 7, 4)), (131, (33, 17, 9, 5))):
        m = torch_size(torch_size(n, 7, 2, 3), 3, 2, 1)
        expected = [m]
        for _ in range(3):
            m = torch_size(m, 3, 2, 1)
            expected.append(m)
        assert tuple(expected) == sizes


def test_stem_pads_three_on_every_side():
    # All-ones 7x7 kernels on normalised ones: output (0, 0) sees rows and cols 0..3 of the
    # input (the window -3..3, three of it padding) -> 4 * 4 * 3 = 48; output (1, 1) sees
    # -1..5, of which 0..5 are input: 6 * 6 * 3 = 108. TF "same" pads 2 before (and 3 after):
    # its (0, 0) would see 0..4, 5 * 5 * 3 = 75.
    model = TorchvisionResNet(depth=18)
    conv = model.get_layer("conv1")
    conv.kernel.assign(np.ones(conv.kernel.shape, np.float32))
    stem = keras.Model(model.inputs, conv.output)
    pixels = np.broadcast_to(np.add(IMAGENET_MEAN, IMAGENET_STD), (1, 12, 12, 3))
    out = np.asarray(stem(pixels.astype(np.float32)))
    assert out.shape == (1, 6, 6, 64)
    np.testing.assert_allclose(out[0, 0, 0, 0], 48.0, rtol=1e-5)
    np.testing.assert_allclose(out[0, 1, 1, 0], 108.0, rtol=1e-5)


def test_bottleneck_stride_on_the_3x3_and_torch_batchnorm():
    model = TorchvisionResNet(depth=50, filters=(4, 4, 8, 16))
    assert model.get_layer("layer2_0_conv1").strides == (1, 1)
    assert model.get_layer("layer2_0_conv2").strides == (2, 2)
    assert model.get_layer("layer2_0_downsample_0").strides == (2, 2)
    assert model.get_layer("layer2_0_bn2").epsilon == 1e-5
    assert not any(
        layer.use_bias for layer in model.layers if isinstance(layer, keras.layers.Conv2D)
    )
    assert "layer4.2.bn3.running_var" in torch_variables(model)


def test_matches_torchvision_on_an_odd_input(r18):
    load_torchvision_weights(r18, os.path.join(FIXTURES, "resnet18_narrow.pth"))
    want = np.load(os.path.join(FIXTURES, "resnet18_narrow.npz"))
    got = r18(want["image"])
    for level in ("P2", "P3", "P4", "P5"):
        scale = np.abs(want[level]).max()
        np.testing.assert_allclose(got[level], want[level], atol=1e-4 * scale, err_msg=level)


def test_freezing_matches_the_keras_cv_backbone(r18):
    trainable = {v.path for v in r18.trainable_weights}
    assert not any(p.startswith(("conv1/", "bn1/", "layer1_")) for p in trainable)
    assert not any("_bn" in p or "downsample_1" in p for p in trainable)
    assert "layer2_0_conv1/kernel" in trainable
    free = TorchvisionResNet(
        depth=18, filters=NARROW, freeze_stem_and_stage1=False, freeze_batchnorm=False
    )
    assert any(v.path == "bn1/gamma" for v in free.trainable_weights)
    clone = TorchvisionResNet.from_config(free.get_config())
    assert len(clone.trainable_weights) == len(free.trainable_weights)


def test_loading_a_checkpoint_of_another_depth_names_the_tensors(tmp_path):
    r34 = TorchvisionResNet(depth=34, filters=NARROW)
    missing = "80 tensors missing from the checkpoint: 'layer1.2.bn1.bias'"
    with pytest.raises(ValueError, match=missing):
        load_torchvision_weights(r34, os.path.join(FIXTURES, "resnet18_narrow.pth"))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_torchvision_weights(r34, str(tmp_path / "nope.pth"))


def test_stem_filters_narrow_conv1_and_the_first_projection():
    # conv1 7x7x3 -> c (no bias), bn1 4 x c; layer1_0 sees c channels: its first 3x3 conv
    # c -> 8 and its 1x1 projection c -> 8 (width 8 != c for both stems). Everything after
    # is the same, so the parameter counts differ by these four terms at c = 64 and 16.
    narrow = TorchvisionResNet(depth=18, filters=NARROW, stem_filters=16)
    default = TorchvisionResNet(depth=18, filters=NARROW)
    assert narrow.get_layer("conv1").kernel.shape == (7, 7, 3, 16)
    assert narrow.get_layer("layer1_0_downsample_0").kernel.shape == (1, 1, 16, 8)
    assert default.get_layer("layer1_0_downsample_0").kernel.shape == (1, 1, 64, 8)
    stem_and_projection = lambda c: 7 * 7 * 3 * c + 4 * c + 3 * 3 * c * 8 + c * 8  # noqa: E731
    assert default.count_params() - narrow.count_params() == (
        stem_and_projection(64) - stem_and_projection(16)
    )
    rebuilt = TorchvisionResNet.from_config(narrow.get_config())
    assert rebuilt.get_layer("conv1").kernel.shape == (7, 7, 3, 16)
    with pytest.raises(ValueError, match="stem_filters"):
        TorchvisionResNet(depth=18, filters=NARROW, stem_filters=-1)
