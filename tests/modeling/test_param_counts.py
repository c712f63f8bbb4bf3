"""Parameter counts of SOLO R50 and Decoupled SOLO R50 (80 classes, default config), against
counts worked out from the layer shapes. Figures reported in docs/model.md. Both backbones
(torchvision's, the default, and keras-cv's) have the same weights: no conv biases."""

import pytest

from solo_tf.config import ModelConfig
from solo_tf.modeling.factory import build_model

F = 256  # FPN and head channels
GRIDS = (40, 36, 24, 16, 12)
CLASSES = 80


def conv(k, c_in, c_out, bias):
    return k * k * c_in * c_out + (c_out if bias else 0)


def bn(c):  # gamma, beta, moving mean, moving variance
    return 4 * c


def gn(c):  # gamma, beta
    return 2 * c


def resnet50():
    """(total, trainable with stem + stage 1 and every BatchNorm frozen)."""
    stem = conv(7, 3, 64, False) + bn(64)
    total, frozen_convs, bn_params = stem, conv(7, 3, 64, False), bn(64)
    c_in = 64
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True)):
        for block in range(blocks):
            convs = [conv(1, c_in, width, False), conv(3, width, width, False)]
            convs.append(conv(1, width, 4 * width, False))
            norms = [bn(width), bn(width), bn(4 * width)]
            if block == 0:  # projection shortcut
                convs.append(conv(1, c_in, 4 * width, False))
                norms.append(bn(4 * width))
            total += sum(convs) + sum(norms)
            bn_params += sum(norms)
            frozen_convs += sum(convs) if stage == 0 else 0
            c_in = 4 * width
    return total, total - bn_params - frozen_convs


def fpn():
    laterals = sum(conv(1, c, F, True) for c in (256, 512, 1024, 2048))
    return laterals + 4 * conv(3, F, F, True)


def tower(c_in, num_convs=7):
    return conv(3, c_in, F, False) + gn(F) + (num_convs - 1) * (conv(3, F, F, False) + gn(F))


def head(head_type):
    category = tower(F) + conv(3, F, CLASSES, True)
    if head_type == "vanilla":  # CoordConv x, y; 1x1 conv to S^2 per level
        return category + tower(F + 2) + sum(conv(1, F, s * s, True) for s in GRIDS)
    # Separate X and Y towers (one coordinate channel each), 3x3 conv to S per level.
    return category + 2 * tower(F + 1) + 2 * sum(conv(3, F, s, True) for s in GRIDS)


def test_resnet50_formula_matches_keras_cv_and_torchvision():
    # keras-cv's "resnet50" preset metadata; torchvision's resnet50: 25,557,032 parameters
    # - 2,049,000 of the fc classifier + 53,120 BatchNorm running statistics (buffers there).
    assert resnet50()[0] == 23_561_152 == 25_557_032 - 2_049_000 + 53_120


@pytest.mark.parametrize(
    "head_type, backbone_type",
    [("vanilla", "torchvision"), ("decoupled", "torchvision"), ("vanilla", "keras_cv")],
)
@pytest.mark.slow  # builds full ResNet-50 models
def test_r50_param_counts(head_type, backbone_type):
    config = ModelConfig(num_classes=CLASSES, head_type=head_type, backbone_type=backbone_type)
    model = build_model(config)
    backbone_total, backbone_trainable = resnet50()
    assert model.backbone.count_params() == backbone_total
    assert model.fpn.count_params() == fpn()
    assert model.head.count_params() == head(head_type)
    assert model.count_params() == backbone_total + fpn() + head(head_type)
    trainable = sum(int(v.numpy().size) for v in model.trainable_weights)
    assert trainable == backbone_trainable + fpn() + head(head_type)
