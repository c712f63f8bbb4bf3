"""Mask probabilities of chosen grid cells, for every SOLO head (shared by loss and inference).

Shape letters: B batch, S grid size of the level, Hm Wm mask size of the level (SOLOv2: Hf Wf,
stride 4 for every level), E SOLOv2 mask feature channels, P chosen (image, cell) pairs. Pure
TF with TFLite builtins only (GATHER, GATHER_ND, TRANSPOSE, BATCH_MATMUL, ...).

SOLOv2's mask of cell k is sigmoid(kernel_k . features): ``dynamic_mask_probs``, a matmul of
the chosen cells' kernels with the image's mask features, is the one place that computes it
(never a convolution with run-time weights, which TFLite built-ins, ONNX and TensorRT
exporters cannot take).
"""

from __future__ import annotations

import tensorflow as tf

# With an unknown number of rows (the loss: positives found by tf.where) the transpose path is
# used only for heads with few channels per level (decoupled: S <= 64).
_DYNAMIC_TRANSPOSE_MAX_CHANNELS = 64
HEAD_TYPES = ("vanilla", "decoupled", "solov2")


def _gather_channels(logits, batch_index, channel_index):
    """logits [B, Hm, Wm, K] -> [P, Hm, Wm]: row p = logits[batch_index[p], :, :, channel_index[p]].

    Two equivalent ways, picked when tracing by which moves less memory: transposing the
    logits to [B * K, Hm, Wm] and gathering rows (B*K*Hm*Wm), or gathering the P channels
    first into [B, Hm, Wm, P] and then each row's image (B*P*Hm*Wm). The result is float32
    (float64 when the logits are float64, for gradient checks).
    """
    num_channels = logits.shape[-1]
    num_rows = channel_index.shape[0]
    if num_rows is None:
        by_transpose = num_channels <= _DYNAMIC_TRANSPOSE_MAX_CHANNELS
    else:
        by_transpose = num_rows > num_channels
    shape = tf.shape(logits)
    if by_transpose:
        flat = tf.transpose(logits, [0, 3, 1, 2])  # [B, K, Hm, Wm]
        flat = tf.reshape(flat, tf.stack([-1, shape[1], shape[2]]))  # [B * K, Hm, Wm]
        picked = tf.gather(flat, batch_index * shape[3] + channel_index)  # [P, Hm, Wm]
    else:
        picked = tf.gather(logits, channel_index, axis=3)  # [B, Hm, Wm, P]
        picked = tf.transpose(picked, [3, 0, 1, 2])  # [P, B, Hm, Wm]
        rows = tf.range(tf.shape(channel_index)[0], dtype=channel_index.dtype)
        picked = tf.gather_nd(picked, tf.stack([rows, batch_index], axis=1))  # [P, Hm, Wm]
    return _as_float(picked)


def cell_mask_probs(outputs, level, batch_index, cell_index, head_type, num_grid):
    """Mask probabilities of P (image, cell) pairs of one level -> float32 [P, Hm, Wm].

    Args:
      outputs: the model's output dict (docs/architecture.md section 4), any float dtype.
      level: the level l (Python int).
      batch_index: int32 [P], image of each pair.
      cell_index: int32 [P], cell k = i * S + j of each pair (row i, column j).
      head_type: "vanilla" (sigmoid of channel k), "decoupled"
        (sigmoid(X[..., j]) * sigmoid(Y[..., i])) or "solov2" (``dynamic_mask_probs`` of
        cell k's kernel and image b's mask features).
      num_grid: S of the level (Python int).

    P may be 0 (the result is then [0, Hm, Wm]).
    """
    batch_index = tf.cast(batch_index, tf.int32)
    cell_index = tf.cast(cell_index, tf.int32)
    if head_type == "vanilla":
        logits = _gather_channels(outputs[f"mask_logits_{level}"], batch_index, cell_index)
        return tf.sigmoid(logits)
    if head_type == "decoupled":
        row = cell_index // num_grid  # i
        col = cell_index - row * num_grid  # j
        x_logits = _gather_channels(outputs[f"mask_x_logits_{level}"], batch_index, col)
        y_logits = _gather_channels(outputs[f"mask_y_logits_{level}"], batch_index, row)
        return tf.sigmoid(x_logits) * tf.sigmoid(y_logits)
    if head_type == "solov2":
        kernels = tf.gather_nd(
            level_kernels(outputs, level), tf.stack([batch_index, cell_index], 1)
        )
        return _dynamic_pairs(outputs["mask_features"], batch_index, kernels)
    raise ValueError(f"head_type must be one of {HEAD_TYPES}, got {head_type!r}")


def level_kernels(outputs, level):
    """SOLOv2's ``kernel_preds_{l}`` [B, S, S, E] -> [B, S^2, E], row k = i * S + j."""
    kernels = outputs[f"kernel_preds_{level}"]
    shape = tf.shape(kernels)
    return tf.reshape(kernels, tf.stack([shape[0], shape[1] * shape[2], shape[3]]))


def dynamic_mask_probs(mask_features, kernels):
    """SOLOv2 masks: sigmoid(kernel . features) per image -> float32 [B, P, Hf, Wf].

    Args:
      mask_features: [B, Hf, Wf, E], the model's ``mask_features``.
      kernels: [B, P, E], image b's P chosen cells' kernels (from ``kernel_preds_{l}``).

    One batched matmul [B, P, E] x [B, E, Hf * Wf] in the features' dtype (the kernels are
    cast to it), then float32 (float64 stays float64, for gradient checks).
    """
    shape = tf.shape(mask_features)
    flat = tf.reshape(mask_features, tf.stack([shape[0], shape[1] * shape[2], shape[3]]))
    logits = tf.matmul(tf.cast(kernels, flat.dtype), flat, transpose_b=True)  # [B, P, Hf*Wf]
    num_cells = kernels.shape[1] if kernels.shape[1] is not None else tf.shape(kernels)[1]
    logits = tf.reshape(logits, tf.stack([shape[0], num_cells, shape[1], shape[2]]))
    return tf.sigmoid(_as_float(logits))  # P stays static when known (fixed-shape outputs)


def _dynamic_pairs(mask_features, batch_index, kernels):
    """``dynamic_mask_probs`` of P (image, kernel) pairs: kernels [P, E] -> [P, Hf, Wf].

    With a batch size known when tracing (training), each image's pairs are matched against
    that image's features only and the results put back in pair order (P * Hf * Wf * E
    multiply-adds, as the authors' per-image loop); otherwise every pair is matched against
    every image and its own image picked (B times the work, same values).
    """
    batch = mask_features.shape[0]
    if batch is None:
        everyone = tf.broadcast_to(
            kernels[None], tf.concat([tf.shape(mask_features)[:1], tf.shape(kernels)], 0)
        )
        probs = dynamic_mask_probs(mask_features, everyone)  # [B, P, Hf, Wf]
        rows = tf.range(tf.shape(batch_index)[0])
        return tf.gather_nd(probs, tf.stack([batch_index, rows], axis=1))  # [P, Hf, Wf]
    positions, parts = [], []
    for b in range(batch):
        where = tf.cast(tf.where(tf.equal(batch_index, b))[:, 0], tf.int32)  # [P_b]
        positions.append(where)
        parts.append(
            dynamic_mask_probs(mask_features[b : b + 1], tf.gather(kernels, where)[None])[0]
        )
    return tf.dynamic_stitch(positions, parts)  # [P, Hf, Wf]


def dynamic_positive_probs(outputs, mask_indices, num_grids):
    """SOLOv2 training: the mask of every positive cell of every level, image by image.

    Args:
      outputs: the model's output dict with ``kernel_preds_{l}`` and ``mask_features``
        [B, Hf, Wf, E].
      mask_indices: int32 [B, G], G = sum of S^2 over the levels in level order (row
        k = i * S + j within a level), the instance of each cell, -1 for negatives.
      num_grids: S of each level.

    Returns:
      (probs float32 [P, Hf, Wf], batch_index int32 [P], rows int32 [P]): for each positive
      pair, its mask (``_dynamic_pairs``, as ``cell_mask_probs`` and the post-processing
      compute it) and its image and instance. Pairs come image by image, each image's levels
      in order: the masks of ``cell_mask_probs`` level by level, in another order. All levels
      share the one mask feature map, so with the batch size known when tracing this is one
      matmul per image instead of one per image and level (a fifth of the small ops of the
      training step's mask loss at five levels, forward and backward).
    """
    kernels = tf.concat([level_kernels(outputs, level) for level in range(len(num_grids))], axis=1)
    positives = tf.cast(tf.where(mask_indices >= 0), tf.int32)  # [P, 2]: (b, g), image by image
    batch_index = positives[:, 0]
    probs = _dynamic_pairs(
        outputs["mask_features"], batch_index, tf.gather_nd(kernels, positives)
    )  # [P, Hf, Wf]
    return probs, batch_index, tf.gather_nd(mask_indices, positives)


def _gather_channels_per_image(logits, cells):
    """logits [B, Hm, Wm, K], cells [B, P] -> [B, P, Hm, Wm]: each image's own channels."""
    picked = tf.gather(logits, cells, axis=3, batch_dims=1)  # [B, Hm, Wm, P]
    return _as_float(tf.transpose(picked, [0, 3, 1, 2]))


def _as_float(logits):
    """float32 (float64 stays float64, for gradient checks)."""
    return tf.cast(logits, tf.float64 if logits.dtype == tf.float64 else tf.float32)


def _lazy_logits_per_image(outputs, level, cells):
    """The vanilla head's lazy outputs (``SOLOHead.lazy_mask_outputs``) -> logits of the
    chosen cells [B, P, Hm, Wm] (float32).

    The last mask conv is 1x1: logits[..., k] = features . kernel[:, k] + bias[k]. With fewer
    cells in the level than candidates (S^2 <= P) all channels are computed (one matmul,
    then the gather); otherwise only the P candidates' kernel columns are gathered and
    applied, which costs P instead of S^2 channels and never builds the [B, Hm, Wm, S^2]
    logits.
    """
    features = outputs[f"mask_features_{level}"]  # [B, Hm, Wm, F]
    kernel = outputs[f"mask_kernel_{level}"]  # [F, S^2]
    bias = outputs[f"mask_bias_{level}"]  # [S^2]
    shape = tf.shape(features)
    num_cells, num_candidates = kernel.shape[-1], cells.shape[-1]
    if num_candidates is not None and num_cells <= num_candidates:
        flat = tf.reshape(features, tf.stack([-1, shape[3]]))  # [B * Hm * Wm, F]
        logits = tf.matmul(flat, kernel) + bias  # [B * Hm * Wm, S^2]
        logits = tf.reshape(logits, tf.concat([shape[:3], [num_cells]], 0))
        return _gather_channels_per_image(logits, cells)
    flat = tf.reshape(features, tf.stack([shape[0], shape[1] * shape[2], shape[3]]))
    columns = tf.transpose(tf.gather(kernel, cells, axis=1), [1, 0, 2])  # [B, F, P]
    logits = tf.matmul(flat, columns) + tf.gather(bias, cells)[:, None, :]  # [B, Hm*Wm, P]
    logits = tf.reshape(logits, tf.stack([shape[0], shape[1], shape[2], -1]))
    return _as_float(tf.transpose(logits, [0, 3, 1, 2]))  # [B, P, Hm, Wm]


def batched_cell_mask_probs(outputs, level, cells, head_type, num_grid):
    """Like ``cell_mask_probs`` for P cells of every image: cells int32 [B, P] ->
    float32 [B, P, Hm, Wm]. Memory is linear in B, whatever is known when tracing.

    For the vanilla head, ``outputs`` may hold either ``mask_logits_{l}`` or the lazy
    outputs of ``SOLOHead.lazy_mask_outputs`` (``mask_features_{l}``, ``mask_kernel_{l}``,
    ``mask_bias_{l}``). For SOLOv2 only the P cells' masks are computed."""
    cells = tf.cast(cells, tf.int32)
    if head_type == "vanilla":
        if f"mask_features_{level}" in outputs:
            return tf.sigmoid(_lazy_logits_per_image(outputs, level, cells))
        return tf.sigmoid(_gather_channels_per_image(outputs[f"mask_logits_{level}"], cells))
    if head_type == "decoupled":
        row = cells // num_grid  # i
        col = cells - row * num_grid  # j
        x_logits = _gather_channels_per_image(outputs[f"mask_x_logits_{level}"], col)
        y_logits = _gather_channels_per_image(outputs[f"mask_y_logits_{level}"], row)
        return tf.sigmoid(x_logits) * tf.sigmoid(y_logits)
    if head_type == "solov2":
        kernels = tf.gather(level_kernels(outputs, level), cells, axis=1, batch_dims=1)
        return dynamic_mask_probs(outputs["mask_features"], kernels)  # [B, P, Hf, Wf]
    raise ValueError(f"head_type must be one of {HEAD_TYPES}, got {head_type!r}")
