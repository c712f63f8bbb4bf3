"""The SOLOv2 head: per-cell dynamic mask kernels and one shared stride-4 mask feature map.

Follows the authors' ``SOLOv2Head`` (WXinlong/SOLO, ``mmdet/models/anchor_heads/
solov2_head.py``) and ``MaskFeatHead``:
- levels: the five head levels of ``SOLOHeadBase.level_features`` (P2 resized to P3's size,
  P3, P4, P5, P6 resized to P5's size);
- kernel branch: the two CoordConv channels concatenated at the level's resolution, then the
  whole map bilinearly resized to S x S (so the coordinates are resized with the features, as
  in the authors' code), ``stacked_convs`` x (3x3 conv, GroupNorm, ReLU) whose first conv sees
  F + 2 channels, and a 3x3 conv (with bias) to E: one 1x1xE kernel per grid cell. Nothing is
  upsampled here (the authors compute an ``upsampled_size`` in ``forward`` but never use it);
- category branch: the same resized map without the coordinate channels, its own tower, a
  3x3 conv to C with the prior bias (``SOLOHeadBase``);
- mask feature branch: ``MaskFeatureHead`` on P2-P5 -> [B, H/4, W/4, E].
Every conv is initialised N(0, 0.01); the kernel conv's bias starts at 0 and the category
conv's at the prior bias, as in the authors' ``init_weights``. ``mask_prior_prob`` is not
used (the mask is sigmoid(kernel . features) with no bias).

The mask of cell k of level l is sigmoid(kernel_preds_l[b, i, j] . mask_features[b]) at
stride 4: ``solo_tf.cell_masks`` computes it as a matmul for chosen cells only, never as a
convolution with run-time weights.

Weight names for a converter from the authors' checkpoints (``bbox_head.`` prefix):
``kernel_convs.{i}.conv.weight`` -> ``kernel_tower/conv_{i}/kernel``, ``kernel_convs.{i}.gn.*``
-> ``kernel_tower/gn_{i}/{gamma,beta}``, ``cate_convs.{i}.*`` -> ``cate_tower/...`` likewise,
``solo_kernel.{weight,bias}`` -> ``kernel_conv/{kernel,bias}``, ``solo_cate.*`` ->
``cate_conv/*``; ``mask_feat_head.*`` -> ``mask_feature_head/...`` (see that module).

Shape letters: B batch, H W input size, F FPN channels, S grid size of a level, C classes,
E mask feature (= kernel) channels.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from solo_tf.modeling.mask_feature_head import MaskFeatureHead
from solo_tf.modeling.solo_head import (
    ConvGNTower,
    SOLOHeadBase,
    _normal_init,
    coordinate_channels,
    resize_bilinear,
)


@keras.saving.register_keras_serializable(package="solo_tf")
class SOLOv2Head(SOLOHeadBase):
    """{"P2".."P6"} -> ``cate_logits_{l}`` [B, S, S, C], ``kernel_preds_{l}`` [B, S, S, E] and
    ``mask_features`` [B, H/4, W/4, E] (docs/architecture.md section 4).

    ``head_channels`` and ``stacked_convs`` size the kernel and category towers (the authors'
    ``seg_feat_channels`` and ``stacked_convs``: 512 and 4, Light 256 and 2).

    Args:
      mask_feature_channels: E (the authors' ``ins_out_channels``: 256, Light 128).
      mask_feature_mid: channels of the mask feature branch's per-level convs (128).
      Others: as ``SOLOHeadBase``.
    """

    def __init__(
        self,
        num_classes: int,
        mask_feature_channels: int = 256,
        mask_feature_mid: int = 128,
        **kwargs,
    ):
        super().__init__(num_classes, **kwargs)
        self.mask_feature_channels = mask_feature_channels
        self.mask_feature_mid = mask_feature_mid
        self.kernel_tower = ConvGNTower(
            self.stacked_convs, self.head_channels, self.norm_groups, name="kernel_tower"
        )
        self.kernel_conv = keras.layers.Conv2D(
            mask_feature_channels,
            3,
            padding="same",
            kernel_initializer=_normal_init(),
            bias_initializer="zeros",
            name="kernel_conv",
        )
        self.mask_feature_head = MaskFeatureHead(
            out_channels=mask_feature_channels,
            mid_channels=mask_feature_mid,
            norm_groups=self.norm_groups,
            coord_conv=self.coord_conv,
            min_level=self.min_level,
            name="mask_feature_head",
        )

    def build(self, input_shape):
        super().build(input_shape)
        self.mask_feature_head.build(input_shape)

    def build_mask_branch(self, channels: int) -> None:
        self.kernel_tower.build((None, None, None, channels + (2 if self.coord_conv else 0)))
        self.kernel_conv.build((None, None, None, self.head_channels))

    def grid_outputs(self, level: int, x) -> dict:
        """One level [B, h, w, F] -> ``cate_logits_{l}`` [B, S, S, C], ``kernel_preds_{l}``
        [B, S, S, E]."""
        num_grid = self.num_grids[level]
        channels = x.shape[-1]
        if self.coord_conv:
            x = tf.concat([x, coordinate_channels(x, "xy")], axis=-1)  # [B, h, w, F + 2]
        x = resize_bilinear(x, (num_grid, num_grid))  # [B, S, S, F (+ 2)]
        cate = self.cate_conv(self.cate_tower(x[..., :channels]))
        return {
            f"cate_logits_{level}": cate,
            f"kernel_preds_{level}": self.kernel_conv(self.kernel_tower(x)),
        }

    def call(self, features, lazy_masks: bool = False):
        """``lazy_masks`` changes nothing: the masks are always left to the consumer."""
        del lazy_masks
        outputs = {}
        for level, x in enumerate(self.level_features(features)):
            outputs.update(self.grid_outputs(level, x))
        outputs["mask_features"] = self.mask_feature_head(features)
        return outputs

    def get_config(self):
        return {
            **super().get_config(),
            "mask_feature_channels": self.mask_feature_channels,
            "mask_feature_mid": self.mask_feature_mid,
        }
