"""Mask suppression for SOLO: Matrix NMS (SOLOv2) and classic greedy mask NMS.

Both are fixed-shape, class-aware and built from matmul, comparisons, exp, select and
reductions (plus one ``tf.while_loop`` for the greedy NMS), so they run eagerly, inside
``tf.function`` (XLA included) and convert to TFLite with built-in ops only.

Shape letters: P candidates, HW flattened mask pixels; ``...`` any leading batch dims.

Conventions (the authors' ``matrix_nms`` and ``mask_nms`` of the SOLO repository):

* candidates are sorted by score, descending: candidate i can only decay or suppress a
  candidate j > i;
* only candidates of the same class interact;
* ``valid`` marks real candidates: an invalid (padding) one neither decays nor suppresses
  others, and its output score is 0;
* IoU of two empty masks is 0 (the authors' code divides 0 by 0 there).
"""

from __future__ import annotations

from typing import Literal

import tensorflow as tf


def pairwise_same_class_iou(
    masks: tf.Tensor,
    classes: tf.Tensor,
    areas: tf.Tensor | None = None,
    valid: tf.Tensor | None = None,
) -> tf.Tensor:
    """IoU[i, j] of each ordered pair i < j of valid same-class candidates, 0 elsewhere.

    Args:
      masks: float [..., P, HW], binary (0/1) masks.
      classes: int [..., P].
      areas: float [..., P], ``sum(masks, -1)`` when None.
      valid: bool [..., P], all True when None.

    Returns:
      float32 [..., P, P], strictly upper triangular.
    """
    masks = tf.cast(masks, tf.float32)
    if areas is None:
        areas = tf.reduce_sum(masks, axis=-1)
    areas = tf.cast(areas, tf.float32)
    inter = tf.linalg.matmul(masks, masks, transpose_b=True)  # [..., P, P]
    union = areas[..., :, None] + areas[..., None, :] - inter
    iou = tf.math.divide_no_nan(inter, union)

    rank = tf.range(tf.shape(classes)[-1])
    upper = rank[:, None] < rank[None, :]  # [P, P], i higher-scored than j
    same = tf.equal(classes[..., :, None], classes[..., None, :])  # [..., P, P]
    pair = tf.logical_and(upper, same)
    if valid is not None:
        valid = tf.cast(valid, tf.bool)
        pair = pair & valid[..., :, None] & valid[..., None, :]
    return tf.where(pair, iou, tf.zeros_like(iou))


def matrix_nms(
    masks: tf.Tensor,
    classes: tf.Tensor,
    scores: tf.Tensor,
    areas: tf.Tensor | None = None,
    valid: tf.Tensor | None = None,
    kernel: Literal["gaussian", "linear"] = "gaussian",
    sigma: float = 2.0,
) -> tf.Tensor:
    """Matrix NMS: every score decayed by its overlap with higher-scored same-class masks.

    decay_j = min_i f(iou_ij) / f(comp_i), with comp_i = max_k iou_ki the strongest overlap
    of i itself with a higher-scored mask (the compensation), f(x) = exp(-sigma x^2)
    (gaussian) or 1 - x (linear). Pairs that do not interact have iou 0, so their ratio is
    >= 1 and never wins the min (row 0 always gives a ratio <= 1).

    Args:
      masks: float [..., P, HW], binary masks, sorted by ``scores`` descending.
      classes: int [..., P].
      scores: float [..., P], descending.
      areas: float [..., P], ``sum(masks, -1)`` when None.
      valid: bool [..., P]; invalid candidates get score 0 and decay nobody.
      kernel: "gaussian" or "linear".
      sigma: the Gaussian kernel's sigma.

    Returns:
      float32 [..., P], the decayed scores.
    """
    scores = tf.cast(scores, tf.float32)
    decay_iou = pairwise_same_class_iou(masks, classes, areas, valid)  # [..., P, P]
    compensate_iou = tf.reduce_max(decay_iou, axis=-2)[..., :, None]  # [..., P(i), 1]
    if kernel == "gaussian":
        ratio = tf.exp(-sigma * (tf.square(decay_iou) - tf.square(compensate_iou)))
    elif kernel == "linear":
        # 1 - comp_i is 0 only when i duplicates a higher mask k; then row k already holds
        # the same numerator with a non-zero denominator, so any large value is safe here,
        # and 0 / eps = 0 keeps the authors' result for a duplicate of a duplicate.
        ratio = (1.0 - decay_iou) / tf.maximum(1.0 - compensate_iou, 1e-12)
    else:
        raise ValueError(f"unknown Matrix NMS kernel {kernel!r}")
    decay = tf.reduce_min(ratio, axis=-2)  # [..., P]
    new_scores = scores * decay
    if valid is not None:
        new_scores = tf.where(tf.cast(valid, tf.bool), new_scores, tf.zeros_like(new_scores))
    return new_scores


def mask_nms(
    masks: tf.Tensor,
    classes: tf.Tensor,
    scores: tf.Tensor,
    areas: tf.Tensor | None = None,
    valid: tf.Tensor | None = None,
    iou_threshold: float = 0.5,
) -> tf.Tensor:
    """Greedy class-aware mask NMS; suppressed (and invalid) candidates get score 0.

    Candidate j is suppressed iff some *kept* candidate i < j of its class has
    IoU(i, j) > ``iou_threshold``. The greedy result is the unique fixed point of
    keep_j = valid_j and not any_i(keep_i and suppress_ij); iterating that map from
    keep = valid settles at least one more candidate per step (candidate j only depends on
    i < j), so the loop runs at most P times and stops as soon as nothing changes.

    Args and shapes as ``matrix_nms``; returns float32 [..., P].
    """
    scores = tf.cast(scores, tf.float32)
    suppress = pairwise_same_class_iou(masks, classes, areas, valid) > iou_threshold
    suppress = tf.cast(suppress, tf.float32)  # [..., P(i), P(j)]
    if valid is None:
        valid = tf.ones_like(scores, tf.bool)
    start = tf.cast(valid, tf.float32)  # [..., P]
    num_candidates = tf.shape(scores)[-1]

    def step(keep):
        # hits[..., j] = number of kept i that suppress j.
        hits = tf.linalg.matmul(keep[..., None, :], suppress)[..., 0, :]
        return start * tf.cast(hits < 0.5, tf.float32)

    def cond(iteration, keep, changed):
        return tf.logical_and(changed, iteration < num_candidates)

    def body(iteration, keep, changed):
        new_keep = step(keep)
        return iteration + 1, new_keep, tf.reduce_any(tf.not_equal(new_keep, keep))

    _, keep, _ = tf.while_loop(cond, body, (tf.constant(0), start, tf.constant(True)))
    return scores * keep
