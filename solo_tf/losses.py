"""SOLO losses: sigmoid focal loss on the category grid, Dice loss on the masks (pure TF).

Shape letters: B batch, G grid cells over all levels (sum S_l^2), C classes, N instances,
S grid size of a level, Hm Wm mask size of a level, P positive cells.

Normalisation and distribution. ``L = cate_weight * L_cate + mask_weight * L_mask`` with
  L_cate = (focal loss summed over every cell and class) / (num_pos + 1)
  L_mask = (Dice loss summed over positive cells) / max(num_pos, 1)
where num_pos counts the positive cells of the whole (global) batch. Both are sums divided
by a batch-wide count, so with ``num_pos_global`` set to the positives of the global batch
(``count_positives`` on each replica, then a cross-replica SUM) each replica's loss covers
its own images and the SUM over replicas of the per-replica losses (and gradients, which
MirroredStrategy sums by default) equals the single-replica loss of the whole batch. No
positives gives L_mask == 0 exactly.

Mask targets: ``instance_masks`` are stored at the finest mask stride (4). A level whose mask
stride is f times coarser averages each f x f block of the 0/1 mask and thresholds the
average at 0.5, giving binary targets like the authors' rescaling of 0/1 masks. SOLOv2
predicts every level's masks at stride 4 (``ModelConfig.mask_strides``), so its Dice loss
takes the stride-4 instance masks as they are, at every level. Each positive cell's mask
comes from ``solo_tf.cell_masks.cell_mask_probs``, the function post-processing uses too.
"""

from __future__ import annotations

import tensorflow as tf

from solo_tf.cell_masks import cell_mask_probs, dynamic_positive_probs
from solo_tf.config import LossConfig, ModelConfig


def _float(x):
    """float64 stays float64 (gradient checks); everything else becomes float32."""
    x = tf.convert_to_tensor(x)
    return x if x.dtype == tf.float64 else tf.cast(x, tf.float32)


def sigmoid_focal_loss(logits, targets, alpha: float = 0.25, gamma: float = 2.0):
    """Sigmoid focal loss (Lin et al. 2017) summed over all elements -> scalar.

    FL = -alpha_t (1 - p_t)^gamma log(p_t), p_t = p for target 1 and 1 - p for target 0,
    alpha_t = alpha for target 1 and 1 - alpha for target 0.

    Args:
      logits: [..., C] raw scores.
      targets: [..., C] one-hot (0/1) targets, same shape.
    """
    logits = _float(logits)
    targets = tf.cast(targets, logits.dtype)
    probs = tf.sigmoid(logits)
    cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    p_t = probs * targets + (1.0 - probs) * (1.0 - targets)
    alpha_t = alpha * targets + (1.0 - alpha) * (1.0 - targets)
    return tf.reduce_sum(alpha_t * tf.pow(1.0 - p_t, gamma) * cross_entropy)


def dice_loss(probs, targets, eps: float = 1e-3):
    """Dice loss of each mask: 1 - 2 sum(p q) / ((sum p^2 + eps) + (sum q^2 + eps)) -> [P].

    eps is added to each of the two sums, as in the authors' code (0.001 each), so an empty
    prediction against an empty target costs 1 - 0 / 0.002 = 1 rather than NaN.

    Args:
      probs: [P, ...] mask probabilities.
      targets: [P, ...] 0/1 (or soft) targets.
    """
    probs = _float(probs)
    targets = tf.cast(targets, probs.dtype)
    p = tf.reshape(probs, [tf.shape(probs)[0], -1])  # [P, Hm * Wm]
    q = tf.reshape(targets, [tf.shape(targets)[0], -1])
    intersection = tf.reduce_sum(p * q, axis=1)
    denominator = (tf.reduce_sum(p * p, axis=1) + eps) + (tf.reduce_sum(q * q, axis=1) + eps)
    return 1.0 - 2.0 * intersection / denominator


def count_positives(cate_targets):
    """Positive cells in int32 [B, G] category targets -> float32 scalar."""
    return tf.reduce_sum(tf.cast(cate_targets >= 0, tf.float32))


def downsample_masks(masks, factor: int):
    """0/1 masks [P, h, w] -> [P, h / factor, w / factor]: block average >= 0.5 (float32)."""
    masks = tf.cast(masks, tf.float32)
    if factor == 1:
        return masks
    pooled = tf.nn.avg_pool2d(masks[..., None], factor, factor, "VALID")[..., 0]
    return tf.cast(pooled >= 0.5, tf.float32)


def category_loss_sum(outputs, cate_targets, model_config: ModelConfig, loss_config: LossConfig):
    """Focal loss summed over all cells of all levels and all classes -> scalar."""
    batch = tf.shape(cate_targets)[0]
    logits = tf.concat(
        [
            tf.reshape(_float(outputs[f"cate_logits_{level}"]), [batch, s * s, -1])
            for level, s in enumerate(model_config.num_grids)
        ],
        axis=1,
    )  # [B, G, C]
    onehot = tf.one_hot(cate_targets, model_config.num_classes, dtype=logits.dtype)  # -1 -> 0s
    return sigmoid_focal_loss(logits, onehot, loss_config.focal_alpha, loss_config.focal_gamma)


def mask_loss_sum(outputs, mask_indices, instance_masks, model_config: ModelConfig):
    """Dice loss summed over the positive cells of all levels -> scalar (0 when none).

    Args:
      mask_indices: int32 [B, G], row of ``instance_masks`` per cell, -1 for negatives.
      instance_masks: uint8 [B, N, H/4, W/4].
    """
    finest = min(model_config.mask_strides)
    if model_config.head_type == "solov2":
        # Every level's masks are on the one stride-4 map: all positives, image by image.
        probs, batch_index, rows = dynamic_positive_probs(
            outputs, mask_indices, model_config.num_grids
        )  # [P, Hf, Wf]
        targets = tf.gather_nd(instance_masks, tf.stack([batch_index, rows], axis=1))
        return tf.cast(tf.reduce_sum(dice_loss(probs, targets)), tf.float32)
    total = tf.constant(0.0, tf.float32)
    offset = 0
    for level, s in enumerate(model_config.num_grids):
        level_indices = mask_indices[:, offset : offset + s * s]  # [B, S^2]
        offset += s * s
        positives = tf.cast(tf.where(level_indices >= 0), tf.int32)  # [P, 2]: (b, k)
        rows = tf.gather_nd(level_indices, positives)  # [P]
        probs = cell_mask_probs(
            outputs, level, positives[:, 0], positives[:, 1], model_config.head_type, s
        )  # [P, Hm, Wm]
        targets = tf.gather_nd(instance_masks, tf.stack([positives[:, 0], rows], axis=1))
        targets = downsample_masks(targets, model_config.mask_strides[level] // finest)
        total += tf.cast(tf.reduce_sum(dice_loss(probs, targets)), tf.float32)
    return total


def solo_loss(
    outputs,
    targets,
    model_config: ModelConfig,
    loss_config: LossConfig,
    num_pos_global=None,
):
    """The SOLO training loss of one (per-replica) batch -> dict of float32 scalars.

    Args:
      outputs: the model's output dict (docs/architecture.md section 4).
      targets: batched training targets (section 3): ``cate_targets`` int32 [B, G],
        ``mask_indices`` int32 [B, G], ``instance_masks`` uint8 [B, N, H/4, W/4].
      num_pos_global: positive cells of the global batch (cross-replica sum of
        ``count_positives``); None uses this batch's own count (single replica).

    Returns:
      ``loss`` (weighted total), ``loss_cate``, ``loss_mask`` and ``num_pos`` (positive
      cells of this batch, float32). With ``num_pos_global`` the losses are this replica's
      share: summing them over replicas gives the loss of the global batch.
    """
    num_pos = count_positives(targets["cate_targets"])
    normaliser = num_pos if num_pos_global is None else tf.cast(num_pos_global, tf.float32)
    cate_sum = category_loss_sum(outputs, targets["cate_targets"], model_config, loss_config)
    mask_sum = mask_loss_sum(
        outputs, targets["mask_indices"], targets["instance_masks"], model_config
    )
    loss_cate = tf.cast(cate_sum, tf.float32) / (normaliser + 1.0)
    loss_mask = mask_sum / tf.maximum(normaliser, 1.0)
    loss = loss_config.cate_weight * loss_cate + loss_config.mask_weight * loss_mask
    return {"loss": loss, "loss_cate": loss_cate, "loss_mask": loss_mask, "num_pos": num_pos}
