"""Input normalisation inside the model, shared by both ResNet backbones.

Images enter the model as float32 RGB in [0, 255] (contract 5 of DESIGN.md).
"""

from __future__ import annotations

import keras
from keras import ops

# ImageNet statistics on [0, 255] RGB, as used by the authors' (torchvision-style) backbones.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
# input_normalization -> (mean, std) on [0, 255] RGB.
NORMALIZATIONS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "unit": ((0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
}


def check_normalization(input_normalization: str) -> None:
    """Raises ValueError unless ``input_normalization`` names an entry of NORMALIZATIONS."""
    if input_normalization not in NORMALIZATIONS:
        raise ValueError(
            f"input_normalization must be one of {sorted(NORMALIZATIONS)}, "
            f"got {input_normalization!r}"
        )


@keras.saving.register_keras_serializable(package="solo_tf")
class ImageNormalization(keras.layers.Layer):
    """(x - mean) / std per channel; computed in float32, returned in the compute dtype."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def call(self, images):  # [B, H, W, 3] -> [B, H, W, 3]
        x = ops.cast(images, "float32")
        x = (x - ops.convert_to_tensor(self.mean)) / ops.convert_to_tensor(self.std)
        return ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mean": self.mean, "std": self.std}
