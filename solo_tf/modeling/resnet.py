"""A torchvision-faithful ResNet (``backbone_type="torchvision"``, the authors' backbone).

Same computation as torchvision's ``resnet18/34/50/101`` (and mmdetection's ResNet with
``style="pytorch"``, the authors' SOLO backbone): the stride 2 of a bottleneck is on its
3x3 conv, every padding is explicit and symmetric (stem 7x7/2 pads 3, max-pool 3x3/2 pads
1, strided 3x3 convs pad 1), convs have no bias, BatchNorm epsilon is 1e-5. torchvision's
ImageNet weights and the authors' checkpoints therefore compute here what they compute in
PyTorch (``solo_tf.convert`` loads them; tests compare with torch's own outputs).

``stride_in_1x1=True`` moves a bottleneck's stride 2 to its first 1x1 conv instead: the
MSRA ResNet of detectron2's default ``MODEL.RESNETS.STRIDE_IN_1X1=True`` (AdelaiDet's
SOLOv2 checkpoints) and of keras-cv's v1. Same weights and output sizes, another function.
Basic blocks (depth 18/34) have no 1x1 conv: the option is refused for them.

Layer names are torch's module paths with "." replaced by "_" ("layer2_0_downsample_0" is
torch's "layer2.0.downsample.0"), so the weight mapping is a rename.

Output size of a stride-2 layer for an input of size n: floor((n + 2p - k) / 2) + 1, as in
torch (7x7 pad 3 and 3x3 pad 1: floor((n - 1) / 2) + 1; 1x1 pad 0 likewise).

Shape letters: B batch, H W input height/width.
"""

from __future__ import annotations

import os

import keras

from solo_tf import torch_checkpoint, torch_weights
from solo_tf.modeling.normalization import (
    NORMALIZATIONS,
    FusedBatchNormalization,
    ImageNormalization,
    check_normalization,
)

# depth -> (blocks per stage, bottleneck?)
RESNET_SPECS = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
}
STAGE_FILTERS = (64, 128, 256, 512)
STEM_FILTERS = 64  # torchvision's inplanes; kept when ``filters`` narrows the stages
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # torch's momentum 0.1 (torch weighs the new batch, Keras the old mean)
STEM_AND_STAGE1_PREFIXES = ("conv1", "bn1", "layer1_")


def _conv(filters: int, kernel: int, stride: int, name: str):
    """torch's Conv2d(kernel, stride, padding=kernel // 2, bias=False): a list of layers."""
    pad = kernel // 2
    if stride == 1 or pad == 0:  # "same" at stride 1 is the symmetric pad of torch
        padding = "same" if pad else "valid"
        return [keras.layers.Conv2D(filters, kernel, stride, padding, use_bias=False, name=name)]
    return [
        keras.layers.ZeroPadding2D(pad, name=f"{name}_pad"),
        keras.layers.Conv2D(filters, kernel, stride, "valid", use_bias=False, name=name),
    ]


def _apply(layers, x):
    for layer in layers:
        x = layer(x)
    return x


def _bn(name: str):
    return FusedBatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _block(x, width: int, stride: int, bottleneck: bool, name: str, stride_in_1x1=False):
    """One BasicBlock (two 3x3) or Bottleneck (1x1, 3x3 with the stride, 1x1 to 4 x width;
    ``stride_in_1x1``: the stride on the first 1x1 instead)."""
    out_channels = width * (4 if bottleneck else 1)
    shortcut = x
    if stride != 1 or x.shape[-1] != out_channels:
        shortcut = _apply(_conv(out_channels, 1, stride, f"{name}_downsample_0"), x)
        shortcut = _bn(f"{name}_downsample_1")(shortcut)
    if bottleneck:
        first, second = (stride, 1) if stride_in_1x1 else (1, stride)
        specs = [(width, 1, first), (width, 3, second), (out_channels, 1, 1)]
    else:
        specs = [(width, 3, stride), (width, 3, 1)]
    y = x
    for i, (filters, kernel, conv_stride) in enumerate(specs, start=1):
        y = _apply(_conv(filters, kernel, conv_stride, f"{name}_conv{i}"), y)
        y = _bn(f"{name}_bn{i}")(y)
        if i < len(specs):
            y = keras.layers.ReLU(name=f"{name}_relu{i}")(y)
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def resnet_levels(
    x, depth: int, filters=(), stride_in_1x1: bool = False, stem_filters: int = 0
) -> dict:
    """Normalised images [B, H, W, 3] -> {"P2".."P5"} (outputs of layer1..layer4).
    ``stem_filters``: channels of conv1 (0: torchvision's 64)."""
    if depth not in RESNET_SPECS:
        raise ValueError(f"backbone depth must be one of {sorted(RESNET_SPECS)}, got {depth}")
    blocks, bottleneck = RESNET_SPECS[depth]
    if stride_in_1x1 and not bottleneck:
        raise ValueError(
            f"stride_in_1x1 needs bottleneck blocks (depth 50 or 101); a ResNet-{depth}'s "
            "basic blocks stride their first 3x3 conv either way"
        )
    if stem_filters < 0:
        raise ValueError(f"stem_filters must be >= 0 (0: {STEM_FILTERS}), got {stem_filters}")
    x = _apply(_conv(stem_filters or STEM_FILTERS, 7, 2, "conv1"), x)
    x = keras.layers.ReLU(name="relu")(_bn("bn1")(x))
    # torch pads the max-pool with -inf; after the ReLU every input is >= 0, so 0 is the same.
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = keras.layers.MaxPooling2D(3, 2, "valid", name="maxpool")(x)
    levels = {}
    for stage, (width, count) in enumerate(zip(filters or STAGE_FILTERS, blocks, strict=True)):
        for index in range(count):
            stride = 2 if stage > 0 and index == 0 else 1
            name = f"layer{stage + 1}_{index}"
            x = _block(x, width, stride, bottleneck, name, stride_in_1x1)
        levels[f"P{stage + 2}"] = x
    return levels


@keras.saving.register_keras_serializable(package="solo_tf")
class TorchvisionResNet(keras.Model):
    """Functional model: float32 RGB in [0, 255] [B, H, W, 3] -> {"P2".."P5"}.

    P_k is [B, ~H/2^k, ~W/2^k, c * 2^(k-2)] with c = 64 (basic blocks, depth 18/34) or 256
    (bottlenecks, depth 50/101); sizes follow torch's formula (exactly H/2^k when H is a
    multiple of 32). Same arguments and freezing as the keras-cv ``ResNetPyramidBackbone``:
    ``freeze_stem_and_stage1`` leaves conv1, bn1 and layer1 without trainable weights;
    ``freeze_batchnorm`` makes every BatchNormalization non-trainable, which in Keras 3
    also runs it on its moving statistics under ``training=True``. ``stride_in_1x1``:
    bottlenecks stride their first 1x1 conv (detectron2's MSRA ResNet; depth 50/101 only).
    """

    def __init__(
        self,
        depth: int = 50,
        freeze_stem_and_stage1: bool = True,
        freeze_batchnorm: bool = True,
        input_shape=(None, None, 3),
        filters=(),
        input_normalization: str = "imagenet",
        stride_in_1x1: bool = False,
        stem_filters: int = 0,
        **kwargs,
    ):
        check_normalization(input_normalization)
        if filters and len(filters) != len(STAGE_FILTERS):
            raise ValueError(f"backbone filters need 4 stage widths, got {filters}")
        images = keras.Input(shape=tuple(input_shape), name="images")
        mean, std = NORMALIZATIONS[input_normalization]
        x = ImageNormalization(mean, std, name="image_normalization")(images)
        levels = resnet_levels(x, depth, tuple(filters), stride_in_1x1, stem_filters)
        super().__init__(inputs=images, outputs=levels, **kwargs)
        self.depth = depth
        self.freeze_stem_and_stage1 = freeze_stem_and_stage1
        self.freeze_batchnorm = freeze_batchnorm
        self.image_shape = tuple(input_shape)
        self.filters = tuple(filters)
        self.input_normalization = input_normalization
        self.stride_in_1x1 = stride_in_1x1
        self.stem_filters = stem_filters
        for layer in self.layers:
            if freeze_stem_and_stage1 and layer.name.startswith(STEM_AND_STAGE1_PREFIXES):
                layer.trainable = False
            if freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False

    def get_config(self):
        return {
            "name": self.name,
            "depth": self.depth,
            "freeze_stem_and_stage1": self.freeze_stem_and_stage1,
            "freeze_batchnorm": self.freeze_batchnorm,
            "input_shape": self.image_shape,
            "filters": self.filters,
            "input_normalization": self.input_normalization,
            "stride_in_1x1": self.stride_in_1x1,
            "stem_filters": self.stem_filters,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


# Keras weight name -> torch's, for BatchNormalization; convs have only "kernel" -> "weight".
BN_TORCH_NAMES = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}
# torchvision's ImageNet classifier: not part of the backbone, dropped by name.
CLASSIFIER_TENSORS = ("fc.weight", "fc.bias")


def torch_variables(backbone: TorchvisionResNet, prefix: str = "") -> dict:
    """{torch parameter name: Keras variable} of every weight of ``backbone``.

    ``prefix``: prepended to the names ("backbone." in the authors' detectors).
    """
    variables = {}
    for layer in backbone.layers:
        module = prefix + layer.name.replace("_", ".")
        if isinstance(layer, keras.layers.Conv2D):
            variables[f"{module}.weight"] = layer.kernel
        elif isinstance(layer, keras.layers.BatchNormalization):
            for weight in layer.weights:
                variables[f"{module}.{BN_TORCH_NAMES[weight.name]}"] = weight
        elif layer.weights:
            raise TypeError(f"no torch name for the weights of layer {layer.name!r}")
    return variables


def load_torchvision_weights(backbone: TorchvisionResNet, source: str) -> None:
    """Loads pretrained weights into ``backbone`` (in place).

    ``source``: a torchvision ImageNet checkpoint (``resnet50-0676ba61.pth``...; read
    without torch, its classifier ``fc.*`` dropped), or a ``.weights.h5`` file written by
    ``python -m solo_tf.convert --backbone_only``. Raises FileNotFoundError or ValueError
    naming ``source`` (and the tensors) when it does not fit.
    """

    source = os.fspath(source)
    if not os.path.isfile(source):
        raise FileNotFoundError(f"backbone weights file {source!r} does not exist")
    if source.endswith(".h5"):
        try:
            backbone.load_weights(source)
        except Exception as err:  # Keras raises several types for a mismatched file
            raise ValueError(
                f"backbone weights file {source!r} does not fit a torchvision ResNet-"
                f"{backbone.depth} with stage widths {backbone.filters or STAGE_FILTERS}: {err}"
            ) from err
        return
    state = torch_checkpoint.load_state_dict(source)
    state = {k: v for k, v in state.items() if k not in CLASSIFIER_TENSORS}
    torch_weights.assign_torch_weights(torch_variables(backbone), state, source)
