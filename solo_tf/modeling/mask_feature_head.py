"""SOLOv2's mask feature branch: FPN P2-P5 fused into one stride-4 map of E channels.

Follows the authors' ``MaskFeatHead`` (WXinlong/SOLO, ``mmdet/models/mask_heads/
mask_feat_head.py``, ``start_level=0, end_level=3``): input level i (P2 + i, stride 4 * 2^i)
runs max(i, 1) units of 3x3 conv (no bias) + GroupNorm + ReLU, each but P2's followed by a
bilinear x2 upsampling (half-pixel centres, torch's ``align_corners=False``), so every level
ends at stride 4 with ``mid_channels``; the coarsest input (P5) gets the two CoordConv
channels (x, y in [-1, 1]) before its first conv. The four maps are summed, then a 1x1 conv
(no bias) + GroupNorm + ReLU gives the E ``out_channels``. Convs are initialised N(0, 0.01).

Weight names follow the authors' so a converter is a rename and a transpose:
``convs_all_levels.{i}.conv{j}.conv.weight`` -> ``level_{i}_conv_{j}/kernel``,
``convs_all_levels.{i}.conv{j}.gn.{weight,bias}`` -> ``level_{i}_gn_{j}/{gamma,beta}``,
``conv_pred.0.conv.weight`` -> ``pred_conv/kernel``, ``conv_pred.0.gn.*`` -> ``pred_gn/*``.

Shape letters: B batch, H W input size, F FPN channels, M ``mid_channels``, E
``out_channels``.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from solo_tf.modeling.normalization import FusedGroupNormalization
from solo_tf.modeling.solo_head import _normal_init, coordinate_channels, upsample2x


@keras.saving.register_keras_serializable(package="solo_tf")
class MaskFeatureHead(keras.layers.Layer):
    """{"P2".."P5"} FPN features [B, H/2^k, W/2^k, F] -> mask features [B, H/4, W/4, E].

    Args:
      out_channels: E, the channels of the mask features (and of each dynamic kernel).
      mid_channels: M, the channels of the per-level convs (the authors: 128).
      norm_groups: GroupNorm groups of every conv.
      coord_conv: concatenate the coordinate channels to the coarsest level.
      num_levels: inputs P{min_level} .. P{min_level + num_levels - 1} (the authors: 4).
      min_level: the finest input level (2: stride 4).
    """

    def __init__(
        self,
        out_channels: int = 256,
        mid_channels: int = 128,
        norm_groups: int = 32,
        coord_conv: bool = True,
        num_levels: int = 4,
        min_level: int = 2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.out_channels = out_channels
        self.mid_channels = mid_channels
        self.norm_groups = norm_groups
        self.coord_conv = coord_conv
        self.num_levels = num_levels
        self.min_level = min_level
        # Plain attributes, not lists: tf.train.Checkpoint does not follow Keras 3's lists.
        for level in range(num_levels):
            for unit in range(self.num_units(level)):
                conv = keras.layers.Conv2D(
                    mid_channels,
                    3,
                    padding="same",
                    use_bias=False,
                    kernel_initializer=_normal_init(),
                    name=f"level_{level}_conv_{unit}",
                )
                setattr(self, f"level_{level}_conv_{unit}", conv)
                norm = FusedGroupNormalization(
                    norm_groups, epsilon=1e-5, name=f"level_{level}_gn_{unit}"
                )
                setattr(self, f"level_{level}_gn_{unit}", norm)
        self.pred_conv = keras.layers.Conv2D(
            out_channels, 1, use_bias=False, kernel_initializer=_normal_init(), name="pred_conv"
        )
        self.pred_gn = FusedGroupNormalization(norm_groups, epsilon=1e-5, name="pred_gn")

    @staticmethod
    def num_units(level: int) -> int:
        """Conv units of input ``level``: one for P2 (no upsampling), ``level`` otherwise."""
        return max(level, 1)

    def units(self, level: int) -> list:
        """[(conv, norm)] of input ``level``."""
        return [
            (getattr(self, f"level_{level}_conv_{u}"), getattr(self, f"level_{level}_gn_{u}"))
            for u in range(self.num_units(level))
        ]

    def _uses_coords(self, level: int) -> bool:
        return self.coord_conv and level == self.num_levels - 1

    def build(self, input_shape):
        channels = input_shape[f"P{self.min_level}"][-1]
        for level in range(self.num_levels):
            shape = (None, None, None, channels + (2 if self._uses_coords(level) else 0))
            for conv, norm in self.units(level):
                conv.build(shape)
                shape = (None, None, None, self.mid_channels)
                norm.build(shape)
        self.pred_conv.build((None, None, None, self.mid_channels))
        self.pred_gn.build((None, None, None, self.out_channels))
        self.built = True

    def call(self, features):
        fused = None
        for level in range(self.num_levels):
            x = features[f"P{self.min_level + level}"]  # [B, H / 2^(2+l), W / 2^(2+l), F]
            if self._uses_coords(level):
                x = tf.concat([x, coordinate_channels(x, "xy")], axis=-1)  # [..., F + 2]
            for conv, norm in self.units(level):
                x = tf.nn.relu(norm(conv(x)))
                if level > 0:
                    x = upsample2x(x)
            fused = x if fused is None else fused + x  # [B, H/4, W/4, M]
        return tf.nn.relu(self.pred_gn(self.pred_conv(fused)))  # [B, H/4, W/4, E]

    def compute_output_shape(self, input_shape):
        shape = input_shape[f"P{self.min_level}"]
        return tuple(shape[:-1]) + (self.out_channels,)

    def get_config(self):
        return {
            **super().get_config(),
            "out_channels": self.out_channels,
            "mid_channels": self.mid_channels,
            "norm_groups": self.norm_groups,
            "coord_conv": self.coord_conv,
            "num_levels": self.num_levels,
            "min_level": self.min_level,
        }
