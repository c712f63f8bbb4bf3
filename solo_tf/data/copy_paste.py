"""Simple copy-paste (Ghiasi et al., "Simple Copy-Paste is a Strong Data Augmentation Method
for Instance Segmentation", CVPR 2021): objects cut out of one training image by their masks
and pasted onto another.

Off by default and in the paper flagfiles (``DataConfig.copy_paste = 0``). With probability
p = ``DataConfig.copy_paste`` a training image (the *target*) receives a random subset of the
instances of the next image of the stream (the *source*), both already augmented
(``pipeline.make_train_map_fn``: resized, flipped, jittered, on their padded size):

* each non-crowd source instance is chosen with probability 1/2, in order, while the target
  has room (``TargetConfig.max_instances`` in all);
* the chosen masks, cut to the target's own image area (not its padding), form the paste
  region; its pixels come from the source, every other pixel stays the target's to the bit;
* the target's masks lose the paste region; a target instance left without a pixel is
  dropped (fully occluded), a partly covered one keeps its visible part;
* the pasted instances are appended after the target's (masks, classes, ``is_crowd``);
  ``image_info`` and ``image_id`` stay the target's.

With probability 1 - p the target is returned unchanged (its padded batch size aside). Pairs
are formed from consecutive elements (``paired``), so each training image costs two decoded
images; the draws are stateless, keyed by the seed and the two image ids.
"""

from __future__ import annotations

import tensorflow as tf

from solo_tf.data import geometry

SELECT_PROBABILITY = 0.5  # of each source instance, as the paper's "random subset"


def paste(
    target: dict[str, tf.Tensor],
    source: dict[str, tf.Tensor],
    chosen: tf.Tensor,
) -> dict[str, tf.Tensor]:
    """Pastes the ``chosen`` (bool [Ns]) source instances onto the target; no randomness.

    Both are ``make_train_map_fn`` elements of the same padded size [H, W]: ``image`` float32
    [H, W, 3], ``masks`` uint8 [N, H, W], ``classes`` int32 [N], ``is_crowd`` bool [N],
    ``image_info`` float32 [4, 2], ``image_id``, ``num_instances`` int32 []. Returns the
    target's element with the pasted objects (the module doc's rules).
    """
    height, width = tf.shape(target["image"])[0], tf.shape(target["image"])[1]
    area = geometry.image_area(target["image_info"], height, width)  # [H, W]
    pasted = tf.boolean_mask(source["masks"], chosen) > 0  # [Np, H, W]
    pasted = pasted & area[None]
    keep_pasted = tf.reduce_any(pasted, axis=[1, 2])  # cut to nothing by the target's area
    pasted = tf.boolean_mask(pasted, keep_pasted)
    region = tf.reduce_any(pasted, axis=0)  # [H, W]
    image = tf.where(region[:, :, None], source["image"], target["image"])
    masks = tf.cast(target["masks"], tf.uint8) * tf.cast(~region, tf.uint8)[None]
    visible = tf.reduce_max(masks, axis=[1, 2]) > 0
    classes_p = tf.boolean_mask(tf.boolean_mask(source["classes"], chosen), keep_pasted)
    crowd_p = tf.boolean_mask(tf.boolean_mask(source["is_crowd"], chosen), keep_pasted)
    masks = tf.concat([tf.boolean_mask(masks, visible), tf.cast(pasted, tf.uint8)], axis=0)
    classes = tf.concat([tf.boolean_mask(target["classes"], visible), classes_p], axis=0)
    is_crowd = tf.concat([tf.boolean_mask(target["is_crowd"], visible), crowd_p], axis=0)
    return {
        **target,
        "image": image,
        "masks": masks,
        "classes": classes,
        "is_crowd": is_crowd,
        "num_instances": tf.shape(classes)[0],
    }


def random_choice(
    target: dict[str, tf.Tensor], source: dict[str, tf.Tensor], max_instances: int, seed
) -> tf.Tensor:
    """bool [Ns]: the source instances to paste (non-crowd, each with SELECT_PROBABILITY, the
    first ones while the target keeps at most ``max_instances`` in all)."""
    draws = tf.random.stateless_uniform(tf.shape(source["classes"]), seed)
    chosen = (draws < SELECT_PROBABILITY) & ~source["is_crowd"]
    room = max_instances - tf.shape(target["classes"])[0]
    return chosen & (tf.cumsum(tf.cast(chosen, tf.int32)) <= room)


def _unpad(pair: dict[str, tf.Tensor], k: int) -> dict[str, tf.Tensor]:
    """Element k of a ``padded_batch(2)`` of elements, instances cut to its own count."""
    num = pair["num_instances"][k]
    return {
        **{key: value[k] for key, value in pair.items()},
        "masks": pair["masks"][k, :num],
        "classes": pair["classes"][k, :num],
        "is_crowd": pair["is_crowd"][k, :num],
    }


def paired(
    dataset: tf.data.Dataset,
    probability: float,
    max_instances: int,
    base_seed: int,
    parallel_calls,
    deterministic,
) -> tf.data.Dataset:
    """Copy-paste on a stream of ``make_train_map_fn`` elements: consecutive elements form
    (target, source) pairs, one output each, pasted with ``probability``."""

    def one(pair):
        target, source = _unpad(pair, 0), _unpad(pair, 1)
        ids = tf.cast(tf.stack([target["image_id"], source["image_id"]]), tf.int32)
        seed = tf.random.experimental.stateless_fold_in(
            tf.stack([tf.constant(base_seed, tf.int64), tf.cast(ids[0], tf.int64)]), ids[1]
        )
        apply_seed, choice_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        apply = tf.random.stateless_uniform([], apply_seed) < probability
        chosen = random_choice(target, source, max_instances, choice_seed)
        chosen = chosen & apply
        # Nothing to paste (half the pairs at p = 0.5): skip paste's full-image passes.
        unchanged = {**target, "num_instances": tf.shape(target["classes"])[0]}
        return tf.cond(
            tf.reduce_any(chosen), lambda: paste(target, source, chosen), lambda: unchanged
        )

    pairs = dataset.padded_batch(2, drop_remainder=True)
    return pairs.map(one, num_parallel_calls=parallel_calls, deterministic=deterministic)
