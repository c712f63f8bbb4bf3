"""Input normalisation inside the model, shared by both ResNet backbones.

Images enter the model as float32 RGB in [0, 255] (contract 5 of DESIGN.md).
"""

from __future__ import annotations

import keras
import tensorflow as tf
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


def _fused_ok(layer, inputs, training, mask) -> bool:
    """Whether ``FusedBatchNormalization`` can take TF's fused kernel for this call."""
    rank = len(inputs.shape)
    return bool(
        training
        and layer.trainable
        and mask is None
        and not layer.renorm
        and layer.center
        and layer.scale
        and rank == 4
        and layer.axis in (-1, rank - 1)
        and keras.backend.backend() == "tensorflow"
    )


@keras.saving.register_keras_serializable(package="solo_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` whose training step runs TF's fused kernel.

    Keras 3 normalises a training batch with separate ops: it casts the whole activation to
    float32, takes its moments in two passes and normalises in float32 before casting back,
    forward and backward. ``FusedBatchNormV3`` (oneDNN's kernel on CPU, cuDNN's on GPU) reads a
    bfloat16 or float32 activation once for its statistics and once to normalise, accumulating
    in float32, and has a fused gradient. Measured on the demo recipe (a narrow ResNet-18, 8
    images of 352 x 352, bfloat16, 2-core AVX-512 BF16 CPU): the whole training step
    621 ms -> 470 ms (``benchmarks.fused_norm``, docs/benchmarks.md).

    Same weights, same maths: the batch mean and biased variance normalise the batch and
    update the moving statistics with Keras's momentum (the fused kernel's variance output
    has Bessel's correction, undone here). Inference, frozen layers (``trainable=False``),
    masks, renorm and layouts other than channels-last 4-D fall back to Keras's own ``call``,
    so exported graphs are unchanged.
    """

    def call(self, inputs, training=None, mask=None):
        if not _fused_ok(self, inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            tf.convert_to_tensor(self.gamma),
            tf.convert_to_tensor(self.beta),
            epsilon=self.epsilon,
            is_training=True,
        )
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
        variance = variance * (count - 1.0) / tf.maximum(count, 1.0)  # biased, as Keras's
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
        )
        return ops.cast(y, self.compute_dtype)


@keras.saving.register_keras_serializable(package="solo_tf")
class FusedGroupNormalization(keras.layers.GroupNormalization):
    """``keras.layers.GroupNormalization`` whose training step runs TF's fused batch-norm kernel.

    Group normalisation of x [N, H, W, C] in G groups is batch normalisation of the same
    values viewed as [1, H*W, C/G, N*G]: one "channel" per (image, group), normalised over its
    H*W*C/G values. The view costs a transpose each way, but ``FusedBatchNormV3`` reads the
    activation twice with float32 accumulation, where Keras casts it to float32, takes two
    passes for its moments and two more to normalise, each with its gradient: 17.0 ms against
    29.5 ms forward+backward for [8, 88, 88, 48] in bfloat16 on a 2-core AVX-512 BF16 CPU
    (``benchmarks.fused_norm``).
    The per-channel gamma and beta follow in float32.

    Training calls only (``training=True``, 4-D channels-last, centre and scale on, the
    TensorFlow backend); inference, and so every exported graph, is Keras's own ``call``.
    """

    def call(self, inputs, training=None):
        rank = len(inputs.shape)
        if not (
            training
            and rank == 4
            and self.axis in (-1, 3)
            and self.center
            and self.scale
            and keras.backend.backend() == "tensorflow"
        ):
            return super().call(inputs)
        shape = tf.shape(inputs)
        n, h, w, c = shape[0], shape[1], shape[2], inputs.shape[-1]
        per_group = c // self.groups
        view = tf.reshape(inputs, [n, h * w, self.groups, per_group])
        view = tf.transpose(view, [1, 3, 0, 2])  # [H*W, C/G, N, G]
        view = tf.reshape(view, [1, h * w, per_group, n * self.groups])
        ones = tf.ones([n * self.groups], tf.float32)
        normalised, _, _ = tf.compat.v1.nn.fused_batch_norm(
            view, ones, tf.zeros_like(ones), epsilon=self.epsilon, is_training=True
        )
        normalised = tf.reshape(normalised, [h * w, per_group, n, self.groups])
        normalised = tf.reshape(tf.transpose(normalised, [2, 0, 3, 1]), shape)
        out = tf.cast(normalised, tf.float32) * self.gamma + self.beta
        return ops.cast(out, self.compute_dtype)
