"""Parameter counts of SOLOv2 R50 and SOLOv2-Light R50 (80 classes, the authors' configs),
against counts worked out from the layer shapes. Figures reported in docs/model.md."""

import pytest

from solo_tf.config import ModelConfig
from solo_tf.modeling.factory import build_model
from tests.modeling.test_param_counts import CLASSES, conv, fpn, gn, resnet50

F = 256  # FPN channels
MID = 128  # mask feature branch per-level convs


def tower(c_in, width, num_convs):
    return (
        conv(3, c_in, width, False)
        + gn(width)
        + (num_convs - 1) * (conv(3, width, width, False) + gn(width))
    )


def mask_feature_branch(e):
    """P2: 1 conv, P3: 1, P4: 2, P5: 3 (the first on F + 2 coordinate channels); 1x1 to E."""
    unit = conv(3, MID, MID, False) + gn(MID)
    first = conv(3, F, MID, False) + gn(MID)
    p5 = conv(3, F + 2, MID, False) + gn(MID) + 2 * unit
    return 3 * first + unit + p5 + conv(1, MID, e, False) + gn(e)


def head(width, num_convs, e):
    category = tower(F, width, num_convs) + conv(3, width, CLASSES, True)
    kernel = tower(F + 2, width, num_convs) + conv(3, width, e, True)
    return category + kernel + mask_feature_branch(e)


CASES = {  # name: (tower width, tower depth, E, head parameters worked out by hand)
    "solov2": (512, 4, 256, 19_740_496),
    "solov2_light": (256, 2, 128, 4_488_144),
}


def test_hand_worked_figures():
    # Mask feature branch (E = 256): 3 x (3*3*256*128 + 256) + (3*3*128*128 + 256)
    # + (3*3*258*128 + 256 + 2 * (3*3*128*128 + 256)) + 128*256 + 512.
    assert mask_feature_branch(256) == 1_659_392
    for width, num_convs, e, expected in CASES.values():
        assert head(width, num_convs, e) == expected


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.slow  # builds full ResNet-50 models
def test_r50_param_counts(name):
    width, num_convs, e, expected = CASES[name]
    config = ModelConfig(
        num_classes=CLASSES,
        head_type="solov2",
        head_channels=width,
        stacked_convs=num_convs,
        mask_feature_channels=e,
    )
    model = build_model(config)
    backbone_total, backbone_trainable = resnet50()
    assert model.fpn.count_params() == fpn()
    assert model.head.mask_feature_head.count_params() == mask_feature_branch(e)
    assert model.head.count_params() == expected
    assert model.count_params() == backbone_total + fpn() + expected
    trainable = sum(int(v.numpy().size) for v in model.trainable_weights)
    assert trainable == backbone_trainable + fpn() + expected
