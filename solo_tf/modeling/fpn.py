"""Feature pyramid network (Lin et al. 2017) as in the SOLO reference configs.

mmdetection's FPN with ``num_outs=5`` and no extra convs: 1x1 lateral convs on C2-C5, a
nearest-neighbour top-down path, 3x3 output convs, and P6 taken from the P5 output by a
stride-2 max-pool of size 1 (plain subsampling).

Shape letters: B batch, H W input height/width (multiples of 32), F ``channels``.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="solo_tf")
class FPN(keras.layers.Layer):
    """{"P2".."P5"} backbone features -> {"P2".."P6"}, each [B, H/2^k, W/2^k, F].

    Args:
      channels: F, output channels of every level.
      min_level, max_level: the backbone levels taken as input (P2-P5).
      num_extra_levels: levels added above ``max_level`` by stride-2 max-pool (1: P6).
    """

    def __init__(
        self,
        channels: int = 256,
        min_level: int = 2,
        max_level: int = 5,
        num_extra_levels: int = 1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.channels = channels
        self.min_level = min_level
        self.max_level = max_level
        self.num_extra_levels = num_extra_levels
        self.level_names = [f"P{k}" for k in range(min_level, max_level + 1)]
        # One attribute per conv (not a list): tf.train.Checkpoint does not see Keras 3's
        # tracked lists, only attributes.
        for name in self.level_names:
            lateral = keras.layers.Conv2D(channels, 1, name=f"lateral_{name}")
            output = keras.layers.Conv2D(channels, 3, padding="same", name=f"output_{name}")
            setattr(self, f"lateral_{name}", lateral)
            setattr(self, f"output_{name}", output)
        self.upsample = keras.layers.UpSampling2D(2, interpolation="nearest")
        self.extra_pool = keras.layers.MaxPooling2D(pool_size=1, strides=2)

    @property
    def lateral_convs(self) -> list:
        return [getattr(self, f"lateral_{name}") for name in self.level_names]

    @property
    def output_convs(self) -> list:
        return [getattr(self, f"output_{name}") for name in self.level_names]

    def build(self, input_shape):
        for name, lateral, output in zip(
            self.level_names, self.lateral_convs, self.output_convs, strict=True
        ):
            lateral.build(input_shape[name])
            output.build(tuple(input_shape[name][:-1]) + (self.channels,))
        self.built = True

    def call(self, features):
        laterals = [
            conv(features[n]) for conv, n in zip(self.lateral_convs, self.level_names, strict=True)
        ]
        for i in range(len(laterals) - 1, 0, -1):  # top-down: coarse to fine
            laterals[i - 1] = laterals[i - 1] + self.upsample(laterals[i])
        outputs = {
            name: conv(x)
            for name, conv, x in zip(self.level_names, self.output_convs, laterals, strict=True)
        }
        top = self.max_level
        for k in range(1, self.num_extra_levels + 1):
            outputs[f"P{top + k}"] = self.extra_pool(outputs[f"P{top + k - 1}"])
        return outputs

    def compute_output_shape(self, input_shape):
        shapes = {n: tuple(input_shape[n][:-1]) + (self.channels,) for n in self.level_names}
        top = self.max_level
        half = lambda d: None if d is None else (d + 1) // 2
        for k in range(1, self.num_extra_levels + 1):
            b, h, w, _ = shapes[f"P{top + k - 1}"]
            shapes[f"P{top + k}"] = (b, half(h), half(w), self.channels)
        return shapes

    def get_config(self):
        return {
            **super().get_config(),
            "channels": self.channels,
            "min_level": self.min_level,
            "max_level": self.max_level,
            "num_extra_levels": self.num_extra_levels,
        }
