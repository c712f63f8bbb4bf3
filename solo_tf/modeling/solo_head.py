"""The SOLO head (vanilla: S^2 mask channels per level) and what both SOLO heads share.

Follows the authors' head: FPN levels are resized to the head strides (P2 bilinear down to
P3's size, P6 bilinear up to P5's size); the mask branch concatenates CoordConv channels,
runs ``stacked_convs`` 3x3 conv + GroupNorm + ReLU layers, upsamples x2 (bilinear) and
ends in a per-level conv; the category branch resizes the features to S x S (bilinear), runs
its own stacked convs and ends in a 3x3 conv to C classes. Towers are shared by all levels;
only the last mask conv is per level (S differs). Convs are initialised N(0, 0.01); the
last mask and category convs get the prior bias -log((1 - p) / p), as in the authors' code.
Outputs are raw logits, identical in training and inference.

Sub-layers are held in plain attributes (``conv_0``, ``mask_conv_3``...), not in lists:
``tf.train.Checkpoint`` (used by the training loop) does not follow Keras 3's tracked lists.

Shape letters: B batch, H W input size, F FPN channels, S grid size of a level, C classes,
Hm Wm mask size of a level (input size / (head stride / 2)).
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from solo_tf.modeling.normalization import FusedGroupNormalization


def _normal_init():
    return keras.initializers.RandomNormal(stddev=0.01)


def prior_bias(prior_prob: float) -> float:
    """Bias that makes sigmoid(logit) == prior_prob for a zero input."""
    return -math.log((1.0 - prior_prob) / prior_prob)


def resize_bilinear(x, size):
    """Bilinear resize (half-pixel centres, no antialias) keeping the input dtype."""
    return tf.cast(tf.image.resize(x, size, method="bilinear"), x.dtype)


def upsample2x(x):
    """Bilinear x2 upsampling of [B, h, w, *] -> [B, 2h, 2w, *]."""
    return resize_bilinear(x, tf.shape(x)[1:3] * 2)


def coordinate_channels(features, axes: str = "xy"):
    """CoordConv channels of ``features`` [B, H, W, F]: x then y in [-1, 1] -> [B, H, W, k].

    x runs from -1 (left column) to 1 (right column), y from -1 (top row) to 1 (bottom).
    Built from tf.range (a TFLite builtin) rather than linspace.
    """
    shape = tf.shape(features)
    b, h, w = shape[0], shape[1], shape[2]

    def ramp(n):  # [n] evenly spaced in [-1, 1] (just -1 when n == 1)
        steps = tf.cast(tf.range(n), tf.float32)
        return steps * 2.0 / tf.cast(tf.maximum(n - 1, 1), tf.float32) - 1.0

    channels = []
    if "x" in axes:
        channels.append(tf.broadcast_to(ramp(w)[None, None, :, None], [b, h, w, 1]))
    if "y" in axes:
        channels.append(tf.broadcast_to(ramp(h)[None, :, None, None], [b, h, w, 1]))
    return tf.cast(tf.concat(channels, axis=-1), features.dtype)


@keras.saving.register_keras_serializable(package="solo_tf")
class ConvGNTower(keras.layers.Layer):
    """``num_convs`` x (3x3 conv without bias, GroupNorm, ReLU): [B, h, w, *] -> [B, h, w, F]."""

    def __init__(self, num_convs: int, channels: int, norm_groups: int, **kwargs):
        super().__init__(**kwargs)
        self.num_convs = num_convs
        self.channels = channels
        self.norm_groups = norm_groups
        for i in range(num_convs):
            conv = keras.layers.Conv2D(
                channels,
                3,
                padding="same",
                use_bias=False,
                kernel_initializer=_normal_init(),
                name=f"conv_{i}",
            )
            setattr(self, f"conv_{i}", conv)
            norm = FusedGroupNormalization(norm_groups, epsilon=1e-5, name=f"gn_{i}")
            setattr(self, f"gn_{i}", norm)

    @property
    def convs(self) -> list:
        return [getattr(self, f"conv_{i}") for i in range(self.num_convs)]

    @property
    def norms(self) -> list:
        return [getattr(self, f"gn_{i}") for i in range(self.num_convs)]

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            conv.build(shape)
            shape = shape[:-1] + (self.channels,)
            norm.build(shape)
        self.built = True

    def call(self, x):
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = tf.nn.relu(norm(conv(x)))
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.channels,)

    def get_config(self):
        return {
            **super().get_config(),
            "num_convs": self.num_convs,
            "channels": self.channels,
            "norm_groups": self.norm_groups,
        }


class SOLOHeadBase(keras.layers.Layer):
    """Level resizing and the category branch; subclasses add the mask branch.

    Input: {"P2".."P6"} FPN features [B, H/2^k, W/2^k, F]. Output: the dict of section 4 of
    docs/architecture.md (``cate_logits_{l}`` [B, S_l, S_l, C] plus the mask logits).
    """

    def __init__(
        self,
        num_classes: int,
        num_grids=(40, 36, 24, 16, 12),
        strides=(8, 8, 16, 32, 32),
        head_channels: int = 256,
        stacked_convs: int = 7,
        norm_groups: int = 32,
        prior_prob: float = 0.01,
        coord_conv: bool = True,
        min_level: int = 2,
        mask_prior_prob: float = 0.01,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if len(num_grids) != len(strides):
            raise ValueError(f"num_grids {num_grids} and strides {strides} differ in length")
        self.num_classes = num_classes
        self.num_grids = tuple(int(s) for s in num_grids)
        self.strides = tuple(int(s) for s in strides)
        self.head_channels = head_channels
        self.stacked_convs = stacked_convs
        self.norm_groups = norm_groups
        self.prior_prob = prior_prob
        self.mask_prior_prob = mask_prior_prob
        self.coord_conv = coord_conv
        self.min_level = min_level
        self.cate_tower = ConvGNTower(stacked_convs, head_channels, norm_groups, name="cate_tower")
        self.cate_conv = keras.layers.Conv2D(
            num_classes,
            3,
            padding="same",
            kernel_initializer=_normal_init(),
            bias_initializer=keras.initializers.Constant(prior_bias(prior_prob)),
            name="cate_conv",
        )

    @property
    def num_levels(self) -> int:
        return len(self.num_grids)

    def level_features(self, features) -> list:
        """Level l's FPN feature resized to the size of the FPN level of stride strides[l]."""
        levels = []
        for level, stride in enumerate(self.strides):
            source = f"P{self.min_level + level}"
            target = f"P{int(round(math.log2(stride)))}"
            x = features[source]
            if target != source:
                x = resize_bilinear(x, tf.shape(features[target])[1:3])
            levels.append(x)
        return levels

    def category_logits(self, x, num_grid: int):
        """[B, h, w, F] -> [B, S, S, C]."""
        x = resize_bilinear(x, (num_grid, num_grid))
        return self.cate_conv(self.cate_tower(x))

    def build(self, input_shape):
        channels = input_shape[f"P{self.min_level}"][-1]
        self.cate_tower.build((None, None, None, channels))
        self.cate_conv.build((None, None, None, self.head_channels))
        self.build_mask_branch(channels)
        self.built = True

    def build_mask_branch(self, channels: int) -> None:
        """Creates the mask-branch weights for FPN features of ``channels``."""
        raise NotImplementedError

    def mask_logits(self, level: int, x) -> dict:
        """[B, h, w, F] -> {output name: [B, 2h, 2w, *]}; implemented by each head."""
        raise NotImplementedError

    def lazy_mask_outputs(self, level: int, x) -> dict:
        """What inference needs to compute the masks of chosen cells only (``lazy_masks``).

        The default is the mask logits themselves; the vanilla head overrides it."""
        return self.mask_logits(level, x)

    def call(self, features, lazy_masks: bool = False):
        """``lazy_masks=True`` (inference): ``lazy_mask_outputs`` instead of the mask logits."""
        outputs = {}
        for level, x in enumerate(self.level_features(features)):
            outputs[f"cate_logits_{level}"] = self.category_logits(x, self.num_grids[level])
            masks = self.lazy_mask_outputs if lazy_masks else self.mask_logits
            outputs.update(masks(level, x))
        return outputs

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "num_grids": self.num_grids,
            "strides": self.strides,
            "head_channels": self.head_channels,
            "stacked_convs": self.stacked_convs,
            "norm_groups": self.norm_groups,
            "prior_prob": self.prior_prob,
            "mask_prior_prob": self.mask_prior_prob,
            "coord_conv": self.coord_conv,
            "min_level": self.min_level,
        }


@keras.saving.register_keras_serializable(package="solo_tf")
class SOLOHead(SOLOHeadBase):
    """Vanilla SOLO: ``mask_logits_{l}`` [B, Hm, Wm, S^2], channel k = i * S + j."""

    def __init__(self, num_classes: int, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.mask_tower = ConvGNTower(
            self.stacked_convs, self.head_channels, self.norm_groups, name="mask_tower"
        )
        for level, grid in enumerate(self.num_grids):
            conv = keras.layers.Conv2D(
                grid * grid,
                1,
                kernel_initializer=_normal_init(),
                bias_initializer=keras.initializers.Constant(prior_bias(self.mask_prior_prob)),
                name=f"mask_conv_{level}",
            )
            setattr(self, f"mask_conv_{level}", conv)

    @property
    def mask_convs(self) -> list:
        return [getattr(self, f"mask_conv_{level}") for level in range(self.num_levels)]

    def build_mask_branch(self, channels: int) -> None:
        self.mask_tower.build((None, None, None, channels + (2 if self.coord_conv else 0)))
        for conv in self.mask_convs:
            conv.build((None, None, None, self.head_channels))

    def mask_features(self, x):
        """[B, h, w, F] FPN level -> [B, Hm, Wm, F]: the input of the last (1x1) mask conv."""
        if self.coord_conv:
            x = tf.concat([x, coordinate_channels(x, "xy")], axis=-1)  # [B, h, w, F + 2]
        return upsample2x(self.mask_tower(x))

    def mask_logits(self, level: int, x) -> dict:
        return {f"mask_logits_{level}": self.mask_convs[level](self.mask_features(x))}

    def lazy_mask_outputs(self, level: int, x) -> dict:
        """``mask_features_{l}`` [B, Hm, Wm, F] and the last conv's ``mask_kernel_{l}``
        [F, S^2] and ``mask_bias_{l}`` [S^2] (no batch axis), in the features' dtype.

        The last mask conv is 1x1, so channel k of the logits is features . kernel[:, k] +
        bias[k]: inference computes only the channels of its candidates
        (``solo_tf.cell_masks``) instead of all S^2 (1600 at level 0 for the default grids,
        a [B, 200, 336, 1600] tensor at 800 x 1344).
        """
        features = self.mask_features(x)
        conv = self.mask_convs[level]
        kernel = keras.ops.convert_to_tensor(conv.kernel)[0, 0]  # [F, S^2]
        return {
            f"mask_features_{level}": features,
            f"mask_kernel_{level}": tf.cast(kernel, features.dtype),
            f"mask_bias_{level}": tf.cast(keras.ops.convert_to_tensor(conv.bias), features.dtype),
        }
