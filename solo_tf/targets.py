"""SOLO training targets: ground-truth instance masks -> fixed-shape per-image targets.

Pure TensorFlow, no Python loop over instances or cells (only over the few FPN levels), so it
runs eagerly, inside ``tf.function`` and inside ``tf.data.Dataset.map``, with a dynamic number
of instances (zero included).

Shape letters: N instances, N_max ``TargetConfig.max_instances``, H W padded input size,
S grid size of one level, G sum over levels of S^2.

Label assignment (``shared/DESIGN.md``, the authors' SOLO ``solo_target_single``):

* Used instances: not crowd and with a non-empty mask. Only the first N_max instances are kept
  (input order, crowds included); the pipeline warns when it truncates.
* Box: the tight pixel box of the mask; ``h = ymax - ymin + 1`` and ``w = xmax - xmin + 1``
  (pixel counts). The instance goes to every level whose inclusive range holds
  ``sqrt(w * h)``; the test is done exactly as ``lo^2 <= w * h <= hi^2`` in float64.
* Mass centre: the mean row and column *index* of the mask pixels (as
  ``scipy.ndimage.center_of_mass`` in the authors' code; no +0.5 pixel-centre shift).
* Centre cell on a level with grid S over the padded H x W input:
  ``ci = floor(cy / H * S)``, ``cj = floor(cx / W * S)``, computed exactly in integers as
  ``floor(sum_rows * S / (area * H))``.
* Centre region: ``hh = epsilon * h / 2``, ``hw = epsilon * w / 2``;
  ``top = max(0, floor((cy - hh) / H * S))``, ``bottom = min(S - 1, floor((cy + hh) / H * S))``,
  left/right alike, in float64 with that operation order; then clipped to the 3 x 3 cells
  around the centre cell. Every cell of [top..bottom] x [left..right] is positive.
* Conflicts: when several instances claim a cell, ``contested_cells="later"`` (default, the
  authors: their loop writes instances in annotation order, so the later overwrites) gives
  it to the highest instance index; ``"smaller"`` to the smallest by mask area, ties to the
  lower index.
* ``instance_masks``: each mask downsampled to ``mask_stride`` by area average over the
  stride x stride block, 1 iff at least half the block is set (``2 * count >= stride^2``).
"""

from __future__ import annotations

import tensorflow as tf

from solo_tf.config import TargetConfig


def build_targets(
    masks: tf.Tensor,
    classes: tf.Tensor,
    is_crowd: tf.Tensor,
    config: TargetConfig,
    image_size_hw: tuple[int, int],
) -> dict[str, tf.Tensor]:
    """The SOLO targets of one image (``docs/architecture.md`` section 3).

    Args:
      masks: uint8 [N, H, W], 0/1 instance masks at the padded input size.
      classes: int32 [N], contiguous class indices.
      is_crowd: bool [N]; crowd instances are never assigned.
      config: the label-assignment configuration.
      image_size_hw: (H, W), the padded input size (multiples of ``config.mask_stride``):
        Python ints, or int32 scalars when the size is known only at run time (a padded
        batch); the grid spans it.

    Returns:
      ``cate_targets`` int32 [G] (-1 background), ``mask_indices`` int32 [G] (-1 none),
      ``instance_masks`` uint8 [N_max, H/stride, W/stride], ``num_instances`` int32 [].
    """
    height, width = (_static_or_tensor(v) for v in image_size_hw)
    n_max = int(config.max_instances)
    with tf.name_scope("build_targets"):
        masks = tf.convert_to_tensor(masks, tf.uint8)[:n_max]
        classes = tf.cast(classes, tf.int32)[:n_max]
        is_crowd = tf.cast(is_crowd, tf.bool)[:n_max]
        num_instances = tf.shape(masks)[0]
        masks_i32 = tf.cast(masks, tf.int32)  # [N, H, W]
        stride = config.mask_stride
        # Sums over runs of `stride` columns: a 4x smaller tensor that both the row counts
        # and the stride-4 block counts are reduced from.
        strips = tf.reduce_sum(
            tf.reshape(masks_i32, [-1, height, width // stride, stride]), axis=3
        )  # [N, H, W/stride]
        stats = _instance_stats(tf.reduce_sum(strips, axis=2), tf.reduce_sum(masks_i32, axis=1))
        used = tf.logical_and(tf.logical_not(is_crowd), stats["area"] > 0)  # [N]
        priority = _conflict_priority(stats["area"], n_max, config.contested_cells)  # [N]
        box_area = tf.cast(stats["h"] * stats["w"], tf.float64)  # [N]

        cate_levels, index_levels = [], []
        for num_grid, (low, high) in zip(config.num_grids, config.scale_ranges, strict=True):
            in_level = used & _in_range(box_area, low, high)
            region = _center_region(stats, num_grid, height, width, config.center_epsilon)
            cate, index = _assign_cells(region, in_level, priority, classes, num_grid, n_max)
            cate_levels.append(cate)
            index_levels.append(index)

        instance_masks = _downsample_masks(strips, stride)
        instance_masks = tf.pad(instance_masks, [[0, n_max - num_instances], [0, 0], [0, 0]])
        instance_masks = tf.ensure_shape(
            instance_masks,
            [n_max, *(v // stride if isinstance(v, int) else None for v in (height, width))],
        )
        return {
            "cate_targets": tf.concat(cate_levels, axis=0),
            "mask_indices": tf.concat(index_levels, axis=0),
            "instance_masks": instance_masks,
            "num_instances": num_instances,
        }


def has_positive_cells(masks: tf.Tensor, is_crowd: tf.Tensor, config: TargetConfig) -> tf.Tensor:
    """bool []: whether ``build_targets`` gives the image a positive cell, at any padded size.

    True iff one of the first N_max instances is used (not crowd, non-empty mask) and in the
    scale range of some level: such an instance always holds at least its centre cell. So a
    training pipeline can drop empty images before it knows the size of their batch.

    Args:
      masks: uint8 [N, H, W]; is_crowd: bool [N].
    """
    n_max = int(config.max_instances)
    masks = tf.cast(masks[:n_max], tf.int32)
    stats = _instance_stats(tf.reduce_sum(masks, axis=2), tf.reduce_sum(masks, axis=1))
    used = tf.logical_and(tf.logical_not(tf.cast(is_crowd[:n_max], tf.bool)), stats["area"] > 0)
    box_area = tf.cast(stats["h"] * stats["w"], tf.float64)  # [N]
    in_any = tf.zeros_like(used)
    for low, high in config.scale_ranges:
        in_any = in_any | _in_range(box_area, low, high)
    return tf.reduce_any(used & in_any)


def _in_range(box_area: tf.Tensor, low: float, high: float) -> tf.Tensor:
    """bool [N]: low <= sqrt(box_area) <= high, exactly (squares of float64 [N] areas)."""
    return (box_area >= float(low) ** 2) & (box_area <= float(high) ** 2)


def _static_or_tensor(value):
    """A Python int when ``value`` is known statically, else an int64 scalar tensor."""
    static = tf.get_static_value(value)
    return int(static) if static is not None else tf.cast(value, tf.int64)


def _conflict_priority(area: tf.Tensor, n_max: int, rule: str) -> tf.Tensor:
    """Key of each instance for contested cells, int64 [N]: the smallest key wins.

    key = rank * n_max + index, so ``key % n_max`` gives the instance back (index < n_max).
    """
    index = tf.range(tf.shape(area)[0], dtype=tf.int64)  # [N]
    if rule == "later":
        return (n_max - 1 - index) * n_max + index
    if rule == "smaller":
        return area * n_max + index
    raise ValueError(f"contested_cells must be 'later' or 'smaller', got {rule!r}")


def _instance_stats(row_counts: tf.Tensor, col_counts: tf.Tensor) -> dict[str, tf.Tensor]:
    """Area, tight box size and index sums (for the mass centre) of each mask, int64 [N].

    Args:
      row_counts: int32 [N, H], set pixels per row; col_counts: int32 [N, W], per column.
    """
    row_counts = tf.cast(row_counts, tf.int64)
    col_counts = tf.cast(col_counts, tf.int64)
    area = tf.reduce_sum(row_counts, axis=1)  # [N]
    rows = tf.range(tf.shape(row_counts)[1], dtype=tf.int64)  # [H]
    cols = tf.range(tf.shape(col_counts)[1], dtype=tf.int64)  # [W]
    return {
        "area": area,
        "sum_rows": tf.reduce_sum(row_counts * rows, axis=1),
        "sum_cols": tf.reduce_sum(col_counts * cols, axis=1),
        "h": _extent(row_counts > 0),
        "w": _extent(col_counts > 0),
    }


def _extent(occupied: tf.Tensor) -> tf.Tensor:
    """Span in pixels (last - first + 1) of the True entries of each row, 0 if none: [N]."""
    length = tf.shape(occupied, out_type=tf.int64)[1]
    first = tf.argmax(tf.cast(occupied, tf.int32), axis=1)  # [N]
    last = length - 1 - tf.argmax(tf.cast(occupied[:, ::-1], tf.int32), axis=1)  # [N]
    return tf.where(tf.reduce_any(occupied, axis=1), last - first + 1, 0)


def _center_region(
    stats: dict[str, tf.Tensor], num_grid: int, height, width, epsilon: float
) -> tuple[tf.Tensor, ...]:
    """Inclusive (top, bottom, left, right) positive cells of each instance, int32 [N] each."""
    area = tf.maximum(stats["area"], 1)  # empty masks are filtered by the caller
    # Centre cell, exact: floor((sum / area) / H * S) == floor(sum * S / (area * H)).
    ci = tf.minimum(stats["sum_rows"] * num_grid // (area * height), num_grid - 1)
    cj = tf.minimum(stats["sum_cols"] * num_grid // (area * width), num_grid - 1)
    height, width = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    cy = tf.cast(stats["sum_rows"], tf.float64) / tf.cast(area, tf.float64)
    cx = tf.cast(stats["sum_cols"], tf.float64) / tf.cast(area, tf.float64)
    half_h = epsilon * tf.cast(stats["h"], tf.float64) / 2.0
    half_w = epsilon * tf.cast(stats["w"], tf.float64) / 2.0

    def cell(coord, size):
        return tf.cast(tf.floor(coord / size * float(num_grid)), tf.int64)

    top = tf.maximum(tf.maximum(cell(cy - half_h, height), 0), ci - 1)
    bottom = tf.minimum(tf.minimum(cell(cy + half_h, height), num_grid - 1), ci + 1)
    left = tf.maximum(tf.maximum(cell(cx - half_w, width), 0), cj - 1)
    right = tf.minimum(tf.minimum(cell(cx + half_w, width), num_grid - 1), cj + 1)
    return tuple(tf.cast(v, tf.int32) for v in (top, bottom, left, right))


def _assign_cells(
    region: tuple[tf.Tensor, ...],
    in_level: tf.Tensor,
    priority: tf.Tensor,
    classes: tf.Tensor,
    num_grid: int,
    n_max: int,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Class and instance index of each cell of one level, int32 [S * S] each (-1 empty)."""
    top, bottom, left, right = region  # [N] each
    cells = tf.range(num_grid, dtype=tf.int32)  # [S]
    rows = (cells[None, :] >= top[:, None]) & (cells[None, :] <= bottom[:, None])  # [N, S]
    cols = (cells[None, :] >= left[:, None]) & (cells[None, :] <= right[:, None])  # [N, S]
    claims = rows[:, :, None] & cols[:, None, :] & in_level[:, None, None]  # [N, S, S]
    no_claim = tf.constant(tf.int64.max, tf.int64)
    keys = tf.where(claims, priority[:, None, None], no_claim)  # [N, S, S]
    best = tf.reshape(tf.reduce_min(keys, axis=0), [num_grid * num_grid])  # [S*S]
    positive = best < no_claim
    winner = tf.cast(tf.where(positive, best % n_max, -1), tf.int32)  # [S*S]
    # Gather through a sentinel row so that N == 0 never indexes an empty tensor.
    sentinel = tf.shape(classes)[0]
    classes_ext = tf.concat([classes, [-1]], axis=0)  # [N + 1]
    cate = tf.gather(classes_ext, tf.where(positive, winner, sentinel))
    return cate, winner


def _downsample_masks(strips: tf.Tensor, stride: int) -> tf.Tensor:
    """uint8 [N, H/stride, W/stride]: 1 where at least half of the stride^2 block is set.

    Args:
      strips: int32 [N, H, W/stride], sums over runs of ``stride`` columns.
    """
    shape = tf.shape(strips)
    blocks = tf.reshape(strips, [shape[0], shape[1] // stride, stride, shape[2]])
    counts = tf.reduce_sum(blocks, axis=2)  # [N, H/stride, W/stride]
    return tf.cast(2 * counts >= stride * stride, tf.uint8)
