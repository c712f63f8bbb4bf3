"""SOLO post-processing: raw head logits -> fixed-size detections (``docs/architecture.md`` 5).

Pure TensorFlow with static shapes everywhere but the batch and the optional output size,
batched over images, and only TFLite built-in ops (no ``tf.where`` with one argument, no
boolean_mask: ``top_k`` and masking instead). Training-time evaluation, the SavedModel and the
TFLite model all call ``postprocess``.

Shape letters: B batch, S grid of a level, C classes, L levels, P = min(nms_pre, sum S^2 * C)
candidates, K ``max_detections``, Hf Wf the finest mask size (H/4, W/4 of the padded input
H W), Ho Wo the output mask size.

The steps follow the authors' SOLO test pipeline (``get_seg_single``):

1. per level: sigmoid of the category logits, then point NMS: a cell is kept iff it equals the
   2x2 max over itself and its top, left and top-left neighbours (the authors' ``max_pool2d``
   with padding 1 and ``[:-1, :-1]``: the window looks up and left only);
2. all levels' (cell, class) pairs flattened; score > ``score_threshold``; the top
   ``nms_pre`` by category score are the candidates (the authors keep every pair over the
   threshold here and cut to ``nms_pre`` only after step 5; a fixed shape needs the cut now,
   which only differs when more than ``nms_pre`` pairs pass the threshold);
3. each candidate's mask *probabilities* (``solo_tf.cell_masks.batched_cell_mask_probs``) bilinearly
   upsampled from its level's stride to the finest stride (4), as the authors upsample
   ``sigmoid(logits)``; for the decoupled head the product sigmoid(X) * sigmoid(Y) is formed at
   the level's stride, then upsampled (the authors upsample each factor first; the two differ
   only by second-order interpolation terms). Levels are handled one at a time over all
   candidates with clipped cell indices and merged with a select on the candidate's level.
   SOLOv2 (every level at stride 4): each candidate's kernel is gathered from its own level
   and one matmul with the mask features gives the P masks (``dynamic_mask_probs``);
4. binary mask = prob > ``mask_threshold``; candidates whose binary area (in stride-4 pixels)
   is not above their level's stride (``ModelConfig.strides``) are dropped;
5. score *= maskness = sum(prob * binary) / sum(binary); sorted descending;
6. Matrix NMS (``nms_type="matrix"``, kernel and sigma from the config) or greedy mask NMS;
   score >= ``update_threshold``; the top ``max_detections``;
7. masks: the soft probabilities resized (bilinear, half-pixel centres as the authors' torch
   ``interpolate``) to the padded input, cropped to the scaled image (``image_info[:, 1]``),
   resized to the original size (``image_info[:, 0]``), then > ``mask_threshold``. The three
   resampling steps are separable and linear, so they are done as one banded matrix per axis
   straight from the stride-4 masks to the output (exactly the two resizes up to float
   rounding, without building the padded-size intermediate): two matmuls per batch;
8. boxes from the final masks: [ymin, xmin, ymax, xmax] in original pixels with the max
   exclusive (pixel edges: a one-pixel mask at (y, x) has box [y, x, y + 1, x + 1]), so
   COCO's [x, y, w, h] is [xmin, ymin, xmax - xmin, ymax - ymin]; all zeros for an empty mask.

``output_size``: (Ho, Wo) as Python ints gives static output shapes (what TFLite needs); masks
of images larger than that are cut at the bottom/right. When None, it is the largest original
size in the batch, a shape known only at run time.
"""

from __future__ import annotations

import tensorflow as tf

from solo_tf.cell_masks import batched_cell_mask_probs, dynamic_mask_probs, level_kernels
from solo_tf.config import ModelConfig, PostprocessConfig
from solo_tf.matrix_nms import mask_nms, matrix_nms


def postprocess(
    outputs: dict[str, tf.Tensor],
    image_info: tf.Tensor,
    model_config: ModelConfig,
    post_config: PostprocessConfig,
    class_ids: tf.Tensor,
    output_size: tuple[int, int] | None = None,
) -> dict[str, tf.Tensor]:
    """Detections of a batch from the model's raw outputs.

    Args:
      outputs: the model's dict of logits (``docs/architecture.md`` section 4).
      image_info: float32 [B, 4, 2], [[orig_h, orig_w], [scaled_h, scaled_w], ...].
      model_config: gives num_grids, strides, head_type and num_classes.
      post_config: the thresholds, ``nms_pre``, NMS choice and ``max_detections``.
      class_ids: int32 [C], the dataset category id of each contiguous class index.
      output_size: static (Ho, Wo) of the output masks, or None for the batch's largest
        original size.

    Returns:
      ``num_detections`` int32 [B], ``detection_scores`` float32 [B, K],
      ``detection_classes`` int32 [B, K], ``detection_masks`` uint8 [B, K, Ho, Wo],
      ``detection_boxes`` float32 [B, K, 4]; rows past ``num_detections`` are 0.
    """
    with tf.name_scope("postprocess"):
        cands = _select_candidates(outputs, model_config, post_config)
        probs = _candidate_mask_probs(outputs, cands, model_config)  # [B, P, Hf, Wf]
        cands, binary = _rescore(probs, cands, model_config, post_config)
        dets = _suppress(probs, binary, cands, post_config)
        image_info = tf.cast(image_info, tf.float32)
        fine_stride = min(model_config.mask_strides)
        masks = _masks_to_original(
            dets["probs"], image_info, fine_stride, output_size, post_config.mask_threshold
        )
        valid = dets["valid"]
        class_ids = tf.cast(class_ids, tf.int32)
        classes = tf.where(valid, tf.gather(class_ids, dets["classes"]), 0)
        return {
            "num_detections": tf.reduce_sum(tf.cast(valid, tf.int32), axis=1),
            "detection_scores": tf.where(valid, dets["scores"], 0.0),
            "detection_classes": classes,
            "detection_masks": tf.cast(masks, tf.uint8),
            "detection_boxes": _boxes_from_masks(masks),
        }


def postprocess_each_image(
    outputs: dict[str, tf.Tensor],
    image_info: tf.Tensor,
    model_config: ModelConfig,
    post_config: PostprocessConfig,
    class_ids: tf.Tensor,
    output_size: tuple | None = None,
) -> dict[str, tf.Tensor]:
    """``postprocess``, one image at a time (``tf.map_fn``, one iteration in flight).

    The same detections as ``postprocess`` on the whole batch (masks padded to the batch's
    largest original size when ``output_size`` is None), but the largest tensors ([P, Hf, Wf]
    candidate masks, [K, Ho, Wo] output masks and their resampling taps) exist for one image
    instead of B: evaluation at batch 8 and the SavedModel at batch 8, 800 x 1333 fit in
    memory this way.
    """
    if output_size is None:
        original = tf.cast(tf.round(tf.cast(image_info, tf.float32)[:, 0]), tf.int32)
        output_size = (tf.reduce_max(original[:, 0]), tf.reduce_max(original[:, 1]))
    num_kept = post_config.max_detections
    signature = {
        "num_detections": tf.TensorSpec([], tf.int32),
        "detection_scores": tf.TensorSpec([num_kept], tf.float32),
        "detection_classes": tf.TensorSpec([num_kept], tf.int32),
        "detection_masks": tf.TensorSpec([num_kept, None, None], tf.uint8),
        "detection_boxes": tf.TensorSpec([num_kept, 4], tf.float32),
    }

    # The lazy vanilla head's last-conv weights have no batch axis: shared by every image.
    shared = {k: v for k, v in outputs.items() if k.startswith(("mask_kernel_", "mask_bias_"))}
    per_image = {k: v for k, v in outputs.items() if k not in shared}

    def one(args):
        single_outputs, single_info = args
        batch_of_one = {key: value[None] for key, value in single_outputs.items()}
        dets = postprocess(
            {**batch_of_one, **shared},
            single_info[None],
            model_config,
            post_config,
            class_ids,
            output_size,
        )
        return {key: dets[key][0] for key in signature}

    return tf.map_fn(
        one, (per_image, image_info), fn_output_signature=signature, parallel_iterations=1
    )


def point_nms(heat: tf.Tensor) -> tf.Tensor:
    """Zero every score that is below one of its top, left or top-left neighbours.

    heat: float32 [B, S, S, C] in [0, 1]. The authors' ``points_nms`` (2x2 max pool, stride 1,
    padding 1, then ``[:-1, :-1]``): padding top/left only and pooling VALID is the same.
    """
    padded = tf.pad(heat, [[0, 0], [1, 0], [1, 0], [0, 0]], constant_values=-1.0)
    hmax = tf.nn.max_pool2d(padded, ksize=2, strides=1, padding="VALID")  # [B, S, S, C]
    return tf.where(tf.equal(hmax, heat), heat, tf.zeros_like(heat))


def _select_candidates(outputs, model_config, post_config) -> dict[str, tf.Tensor]:
    """Top ``nms_pre`` (cell, class) pairs of all levels by category score, each [B, P]."""
    num_classes = model_config.num_classes
    flat, starts = [], [0]
    for level, num_grid in enumerate(model_config.num_grids):
        heat = tf.sigmoid(tf.cast(outputs[f"cate_logits_{level}"], tf.float32))
        heat = point_nms(heat)  # [B, S, S, C]
        flat.append(tf.reshape(heat, [-1, num_grid * num_grid * num_classes]))
        starts.append(starts[-1] + num_grid * num_grid)
    scores = tf.concat(flat, axis=1)  # [B, G * C]
    above = scores > post_config.score_threshold
    scores = tf.where(above, scores, tf.zeros_like(scores))
    num_candidates = min(post_config.nms_pre, starts[-1] * num_classes)
    top = tf.math.top_k(scores, k=num_candidates, sorted=True)  # [B, P]
    index = top.indices
    cell = index // num_classes  # global cell over the levels
    level = tf.zeros_like(cell)
    for start in starts[1:-1]:
        level += tf.cast(cell >= start, tf.int32)
    cell -= tf.gather(tf.constant(starts[:-1], tf.int32), level)
    return {
        "scores": top.values,
        "valid": top.values > post_config.score_threshold,
        "classes": index % num_classes,
        "levels": level,
        "cells": cell,  # i * S + j inside the level
    }


def _candidate_mask_probs(outputs, cands, model_config) -> tf.Tensor:
    """float32 [B, P, Hf, Wf]: each candidate's mask probabilities at the finest stride.

    Every level is gathered for every candidate (clipped cell index); levels that share a
    mask stride are merged by a select at that stride, then upsampled once to the finest
    stride, where the stride groups are merged by a last select.
    """
    if model_config.head_type == "solov2":
        return _dynamic_candidate_probs(outputs, cands, model_config)
    strides = model_config.mask_strides
    fine_size = _mask_size(outputs, strides.index(min(strides)), model_config.head_type)
    levels = cands["levels"][..., None, None]  # [B, P, 1, 1]
    probs = None
    for stride in sorted(set(strides)):
        group = [level for level in range(model_config.num_levels) if strides[level] == stride]
        group_probs = None
        for level in group:
            num_grid = model_config.num_grids[level]
            cell = tf.clip_by_value(cands["cells"], 0, num_grid**2 - 1)  # [B, P]
            level_probs = batched_cell_mask_probs(
                outputs, level, cell, model_config.head_type, num_grid
            )  # [B, P, Hm, Wm]
            group_probs = _select(levels == level, level_probs, group_probs)
        if stride != min(strides):
            shape = tf.shape(group_probs)
            flat = tf.reshape(group_probs, tf.concat([[-1], shape[2:], [1]], 0))
            flat = tf.image.resize(flat, fine_size, "bilinear")[..., 0]  # [B * P, Hf, Wf]
            group_probs = tf.reshape(flat, tf.concat([shape[:2], fine_size], 0))
        in_group = tf.reduce_any(tf.equal(levels[..., None], group), axis=-1)
        probs = _select(in_group, group_probs, probs)
    return probs  # [B, P, Hf, Wf]


def _dynamic_candidate_probs(outputs, cands, model_config) -> tf.Tensor:
    """SOLOv2: float32 [B, P, Hf, Wf], each candidate's kernel from its own level (one gather
    from the levels' kernels concatenated, [B, G, E]) matched with the mask features."""
    kernels = tf.concat(
        [level_kernels(outputs, level) for level in range(model_config.num_levels)], axis=1
    )  # [B, G, E]
    starts = [0]
    for num_grid in model_config.num_grids[:-1]:
        starts.append(starts[-1] + num_grid * num_grid)
    cells = tf.gather(tf.constant(starts, tf.int32), cands["levels"]) + cands["cells"]  # [B, P]
    kernels = tf.gather(kernels, cells, axis=1, batch_dims=1)  # [B, P, E]
    return dynamic_mask_probs(outputs["mask_features"], kernels)


def _select(condition, new, old):
    return new if old is None else tf.where(condition, new, old)


def _mask_size(outputs, level, head_type) -> tf.Tensor:
    key = f"mask_logits_{level}" if head_type == "vanilla" else f"mask_x_logits_{level}"
    if key not in outputs:  # the vanilla head's lazy outputs
        key = f"mask_features_{level}"
    return tf.shape(outputs[key])[1:3]


def _rescore(probs, cands, model_config, post_config) -> tuple[dict, tf.Tensor]:
    """Binarise, drop masks not larger than their level's stride, multiply by maskness.

    Returns the updated candidates and the binary masks, float32 [B, P, Hf, Wf].
    """
    binary = tf.cast(probs > post_config.mask_threshold, tf.float32)  # [B, P, Hf, Wf]
    areas = tf.reduce_sum(binary, axis=[2, 3])  # [B, P]
    strides = tf.gather(tf.constant(model_config.strides, tf.float32), cands["levels"])
    valid = cands["valid"] & (areas > strides)
    maskness = tf.math.divide_no_nan(tf.reduce_sum(probs * binary, axis=[2, 3]), areas)
    scores = tf.where(valid, cands["scores"] * maskness, tf.zeros_like(areas))
    return dict(cands, scores=scores, valid=valid, areas=areas), binary


def _suppress(probs, binary, cands, post_config) -> dict[str, tf.Tensor]:
    """Sort, NMS, update threshold, top K; returns [B, K] fields and probs [B, K, Hf, Wf]."""
    num_candidates = probs.shape[1]
    order = tf.math.top_k(tf.where(cands["valid"], cands["scores"], -1.0), num_candidates)
    order = order.indices  # [B, P]
    ranked = {k: tf.gather(v, order, batch_dims=1) for k, v in cands.items()}
    binary = tf.gather(
        tf.reshape(binary, tf.concat([tf.shape(binary)[:2], [-1]], 0)), order, batch_dims=1
    )  # [B, P, Hf * Wf]
    nms_args = (binary, ranked["classes"], ranked["scores"], ranked["areas"], ranked["valid"])
    if post_config.nms_type == "matrix":
        scores = matrix_nms(*nms_args, kernel=post_config.kernel, sigma=post_config.sigma)
    elif post_config.nms_type == "mask":
        scores = mask_nms(*nms_args, iou_threshold=post_config.mask_nms_iou)
    else:
        raise ValueError(f"unknown nms_type {post_config.nms_type!r}")
    keep = ranked["valid"] & (scores >= post_config.update_threshold)

    num_kept = min(post_config.max_detections, num_candidates)
    top = tf.math.top_k(tf.where(keep, scores, -1.0), num_kept)  # [B, K']
    valid = tf.gather(keep, top.indices, batch_dims=1)
    dets = {
        "valid": valid,
        "scores": tf.gather(scores, top.indices, batch_dims=1),
        "classes": tf.gather(ranked["classes"], top.indices, batch_dims=1),
    }
    source = tf.gather(order, top.indices, batch_dims=1)  # [B, K'] into the candidates
    kept_probs = tf.gather(probs, source, batch_dims=1)  # [B, K', Hf, Wf]
    dets["probs"] = kept_probs * tf.cast(valid, tf.float32)[:, :, None, None]
    pad = post_config.max_detections - num_kept
    if pad > 0:
        dets = {k: _pad_axis1(v, pad) for k, v in dets.items()}
    return dets


def _pad_axis1(tensor, pad):
    """Zero-pad [B, N, ...] to [B, N + pad, ...] (bool via int32)."""
    paddings = [[0, 0], [0, pad]] + [[0, 0]] * (tensor.shape.rank - 2)
    if tensor.dtype == tf.bool:
        return tf.pad(tf.cast(tensor, tf.int32), paddings) > 0
    return tf.pad(tensor, paddings)


def _axis_taps(out_size, scaled, original, padded, stride):
    """Four (index, weight) taps per output coordinate along one axis, each [B, O].

    Composes the authors' two half-pixel bilinear resizes (torch ``interpolate`` with
    ``align_corners=False``, identical to ``tf.image.resize``): stride-4 masks -> padded input
    (factor ``stride``), then the crop [0, scaled) -> ``original``. Weights are 0 for output
    coordinates at or past ``original``.
    """

    def taps(dst, scale, limit):
        src = tf.maximum((dst + 0.5) * scale - 0.5, 0.0)
        low = tf.floor(src)
        frac = src - low
        low = tf.minimum(low, limit - 1.0)
        high = tf.minimum(low + 1.0, limit - 1.0)
        return ((low, 1.0 - frac), (high, frac))

    dst = tf.cast(tf.range(out_size), tf.float32)[None, :]  # [1, O]
    result = []
    for row, weight in taps(dst, (scaled / original)[:, None], scaled[:, None]):  # [B, O]
        for col, sub_weight in taps(row, 1.0 / stride, padded / stride):
            result.append((tf.cast(col, tf.int32), weight * sub_weight))
    inside = tf.cast(dst < original[:, None], tf.float32)
    return [(index, weight * inside) for index, weight in result]


def _axis_matrix(out_size, scaled, original, padded, stride, fine_size) -> tf.Tensor:
    """float32 [B, O, F]: ``_axis_taps`` as a matrix, row o holding the weights of output
    coordinate o on the F = ``fine_size`` stride-4 coordinates (at most 3 non-zero)."""
    taps = _axis_taps(out_size, scaled, original, padded, stride)
    return tf.add_n([tf.one_hot(index, fine_size) * weight[..., None] for index, weight in taps])


def _masks_to_original(
    probs, image_info, stride, output_size, threshold, columns_first=None
) -> tf.Tensor:
    """bool [B, K, Ho, Wo]: probabilities [B, K, Hf, Wf] resized to each original image.

    Both resizes of each axis are one banded matrix (``_axis_matrix``), so a mask is
    rows @ probs @ cols^T: two matmuls, in the output's layout. On a CPU this is several times
    faster than the equivalent 4-tap gathers (no gather, no transpose; Wf multiply-adds per
    output pixel, which matmul kernels run near the machine's peak).

    The product is the same in either order, but not its cost: rows first does
    K * Ho * Wf * (Hf + Wo) multiply-adds, columns first K * Hf * Wo * (Wf + Ho). With the
    output about ``stride`` times the masks on both axes, columns first is cheaper exactly
    when the masks are wider than tall (800 x 1344 inputs: 0.73x the arithmetic), so
    ``columns_first=None`` picks it when the static Wf > Hf.
    """
    original = tf.round(image_info[:, 0])  # [B, 2]
    shape = tf.shape(probs)
    padded = tf.cast(shape[2:4] * stride, tf.float32)  # [2]
    scaled = tf.clip_by_value(tf.round(image_info[:, 1]), 1.0, padded)  # [B, 2]
    if output_size is None:
        out_h = tf.cast(tf.reduce_max(original[:, 0]), tf.int32)
        out_w = tf.cast(tf.reduce_max(original[:, 1]), tf.int32)
    else:
        out_h, out_w = output_size
    rows = _axis_matrix(out_h, scaled[:, 0], original[:, 0], padded[0], stride, shape[2])
    cols = _axis_matrix(out_w, scaled[:, 1], original[:, 1], padded[1], stride, shape[3])
    if columns_first is None:
        fine_h, fine_w = probs.shape[2], probs.shape[3]
        columns_first = fine_h is not None and fine_w is not None and fine_w > fine_h
    if columns_first:
        flat = tf.reshape(probs, [shape[0], -1, shape[3]])  # [B, K * Hf, Wf]
        masks = tf.matmul(flat, cols, transpose_b=True)  # [B, K * Hf, Wo]
        masks = tf.reshape(masks, [shape[0], shape[1], shape[2], tf.shape(cols)[1]])
        masks = tf.matmul(rows[:, None], masks)  # [B, K, Ho, Wo]
    else:
        masks = tf.matmul(rows[:, None], probs)  # [B, K, Ho, Wf]
        flat = tf.reshape(masks, [shape[0], -1, shape[3]])  # [B, K * Ho, Wf]
        masks = tf.matmul(flat, cols, transpose_b=True)  # [B, K * Ho, Wo]
        masks = tf.reshape(masks, [shape[0], shape[1], tf.shape(rows)[1], tf.shape(cols)[1]])
    return masks > threshold


def _boxes_from_masks(masks: tf.Tensor) -> tf.Tensor:
    """float32 [B, K, 4] (ymin, xmin, ymax, xmax), max exclusive, from bool [B, K, Ho, Wo]."""

    def extent(occupied):  # [B, K, N] -> two [B, K]
        size = tf.shape(occupied)[-1]
        position = tf.range(size)
        low = tf.reduce_min(tf.where(occupied, position, size), axis=-1)
        high = tf.reduce_max(tf.where(occupied, position + 1, 0), axis=-1)
        return low, high

    ymin, ymax = extent(tf.reduce_any(masks, axis=3))
    xmin, xmax = extent(tf.reduce_any(masks, axis=2))
    boxes = tf.cast(tf.stack([ymin, xmin, ymax, xmax], axis=-1), tf.float32)
    non_empty = tf.reduce_any(masks, axis=[2, 3])[..., None]
    return tf.where(non_empty, boxes, tf.zeros_like(boxes))
