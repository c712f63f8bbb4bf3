"""Per-example augmentation: aspect-preserving resize, horizontal flip, padding.

Shape letters: H0 W0 original image size, N instances, h w the resized size, H W the padded
size (``geometry.padded_size``: the next multiple of 32, or the fixed ``DataConfig.output_size``).

* Resize (``scaled_size``): scale = min(short / min(H0, W0), max_long / max(H0, W0)); the
  scaled size is ``round((H0, W0) * scale)``, with no other cap (mmdetection's ``Resize``
  with ``keep_ratio=True``). The image is resized bilinearly by Model Garden's
  ``preprocess_ops.resize_and_crop_image`` and padded at the bottom/right (``geometry``:
  evaluation pads with the mean colour here, training once per batch). Masks are resized
  with nearest neighbour (``tf.image.resize``, half-pixel centres, as Model Garden's
  ``resize_and_crop_masks``), so they stay exactly 0/1; instances whose mask becomes empty
  are dropped.
* Flip: the original image and masks are flipped left-right together with probability
  ``flip_probability`` before the resize.
* Randomness is stateless (``tf.random.stateless_*``) and keyed by a seed tensor int64 [2]
  that the caller derives from the data seed and the element's position, so the result does
  not depend on how many map calls run in parallel.
"""

from __future__ import annotations

import tensorflow as tf
from official.vision.ops import preprocess_ops

from solo_tf.config import DataConfig
from solo_tf.data import geometry, jitter


def scaled_size(
    image_size_hw: tf.Tensor, short_side: tf.Tensor | int, max_long_side: int
) -> tf.Tensor:
    """float32 [2]: the aspect-preserving resized (height, width): the short side brought to
    ``short_side`` unless the long side would pass ``max_long_side``; at least 1 pixel."""
    size = tf.cast(image_size_hw, tf.float32)  # [2]
    scale = tf.minimum(
        tf.cast(short_side, tf.float32) / tf.reduce_min(size),
        float(max_long_side) / tf.reduce_max(size),
    )
    return tf.maximum(tf.round(size * scale), 1.0)


def resize_and_pad(
    image: tf.Tensor,
    masks: tf.Tensor | None,
    size_hw: tf.Tensor,
    output_size,
    colour=(0.0, 0.0, 0.0),
    recolour=None,
) -> tuple[tf.Tensor, tf.Tensor | None, tf.Tensor]:
    """Resizes to ``size_hw`` and pads bottom/right to ``output_size`` with ``colour``.

    Args:
      image: uint8 or float [H0, W0, 3].
      masks: uint8 [N, H0, W0] or None (padded with 0).
      size_hw: float32 [2], integral values, at most ``output_size``.
      output_size: (H, W), Python ints (a static shape) or int32 [2].
      colour: RGB of the padding in [0, 255] (``geometry.pad_colour``: the mean colour).
      recolour: ``fn(float32 [h, w, 3]) -> float32 [h, w, 3]`` applied to the resized image
        before padding (training's photometric jitter), or None.

    Returns:
      image float32 [H, W, 3], masks uint8 [N, H, W] (or None), and image_info float32 [4, 2]
      ``[[H0, W0], [scaled_h, scaled_w], [y_scale, x_scale], [0, 0]]``.
    """
    resized, image_info = preprocess_ops.resize_and_crop_image(
        image,
        desired_size=size_hw,
        padded_size=None,
        keep_aspect_ratio=False,  # size_hw already keeps it; reuse it as is
    )
    resized = tf.cast(resized, tf.float32)
    if recolour is not None:
        resized = recolour(resized)
    padded = geometry.pad_image(resized, output_size, colour)
    padded = tf.ensure_shape(padded, [*_static(output_size), 3])
    if masks is None:
        return padded, None, image_info
    return padded, pad_masks(resize_masks(masks, size_hw), output_size), image_info


def resize_masks(masks: tf.Tensor, size_hw: tf.Tensor) -> tf.Tensor:
    """Nearest-neighbour resize of uint8 [N, H0, W0] masks to uint8 [N, h, w]."""
    size = tf.cast(size_hw, tf.int32)
    # Instances as channels: one resize of [H0, W0, N] is ~3x faster than N of [H0, W0, 1].
    # A leading empty mask keeps one channel when N == 0 (the op refuses zero channels).
    empty = tf.zeros(tf.concat([[1], tf.shape(masks)[1:]], axis=0), masks.dtype)
    masks = tf.concat([empty, masks], axis=0)
    resized = tf.image.resize(tf.transpose(masks, [1, 2, 0]), size, method="nearest")
    return tf.transpose(tf.cast(resized, tf.uint8), [2, 0, 1])[1:]


def pad_masks(masks: tf.Tensor, output_size) -> tf.Tensor:
    """Pads uint8 [N, h, w] masks with 0 at the bottom/right to [N, H, W] (``output_size``:
    Python ints or int32 [2])."""
    extra = tf.maximum(tf.cast(output_size, tf.int32) - tf.shape(masks)[1:], 0)  # see pad_image
    padded = tf.pad(masks, [[0, 0], [0, extra[0]], [0, extra[1]]])
    return tf.ensure_shape(padded, [None, *_static(output_size)])


def _static(output_size) -> list[int | None]:
    """The static (H, W) of ``output_size`` (ints, or a tensor of known value such as the
    canvas of ``geometry.padded_size``), else [None, None]."""
    value = tf.get_static_value(output_size)
    return [None, None] if value is None else [int(v) for v in value]


def flip_left_right(image: tf.Tensor, masks: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirrors image [H, W, 3] and masks [N, H, W] left-right."""
    return preprocess_ops.horizontal_flip_image(image), tf.reverse(masks, axis=[2])


def _scale_jittered(image, masks, size, config: DataConfig, scale_seed, crop_seed, recolour):
    """Resizes to ``size`` times a random factor, recolours (``recolour``: a function or
    None), crops/pads to the canvas (``jitter``).

    Returns image float32 [H, W, 3], masks uint8 [N, H, W] and image_info float32 [4, 2]
    ``[[H0, W0], [jittered_h, jittered_w], [y_scale, x_scale], [crop_y, crop_x]]``.
    """
    original = tf.cast(tf.shape(image)[:2], tf.float32)
    size = jitter.jittered_size(size, config.scale_jitter, scale_seed)
    resized = tf.image.resize(tf.cast(image, tf.float32), tf.cast(size, tf.int32))
    if recolour is not None:
        resized = recolour(resized)
    offset = jitter.crop_offset(size, config.output_size, crop_seed)
    image, masks = jitter.crop_to_canvas(
        resized, resize_masks(masks, size), offset, config.output_size
    )
    image_info = tf.stack([original, size, size / original, tf.cast(offset, tf.float32)])
    return image, masks, image_info


def augment_for_training(
    example: dict[str, tf.Tensor], config: DataConfig, seed: tf.Tensor
) -> dict[str, tf.Tensor]:
    """Random short side, random flip, resize and pad one decoded example.

    Args:
      example: a decoded example (``docs/architecture.md`` section 1).
      config: the data configuration (short_sides, max_long_side, output_size,
        flip_probability).
      seed: int64 [2], the stateless seed of this element.

    Returns:
      ``image`` float32 [H, W, 3], ``image_info`` float32 [4, 2], ``masks`` uint8 [N', H, W],
      ``classes`` int32 [N'], ``is_crowd`` bool [N'], ``image_id`` int64 [], where N' counts
      the instances whose mask is still non-empty.
    """
    size_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    # The optional jitters draw from their own seeds, so that with them off the draws above
    # (and hence the paper recipes' augmentation) are what they always were.
    colour_seed, scale_seed, crop_seed = tf.unstack(
        tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(seed, 1), 3)
    )
    choice = tf.random.stateless_uniform(
        [], size_seed, minval=0, maxval=len(config.short_sides), dtype=tf.int32
    )
    short_side = tf.gather(tf.constant(config.short_sides, tf.int32), choice)
    image, masks = example["image"], tf.cast(example["masks"], tf.uint8)
    recolour = None
    if config.photometric_jitter > 0:
        # On the resized image, before padding: a per-pixel affine map commutes with the
        # resize (up to its one clip), and the resized image has the canvas' pixels, not the
        # original's (the cost follows the training size, e.g. progressive resizing's).
        def recolour(resized):
            return jitter.random_photometric(resized, config.photometric_jitter, colour_seed)

    if config.shape_jitter > 0:  # its own seed: the other draws stay what they were
        shape_seed = tf.random.experimental.stateless_fold_in(seed, 2)
        image, masks = jitter.random_shape_jitter(image, masks, config.shape_jitter, shape_seed)
    do_flip = tf.random.stateless_uniform([], flip_seed) < config.flip_probability
    image, masks = tf.cond(do_flip, lambda: flip_left_right(image, masks), lambda: (image, masks))
    size = scaled_size(tf.shape(image)[:2], short_side, config.max_long_side)
    if config.scale_jitter:
        image, masks, image_info = _scale_jittered(
            image, masks, size, config, scale_seed, crop_seed, recolour
        )
    else:
        padded = geometry.padded_size(size, config)  # the batch fills the padding's colour
        image, _, image_info = resize_and_pad(image, None, size, padded, recolour=recolour)
        masks = pad_masks(resize_masks(masks, size), padded)  # [N, H, W]
    keep = tf.reduce_max(masks, axis=[1, 2]) > 0  # [N]
    return {
        "image": image,
        "image_info": image_info,
        "masks": tf.boolean_mask(masks, keep),
        "classes": tf.boolean_mask(tf.cast(example["classes"], tf.int32), keep),
        "is_crowd": tf.boolean_mask(tf.cast(example["is_crowd"], tf.bool), keep),
        "image_id": tf.cast(example["image_id"], tf.int64),
    }


def preprocess_for_eval(
    example: dict[str, tf.Tensor], config: DataConfig, colour=geometry.IMAGENET_MEAN
) -> dict[str, tf.Tensor]:
    """Model inputs of one decoded example: resize with ``eval_short_side``, pad with
    ``colour`` (``geometry.pad_colour`` of the model) to ``geometry.padded_size``; no flip.

    Returns ``image`` float32 [H, W, 3] (H, W static for ``pad_mode="canvas"``),
    ``image_info`` float32 [4, 2], ``image_id`` int64 [].
    """
    image = example["image"]
    size = scaled_size(tf.shape(image)[:2], config.eval_short_side, config.max_long_side)
    image, _, image_info = resize_and_pad(
        image, None, size, geometry.padded_size(size, config), colour
    )
    return {
        "image": tf.ensure_shape(image, [*geometry.static_size(config), 3]),
        "image_info": image_info,
        "image_id": tf.cast(example["image_id"], tf.int64),
    }
