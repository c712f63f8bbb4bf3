"""Decoupled SOLO head: S "X" and S "Y" mask channels per level instead of S^2.

mask(i, j) = sigmoid(Y_i) * sigmoid(X_j). As in the authors' Decoupled SOLO head, X and Y
have separate mask towers; the X tower sees the x coordinate channel and the Y tower the y
channel (CoordConv), and each ends in a per-level 3x3 conv to S channels. With
``shared_tower`` (the authors' Decoupled SOLO Light) one tower sees both coordinate channels
and feeds both the X and the Y convs. The category branch is the one of ``SOLOHeadBase``.

Shape letters: B batch, F FPN channels, S grid size of a level, Hm Wm mask size of a level.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from solo_tf.modeling.solo_head import (
    ConvGNTower,
    SOLOHeadBase,
    _normal_init,
    coordinate_channels,
    prior_bias,
    upsample2x,
)


@keras.saving.register_keras_serializable(package="solo_tf")
class DecoupledSOLOHead(SOLOHeadBase):
    """``mask_x_logits_{l}`` and ``mask_y_logits_{l}`` [B, Hm, Wm, S] (X: columns j, Y: rows i)."""

    def __init__(self, num_classes: int, shared_tower: bool = False, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.shared_tower = shared_tower
        # The mask is a product of two sigmoids: each factor starts at sqrt(mask_prior_prob)
        # so that the product starts where the vanilla head's mask does. (The authors give
        # each factor the prior, so the product starts at 1e-4 and Dice gradients are ~100x
        # smaller than the vanilla head's; from scratch it does not leave Dice = 1.)
        factor_bias = prior_bias(self.mask_prior_prob**0.5)
        # Plain attributes, not containers: see the solo_head module docstring.
        for axis in self.tower_names:
            tower = ConvGNTower(
                self.stacked_convs, self.head_channels, self.norm_groups, name=f"mask_tower{axis}"
            )
            setattr(self, f"mask_tower{axis}", tower)
        for axis in ("x", "y"):
            for level, s in enumerate(self.num_grids):
                conv = keras.layers.Conv2D(
                    s,
                    3,
                    padding="same",
                    kernel_initializer=_normal_init(),
                    bias_initializer=keras.initializers.Constant(factor_bias),
                    name=f"mask_conv_{axis}_{level}",
                )
                setattr(self, f"mask_conv_{axis}_{level}", conv)

    @property
    def tower_names(self) -> tuple:
        """Suffixes of the mask towers: "_x" and "_y", or "_xy" for the one shared tower."""
        return ("_xy",) if self.shared_tower else ("_x", "_y")

    def mask_tower(self, axis: str) -> ConvGNTower:
        """The tower of ``axis`` ("x" or "y"; the shared one for both with ``shared_tower``)."""
        return getattr(self, "mask_tower_xy" if self.shared_tower else f"mask_tower_{axis}")

    def mask_conv(self, axis: str, level: int) -> keras.layers.Conv2D:
        return getattr(self, f"mask_conv_{axis}_{level}")

    def build_mask_branch(self, channels: int) -> None:
        coords = (2 if self.shared_tower else 1) if self.coord_conv else 0
        for name in self.tower_names:
            getattr(self, f"mask_tower{name}").build((None, None, None, channels + coords))
        for axis in ("x", "y"):
            for level in range(self.num_levels):
                self.mask_conv(axis, level).build((None, None, None, self.head_channels))

    def mask_logits(self, level: int, x) -> dict:
        if self.shared_tower:
            if self.coord_conv:
                x = tf.concat([x, coordinate_channels(x, "xy")], axis=-1)  # [B, h, w, F + 2]
            feats = upsample2x(self.mask_tower("x")(x))  # [B, Hm, Wm, F]
            return {
                f"mask_{axis}_logits_{level}": self.mask_conv(axis, level)(feats)
                for axis in ("x", "y")
            }
        outputs = {}
        for axis in ("x", "y"):
            inputs = x
            if self.coord_conv:
                inputs = tf.concat([x, coordinate_channels(x, axis)], axis=-1)  # [B, h, w, F + 1]
            feats = upsample2x(self.mask_tower(axis)(inputs))  # [B, Hm, Wm, F]
            outputs[f"mask_{axis}_logits_{level}"] = self.mask_conv(axis, level)(feats)
        return outputs

    def get_config(self):
        return {**super().get_config(), "shared_tower": self.shared_tower}
