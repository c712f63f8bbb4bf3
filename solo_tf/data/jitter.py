"""Training augmentations beyond the paper's (resize + flip): photometric, scale and shape
(affine) jitter.

Both are off by default and in the paper flagfiles (``DataConfig.photometric_jitter = 0``,
``DataConfig.scale_jitter = ()``), so those stay the authors' recipe; the CPU demo turns them on
so that its small model learns shapes rather than one generator's colours and sizes.

* Photometric jitter (strength s in [0, 1]) on the decoded image, pixel values 0..255, before
  any resize: brightness + d (d uniform in +-32 s), contrast (x - mean) c + mean and saturation
  (x - grey) a + grey (c, a uniform in [1 - s/2, 1 + s/2]), a hue rotation of h turns (h uniform
  in +-s/12; a rotation of RGB about the grey axis), and with probability s/2 a random
  permutation of the three channels, composed into one affine map of each pixel (one pass over
  the image); the result is clipped to 0..255. Masks are untouched.
* Scale jitter (factor range (lo, hi)): the aspect-preserving size drawn from ``short_sides``
  is multiplied by f (log-uniform in [lo, hi]) without the canvas cap; an image larger than the
  canvas is cropped to it at a random offset (the same window for the image and its masks), a
  smaller one padded at the bottom/right. Instances left without a pixel are dropped by the
  caller.
* Shape jitter (strength s in [0, 1]) on the decoded image and its masks, before any resize:
  an area-preserving stretch by sqrt(a) along x and 1 / sqrt(a) along y (a log-uniform in
  exp(+-0.3 s)) and a shear x += k y (k uniform in +-0.3 s), about the image centre, so that
  squares become rectangles and parallelograms, regular triangles and stars irregular ones.
  The image is resampled bilinearly, the masks by nearest neighbour; pixels mapped from outside
  the image take its mean colour and belong to no mask. Instances left without a pixel are
  dropped by the caller.

Randomness is stateless: every draw takes a seed derived from the element's seed.
"""

from __future__ import annotations

import tensorflow as tf

GREY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as tf.image.rgb_to_grayscale


def colour_matrix(
    saturation: tf.Tensor | float = 1.0,
    hue: tf.Tensor | float = 0.0,
    permutation: tf.Tensor | None = None,
) -> tf.Tensor:
    """float32 [3, 3] M: the linear part of ``adjust_colours`` before its contrast factor
    (pixel column vectors y = M x).

    M = P R S: saturation S = s I + (1 - s) 1 g^T (g: ``GREY_WEIGHTS``), the hue
    rotation R by 2 pi ``hue`` about the grey axis (1, 1, 1) / sqrt(3) (red -> yellow -> green
    for a positive turn; a third of a turn takes red to green exactly, as HSV's hue does), and
    the channel permutation P (output channel i = input channel ``permutation[i]``).
    """
    grey = tf.constant(GREY_WEIGHTS, tf.float32)[None, :]  # [1, 3]
    eye = tf.eye(3, dtype=tf.float32)
    s = tf.cast(saturation, tf.float32)
    sat = s * eye + (1.0 - s) * grey  # every row: s e_i + (1 - s) g
    angle = 2.0 * 3.141592653589793 * tf.cast(hue, tf.float32)
    cross = tf.constant([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], tf.float32) / 3.0**0.5
    rotation = tf.cos(angle) * eye + tf.sin(angle) * cross + (1.0 - tf.cos(angle)) / 3.0
    matrix = rotation @ sat
    if permutation is not None:
        matrix = tf.one_hot(permutation, 3, dtype=tf.float32) @ matrix
    return matrix


def adjust_colours(
    image: tf.Tensor,
    brightness: tf.Tensor | float = 0.0,
    contrast: tf.Tensor | float = 1.0,
    saturation: tf.Tensor | float = 1.0,
    hue: tf.Tensor | float = 0.0,
    permutation: tf.Tensor | None = None,
) -> tf.Tensor:
    """Applies fixed photometric changes to float32 [H, W, 3] pixels in 0..255.

    In order: brightness (added), contrast (around the image mean), saturation (around each
    pixel's grey value), hue (turns, 0..1 is a full circle; a rotation about the grey axis),
    a channel permutation (int32 [3] or None); the result is clipped to 0..255. All of it is
    one affine map of each pixel, applied in one pass (``colour_matrix`` plus an offset).
    """
    image = tf.cast(image, tf.float32)
    c = tf.cast(contrast, tf.float32)
    mean = tf.reduce_mean(image) + brightness  # of the brightened image
    linear = colour_matrix(saturation, hue, permutation)  # [3, 3]
    # y = c M (x + b - m) + M m 1 = c M x + (c (b - m) + m) M 1
    offset = (c * (brightness - mean) + mean) * tf.reduce_sum(linear, axis=1)  # [3]
    flat = tf.reshape(image, [-1, 3]) @ tf.transpose(c * linear) + offset
    return tf.clip_by_value(tf.reshape(flat, tf.shape(image)), 0.0, 255.0)


def random_photometric(image: tf.Tensor, strength: float, seed: tf.Tensor) -> tf.Tensor:
    """float32 [H, W, 3] in 0..255: ``adjust_colours`` with draws of strength ``strength``.

    Args:
      image: uint8 or float [H, W, 3], values 0..255.
      strength: s in [0, 1] (the ranges in the module docstring).
      seed: int64 [2], the stateless seed of this element.
    """
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 6))
    s = float(strength)

    def uniform(seed_, low, high):
        return tf.random.stateless_uniform([], seed_, minval=low, maxval=high)

    permute = tf.random.stateless_uniform([], seeds[4]) < s / 2
    order = tf.argsort(tf.random.stateless_uniform([3], seeds[5]))
    permutation = tf.where(permute, order, tf.range(3))
    return adjust_colours(
        image,
        brightness=uniform(seeds[0], -32.0 * s, 32.0 * s),
        contrast=uniform(seeds[1], 1.0 - s / 2, 1.0 + s / 2),
        saturation=uniform(seeds[2], 1.0 - s / 2, 1.0 + s / 2),
        hue=uniform(seeds[3], -s / 12, s / 12),
        permutation=permutation,
    )


def jittered_size(size_hw: tf.Tensor, factor_range: tuple[float, float], seed: tf.Tensor):
    """float32 [2]: ``round(size_hw * f)``, f log-uniform in ``factor_range``, at least 1."""
    low, high = (float(v) for v in factor_range)
    log_f = tf.random.stateless_uniform(
        [], seed, minval=tf.math.log(low), maxval=tf.math.log(high) + 1e-12
    )
    return tf.maximum(tf.round(tf.cast(size_hw, tf.float32) * tf.exp(log_f)), 1.0)


def crop_offset(size_hw: tf.Tensor, output_size: tuple[int, int], seed: tf.Tensor) -> tf.Tensor:
    """int32 [2]: a uniform random top-left corner of an ``output_size`` window in ``size_hw``

    (0 along a side that already fits).
    """
    slack = tf.maximum(tf.cast(size_hw, tf.int32) - tf.constant(output_size, tf.int32), 0)
    unit = tf.random.stateless_uniform([2], seed)
    return tf.cast(tf.floor(unit * tf.cast(slack + 1, tf.float32)), tf.int32)


def crop_to_canvas(
    image: tf.Tensor, masks: tf.Tensor, offset: tf.Tensor, output_size: tuple[int, int]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Crops image [h, w, 3] and masks [N, h, w] to the same window, pads both to the canvas.

    The window starts at ``offset`` (int32 [2]) and is at most ``output_size``; the result is
    image float32 [H, W, 3] and masks uint8 [N, H, W], zero-padded at the bottom/right.
    """
    height, width = output_size
    y0, x0 = offset[0], offset[1]
    image = image[y0 : y0 + height, x0 : x0 + width]
    masks = masks[:, y0 : y0 + height, x0 : x0 + width]
    shape = tf.shape(image)
    pad = [[0, height - shape[0]], [0, width - shape[1]]]
    image = tf.pad(tf.cast(image, tf.float32), [*pad, [0, 0]])
    masks = tf.pad(masks, [[0, 0], *pad])
    return tf.ensure_shape(image, [height, width, 3]), tf.ensure_shape(masks, [None, height, width])


def affine_transform(image: tf.Tensor, masks: tf.Tensor, matrix: tf.Tensor):
    """Warps image [H, W, 3] and masks [N, H, W] with one output-to-input affine map.

    ``matrix`` float32 [6] ``(a0, a1, a2, b0, b1, b2)``: output pixel (x, y) takes the input at
    ``(a0 x + a1 y + a2, b0 x + b1 y + b2)`` (pixel indices). The image is sampled bilinearly,
    the masks by nearest neighbour; outside the input the image takes its mean colour and the
    masks 0. Returns image float32 [H, W, 3], masks uint8 [N, H, W].
    """
    image = tf.cast(image, tf.float32)
    size = tf.shape(image)[:2]
    transform = tf.concat([tf.cast(matrix, tf.float32), tf.zeros([2])], axis=0)[None]  # [1, 8]

    def warp(x, interpolation):
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x,
            transforms=transform,
            output_shape=size,
            fill_value=0.0,
            interpolation=interpolation,
            fill_mode="CONSTANT",
        )

    inside = tf.ones_like(image[None, :, :, :1])
    warped = warp(tf.concat([image[None], inside], axis=-1), "BILINEAR")[0]  # [H, W, 4]
    mean = tf.reduce_mean(image, axis=[0, 1])
    weight = warped[:, :, 3:]  # 1 inside, 0 outside, between at the border
    image = warped[:, :, :3] + (1.0 - weight) * mean
    # Instances as channels, after an empty one (the op refuses zero channels when N == 0).
    masks = tf.concat([tf.zeros_like(masks[:1]), masks], axis=0)
    masks_hwn = tf.transpose(tf.cast(masks, tf.float32), [1, 2, 0])[None]  # [1, H, W, N + 1]
    masks = tf.transpose(tf.cast(warp(masks_hwn, "NEAREST")[0], tf.uint8), [2, 0, 1])[1:]
    return tf.clip_by_value(image, 0.0, 255.0), masks


def shape_matrix(size_hw: tf.Tensor, stretch: tf.Tensor, shear: tf.Tensor) -> tf.Tensor:
    """float32 [6]: the output-to-input map of a stretch (x by sqrt(stretch), y by its
    inverse) and a shear (x += shear * y) about the centre of an image of ``size_hw``."""
    cy, cx = tf.unstack((tf.cast(size_hw, tf.float32) - 1.0) / 2.0)
    root = tf.sqrt(tf.cast(stretch, tf.float32))
    shear = tf.cast(shear, tf.float32)
    # The forward map [[root, shear / root], [0, 1 / root]] (stretch, then shear; determinant
    # 1) has the inverse [[1 / root, -shear / root], [0, root]], applied about the centre.
    a0, a1 = 1.0 / root, -shear / root
    b1 = root
    return tf.stack([a0, a1, cx - a0 * cx - a1 * cy, 0.0, b1, cy - b1 * cy])


def random_shape_jitter(image: tf.Tensor, masks: tf.Tensor, strength: float, seed: tf.Tensor):
    """``affine_transform`` with a stretch and a shear of strength ``strength`` (module doc)."""
    stretch_seed, shear_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    s = float(strength)
    log_a = tf.random.stateless_uniform([], stretch_seed, minval=-0.3 * s, maxval=0.3 * s)
    shear = tf.random.stateless_uniform([], shear_seed, minval=-0.3 * s, maxval=0.3 * s)
    matrix = shape_matrix(tf.shape(image)[:2], tf.exp(log_a), shear)
    return affine_transform(image, masks, matrix)
