"""Input geometry: the padded size of a resized image, the padding colour, batch padding.

``DataConfig.pad_mode`` chooses between two geometries for the same resize (short side,
long-side cap; ``augment.scaled_size``):

* ``multiple`` (the authors' mmdetection pipeline: ``Pad(size_divisor=32)`` after
  ``Normalize``): each image is padded at the bottom/right to the next multiple of 32, a
  training batch to its largest image, and evaluation runs on images of one padded size at a
  time (``group_by_padded_size``), so each image sees exactly its own padded canvas, as when
  the authors test one image at a time. The grid and the CoordConv channels span that canvas.
* ``canvas``: every image is padded to the fixed ``DataConfig.output_size``, for what needs
  one shape (XLA's ``--jit_compile``, TPUs, TFLite). The canvas never shrinks an image below
  its resized size: one that does not fit is refused with an error that names both sizes
  (``padded_size``); raise ``--output_size`` or use ``multiple``.

Padding is the mean colour of the model's input normalisation (``pad_colour``), so that it is
0 after normalisation, as when the authors normalise and then pad with 0. Training images are
padded once per batch by ``fill_padding``, from each image's ``image_info``.

Shape letters: B batch, h w a resized image, H W the padded size.
"""

from __future__ import annotations

import tensorflow as tf

from solo_tf.config import DataConfig
from solo_tf.modeling.normalization import NORMALIZATIONS, check_normalization

SIZE_DIVISOR = 32  # the backbone's largest stride
IMAGENET_MEAN = NORMALIZATIONS["imagenet"][0]  # the padding of the default normalisation


def pad_colour(input_normalization: str) -> tuple[float, float, float]:
    """The RGB value in [0, 255] that the model's normalisation maps to 0: its mean."""
    check_normalization(input_normalization)
    return tuple(float(v) for v in NORMALIZATIONS[input_normalization][0])


def round_up(size_hw: tf.Tensor) -> tf.Tensor:
    """int32 [2]: ``size_hw`` rounded up to multiples of ``SIZE_DIVISOR``."""
    size = tf.cast(size_hw, tf.int32)
    return -(-size // SIZE_DIVISOR) * SIZE_DIVISOR


def padded_size(size_hw: tf.Tensor, config: DataConfig) -> tf.Tensor:
    """int32 [2]: the padded (H, W) of an image resized to ``size_hw`` (float32 [2]).

    ``multiple``: rounded up to 32. ``canvas``: ``config.output_size``, after checking that
    the image fits (an ``InvalidArgumentError`` otherwise; the canvas never shrinks it).
    """
    if config.pad_mode == "multiple":
        return round_up(size_hw)
    canvas = tf.constant(config.output_size, tf.int32)
    height, width = config.output_size
    check = tf.debugging.assert_less_equal(
        tf.cast(size_hw, tf.int32),
        canvas,
        message=(
            f"an image resized to the (height, width) below does not fit the canvas "
            f"--output_size={height},{width} (--pad_mode=canvas pads, it never shrinks): raise "
            "--output_size to the largest resized size, or use --pad_mode=multiple"
        ),
    )
    with tf.control_dependencies([check]):
        return tf.identity(canvas)


def static_size(config: DataConfig) -> list[int | None]:
    """The static [H, W] of padded images: the canvas, or [None, None] for ``multiple``."""
    if config.pad_mode == "multiple":
        return [None, None]
    return list(config.output_size)


def pad_image(image: tf.Tensor, size_hw: tf.Tensor, colour) -> tf.Tensor:
    """Pads float32 [h, w, 3] at the bottom/right to ``size_hw`` (H, W) with ``colour`` (RGB);
    the image's own pixels are unchanged to the bit."""
    shape = tf.shape(image)
    size = tf.cast(size_hw, tf.int32)
    # Never negative, even where a too-small canvas is known while tracing: padded_size's
    # check then reports it when the graph runs.
    extra = tf.maximum(size - shape[:2], 0)
    padded = tf.pad(image, [[0, extra[0]], [0, extra[1]], [0, 0]])
    if isinstance(colour, (tuple, list)) and not any(colour):
        return padded  # tf.pad's zeros already (training: the batch fills the padding later)
    height, width = shape[0] + extra[0], shape[1] + extra[1]
    inside = (tf.range(height) < shape[0])[:, None, None] & (tf.range(width) < shape[1])[
        None, :, None
    ]  # [H, W, 1]
    return tf.where(inside, padded, tf.constant(colour, tf.float32))


def image_area(image_info: tf.Tensor, height, width) -> tf.Tensor:
    """bool [..., H, W]: the pixels of each image itself in its padded [H, W] frame.

    ``image_info`` is [..., 4, 2]; an image occupies the top-left ``image_info[1] -
    image_info[3]`` pixels (its scaled size less its crop offset, 0 without a random crop).
    """
    valid = image_info[..., 1, :] - image_info[..., 3, :]  # [..., 2]
    rows = tf.range(tf.cast(height, tf.float32)) < valid[..., :1]  # [..., H]
    cols = tf.range(tf.cast(width, tf.float32)) < valid[..., 1:]  # [..., W]
    return rows[..., :, None] & cols[..., None, :]


def fill_padding(images: tf.Tensor, image_info: tf.Tensor, colour) -> tf.Tensor:
    """Sets every pixel of float32 [B, H, W, 3] outside each image to ``colour`` (RGB).

    Image b occupies ``image_area`` of its ``image_info[b]``; its pixels are unchanged to the
    bit.
    """
    shape = tf.shape(images)
    inside = image_area(image_info, shape[1], shape[2])[..., None]  # [B, H, W, 1]
    return tf.where(inside, images, tf.constant(colour, tf.float32))


def group_by_padded_size(
    dataset: tf.data.Dataset, batch_size: int, lookahead: int = 4
) -> tf.data.Dataset:
    """Batches of up to ``batch_size`` elements (dicts with ``image`` [H, W, 3]) of one
    padded size each, so no image is padded beyond its own size.

    Images are grouped within runs of ``lookahead * batch_size`` consecutive elements, which
    bounds the images held back (COCO has dozens of padded sizes, some rare); each run ends
    with its partial batches. Order follows when each batch fills up.
    """

    def key(element):
        shape = tf.cast(tf.shape(element["image"]), tf.int64)
        return shape[0] * 100_000 + shape[1]

    def grouped(window):
        return tf.data.Dataset.zip(window).group_by_window(
            key, lambda _, same: same.batch(batch_size), window_size=batch_size
        )

    return dataset.window(lookahead * batch_size).flat_map(grouped)
