"""The tiny model configuration shared by the modeling tests (ResNet-18, 16 channels)."""

import dataclasses

from solo_tf.config import ModelConfig

TINY = ModelConfig(
    num_classes=3,
    backbone_depth=18,
    fpn_channels=16,
    head_channels=16,
    stacked_convs=2,
    norm_groups=4,
    num_grids=(8, 6, 4, 3, 2),
)


def tiny_config(**overrides) -> ModelConfig:
    return dataclasses.replace(TINY, **overrides)
