"""Tests for solo_tf.targets: hand-worked cells, a loop-based reference, graph modes."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from solo_tf.config import TargetConfig
from solo_tf.targets import build_targets

# Padded input 128 x 128. Level 0: S=8 (16 px cells), sqrt(wh) in [1, 48];
# level 1: S=4 (32 px cells), sqrt(wh) in [24, 128]. G = 64 + 16 = 80.
SIZE = (128, 128)
TINY = TargetConfig(
    num_grids=(8, 4),
    scale_ranges=((1, 48), (24, 128)),
    center_epsilon=0.2,
    max_instances=4,
    mask_stride=4,
)
L1 = 64  # offset of level 1 in the concatenated targets


def _rect(top, bottom, left, right, size=SIZE):
    """uint8 [H, W] mask with rows top..bottom and columns left..right (inclusive) set."""
    mask = np.zeros(size, np.uint8)
    mask[top : bottom + 1, left : right + 1] = 1
    return mask


def _run(masks, classes, crowd=None, config=TINY, size=SIZE):
    masks = np.asarray(masks, np.uint8).reshape((-1, *size))
    classes = np.asarray(classes, np.int32).reshape(-1)
    crowd = np.zeros(len(classes), bool) if crowd is None else np.asarray(crowd, bool)
    out = build_targets(tf.constant(masks), tf.constant(classes), tf.constant(crowd), config, size)
    return {k: v.numpy() for k, v in out.items()}


def _positives(targets):
    """{cell offset: (class, mask index)} of the positive cells."""
    cate, index = targets["cate_targets"], targets["mask_indices"]
    return {int(g): (int(cate[g]), int(index[g])) for g in np.flatnonzero(cate >= 0)}


def test_single_object_hand_worked():
    # Rows 40..59 (h=20), cols 20..35 (w=16): sqrt(320)=17.9 -> level 0 only.
    # cy = 49.5, cx = 27.5. Level 0 (16 px cells): ci = floor(3.09) = 3, cj = floor(1.72) = 1.
    # hh = 0.2*20/2 = 2: top = floor(47.5/16) = 2, bottom = floor(51.5/16) = 3.
    # hw = 1.6: left = floor(25.9/16) = 1, right = floor(29.1/16) = 1.
    # Cells (2, 1) -> 17 and (3, 1) -> 25.
    out = _run([_rect(40, 59, 20, 35)], [5])
    assert _positives(out) == {17: (5, 0), 25: (5, 0)}
    assert out["num_instances"] == 1
    # Stride-4 mask: rows 40..59 are blocks 10..14, cols 20..35 are blocks 5..8, all full.
    expected = np.zeros((4, 32, 32), np.uint8)
    expected[0, 10:15, 5:9] = 1
    np.testing.assert_array_equal(out["instance_masks"], expected)
    assert out["cate_targets"].shape == (80,) and out["mask_indices"].shape == (80,)
    assert out["cate_targets"].dtype == np.int32 and out["instance_masks"].dtype == np.uint8


def test_scale_in_two_ranges_goes_to_both_levels():
    # Rows/cols 64..95: 32 x 32, sqrt = 32 in [1, 48] and [24, 128]. cy = cx = 79.5, hh = 3.2.
    # Level 0: ci = floor(4.97) = 4; top = floor(76.3/16) = 4, bottom = floor(82.7/16) = 5
    #   -> rows/cols 4..5: cells 36, 37, 44, 45.
    # Level 1: ci = floor(79.5/32) = 2; top = floor(76.3/32) = 2, bottom = floor(82.7/32) = 2
    #   -> cell (2, 2) = 10, offset 64 + 10.
    out = _run([_rect(64, 95, 64, 95)], [2])
    assert _positives(out) == {g: (2, 0) for g in (36, 37, 44, 45, L1 + 10)}


def test_large_region_is_clipped_to_3x3():
    # One level with S=32 (4 px cells). Rows/cols 4..123: h = w = 120, cy = cx = 63.5.
    # ci = floor(15.875) = 15; hh = 12: top = floor(51.5/4) = 12, bottom = floor(75.5/4) = 18,
    # clipped to 14..16 (ci +- 1); same for columns -> 9 cells.
    config = dataclasses.replace(TINY, num_grids=(32,), scale_ranges=((1, 256),))
    out = _run([_rect(4, 123, 4, 123)], [1], config=config)
    expected = {i * 32 + j: (1, 0) for i in (14, 15, 16) for j in (14, 15, 16)}
    assert _positives(out) == expected


def test_regions_at_the_image_borders_are_clipped():
    # A: 8x8 block at rows/cols 0..7 plus one pixel at (79, 79): area 65, h = w = 80,
    #   sqrt = 80 -> level 1 only. sum rows = 8 * 28 + 79 = 303, cy = 4.66; hh = 8.
    #   ci = 0; top = floor(-3.34/32) = -1 -> 0; bottom = floor(12.66/32) = 0 -> cell (0, 0).
    # B: 8x8 block at rows/cols 120..127 plus one pixel at (48, 48): area 65, h = w = 80.
    #   sum rows = 8 * 988 + 48 = 7952, cy = 122.34; ci = floor(3.82) = 3;
    #   top = floor(114.34/32) = 3, bottom = floor(130.34/32) = 4 -> S - 1 = 3 -> cell (3, 3).
    a = _rect(0, 7, 0, 7)
    a[79, 79] = 1
    b = _rect(120, 127, 120, 127)
    b[48, 48] = 1
    out = _run([a, b], [3, 4])
    assert _positives(out) == {L1 + 0: (3, 0), L1 + 15: (4, 1)}


# A (index 0): rows/cols 32..63, 32 x 32, area 1024, both levels. cy = 47.5, hh = 3.2.
#   Level 0: ci = 2; top = floor(44.3/16) = 2, bottom = floor(50.7/16) = 3 -> 18 19 26 27.
#   Level 1: ci = 1; top = floor(44.3/32) = 1, bottom = floor(50.7/32) = 1 -> 64 + 5.
# B (index 1): rows/cols 40..55, area 256, level 0 only. cy = 47.5, hh = 1.6:
#   rows/cols floor(45.9/16) = 2 .. floor(49.1/16) = 3 -> the same 4 cells.
# C (index 2): rows/cols 41..56, area 256 (as B). cy = 48.5: rows/cols
#   floor(46.9/16) = 2 .. floor(50.1/16) = 3 -> the same 4 cells.
CONTESTED = [_rect(32, 63, 32, 63), _rect(40, 55, 40, 55), _rect(41, 56, 41, 56)]


def test_later_instance_wins_shared_cells_by_default():
    # The authors write instances in annotation order: C, the last, overwrites A and B.
    assert TINY.contested_cells == "later"
    expected = {g: (2, 2) for g in (18, 19, 26, 27)}
    expected[L1 + 5] = (0, 0)  # A alone on level 1
    assert _positives(_run(CONTESTED, [0, 1, 2])) == expected
    # Reversed order: A is last and takes every cell it claims.
    out = _run(CONTESTED[::-1], [2, 1, 0])
    assert _positives(out) == {**{g: (0, 2) for g in (18, 19, 26, 27)}, L1 + 5: (0, 2)}


def test_smaller_instance_wins_shared_cells_and_ties_go_to_lower_index():
    # B is smaller than A; B and C tie on area and the tie goes to B (lower index).
    smaller = dataclasses.replace(TINY, contested_cells="smaller")
    out = _run(CONTESTED, [0, 1, 2], config=smaller)
    expected = {g: (1, 1) for g in (18, 19, 26, 27)}
    expected[L1 + 5] = (0, 0)
    assert _positives(out) == expected


def test_crowd_instances_are_ignored():
    out = _run([_rect(40, 59, 20, 35), _rect(64, 95, 64, 95)], [5, 2], crowd=[False, True])
    assert _positives(out) == {17: (5, 0), 25: (5, 0)}
    assert out["num_instances"] == 2  # the crowd keeps its row, it is just never assigned


def test_empty_image_is_all_background():
    out = _run(np.zeros((0, *SIZE), np.uint8), np.zeros([0], np.int32))
    assert np.all(out["cate_targets"] == -1) and np.all(out["mask_indices"] == -1)
    assert out["instance_masks"].shape == (4, 32, 32) and not out["instance_masks"].any()
    assert out["num_instances"] == 0


def test_empty_mask_is_ignored():
    out = _run([np.zeros(SIZE, np.uint8), _rect(40, 59, 20, 35)], [7, 5])
    assert _positives(out) == {17: (5, 1), 25: (5, 1)}


def test_mask_downsampling_keeps_blocks_at_least_half_full():
    # Rows 2..5: block row 0 holds rows 2, 3 (8 of 16 pixels -> 1), block row 1 rows 4, 5 -> 1.
    # Rows 3..5: block row 0 holds row 3 only (4 of 16 -> 0), block row 1 -> 1.
    out = _run([_rect(2, 5, 0, 3), _rect(3, 5, 0, 3)], [0, 0])
    np.testing.assert_array_equal(out["instance_masks"][0, :3, :2], [[1, 0], [1, 0], [0, 0]])
    np.testing.assert_array_equal(out["instance_masks"][1, :3, :2], [[0, 0], [1, 0], [0, 0]])


def test_more_than_max_instances_keeps_the_first():
    masks = [_rect(16 * k, 16 * k + 5, 16 * k, 16 * k + 5) for k in range(6)]  # cell (k, k)
    out = _run(masks, range(6))
    assert out["num_instances"] == TINY.max_instances
    assert set(out["mask_indices"][out["mask_indices"] >= 0]) == {0, 1, 2, 3}


# ---------------------------------------------------------------------------------------------
# Loop-based numpy reference: the same rules written plainly, one instance and cell at a time.


def reference_targets(masks, classes, is_crowd, config, size):
    height, width = size
    n_max = config.max_instances
    masks, classes, is_crowd = masks[:n_max], classes[:n_max], is_crowd[:n_max]
    cate_levels, index_levels = [], []
    for num_grid, (low, high) in zip(config.num_grids, config.scale_ranges, strict=True):
        best = {}  # cell -> (area, index)
        for n, mask in enumerate(masks):
            rows, cols = np.nonzero(mask)
            if is_crowd[n] or len(rows) == 0:
                continue
            area = len(rows)
            h = int(rows.max() - rows.min() + 1)
            w = int(cols.max() - cols.min() + 1)
            if not (float(low) ** 2 <= float(h * w) <= float(high) ** 2):
                continue
            sum_rows, sum_cols = int(rows.sum()), int(cols.sum())
            ci = sum_rows * num_grid // (area * height)
            cj = sum_cols * num_grid // (area * width)
            cy = np.float64(sum_rows) / np.float64(area)
            cx = np.float64(sum_cols) / np.float64(area)
            hh = config.center_epsilon * np.float64(h) / 2.0
            hw = config.center_epsilon * np.float64(w) / 2.0
            top = max(0, int(np.floor((cy - hh) / float(height) * float(num_grid))), ci - 1)
            bottom = min(num_grid - 1, int(np.floor((cy + hh) / height * num_grid)), ci + 1)
            left = max(0, int(np.floor((cx - hw) / float(width) * float(num_grid))), cj - 1)
            right = min(num_grid - 1, int(np.floor((cx + hw) / width * num_grid)), cj + 1)
            for i in range(top, bottom + 1):
                for j in range(left, right + 1):
                    later = config.contested_cells == "later"
                    if later or (i, j) not in best or (area, n) < best[(i, j)]:
                        best[(i, j)] = (area, n)
        cate = -np.ones(num_grid * num_grid, np.int32)
        index = -np.ones(num_grid * num_grid, np.int32)
        for (i, j), (_, n) in best.items():
            cate[i * num_grid + j] = classes[n]
            index[i * num_grid + j] = n
        cate_levels.append(cate)
        index_levels.append(index)
    s = config.mask_stride
    small = np.zeros((n_max, height // s, width // s), np.uint8)
    for n, mask in enumerate(masks):
        for y in range(height // s):
            for x in range(width // s):
                small[n, y, x] = 2 * int(mask[y * s : y * s + s, x * s : x * s + s].sum()) >= s * s
    return {
        "cate_targets": np.concatenate(cate_levels),
        "mask_indices": np.concatenate(index_levels),
        "instance_masks": small,
        "num_instances": np.int32(len(masks)),
    }


# Non-square, so a swapped H/W shows up. Level 0: 16 x 12 px cells, level 2: 64 x 48.
RANDOM_SIZE = (128, 96)
RANDOM_CONFIG = TargetConfig(
    num_grids=(8, 6, 2),
    scale_ranges=((1, 32), (16, 64), (40, 160)),
    max_instances=6,
    mask_stride=4,
)


def random_example(seed, size=RANDOM_SIZE):
    """Random rectangles and ellipses (some empty, some crowd), 0..8 instances."""
    rng = np.random.default_rng(seed)
    height, width = size
    num = int(rng.integers(0, 9))
    yy, xx = np.mgrid[:height, :width]
    masks = np.zeros((num, height, width), np.uint8)
    for n in range(num):
        kind = rng.integers(0, 4)
        cy, cx = rng.uniform(-5, height + 5), rng.uniform(-5, width + 5)
        ry, rx = rng.uniform(1, 60), rng.uniform(1, 60)
        if kind == 0:
            masks[n] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        elif kind in (1, 2):
            masks[n] = (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)
        # kind 3: empty mask
    classes = rng.integers(0, 5, num).astype(np.int32)
    is_crowd = rng.uniform(size=num) < 0.15
    return masks, classes, is_crowd


@pytest.mark.parametrize("rule", ["later", "smaller"])
@pytest.mark.parametrize("seed", [*range(8), 23])
def test_matches_loop_reference_on_random_inputs(seed, rule):
    masks, classes, is_crowd = random_example(seed)
    config = dataclasses.replace(RANDOM_CONFIG, contested_cells=rule)
    got = build_targets(masks, classes, is_crowd, config, RANDOM_SIZE)
    want = reference_targets(masks, classes, is_crowd, config, RANDOM_SIZE)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key].numpy(), value, err_msg=key)


def _random_dataset(seeds):
    def generate():
        for seed in seeds:
            yield random_example(seed)

    return tf.data.Dataset.from_generator(
        generate,
        output_signature=(
            tf.TensorSpec([None, *RANDOM_SIZE], tf.uint8),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.bool),
        ),
    )


def test_runs_inside_tf_data_map_and_tf_function():
    seeds = [0, 3, 5, 23]  # 23: no instances
    assert len(random_example(23)[1]) == 0
    mapped = _random_dataset(seeds).map(
        lambda m, c, k: build_targets(m, c, k, RANDOM_CONFIG, RANDOM_SIZE),
        num_parallel_calls=2,
    )
    graph_fn = tf.function(
        lambda m, c, k: build_targets(m, c, k, RANDOM_CONFIG, RANDOM_SIZE),
        input_signature=[
            tf.TensorSpec([None, *RANDOM_SIZE], tf.uint8),
            tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.bool),
        ],
    )
    g = sum(s * s for s in RANDOM_CONFIG.num_grids)
    assert mapped.element_spec["cate_targets"].shape == (g,)
    assert mapped.element_spec["instance_masks"].shape == (6, 32, 24)
    for seed, from_map in zip(seeds, mapped, strict=True):
        example = random_example(seed)
        want = reference_targets(*example, RANDOM_CONFIG, RANDOM_SIZE)
        from_function = graph_fn(*example)
        for key, value in want.items():
            np.testing.assert_array_equal(from_map[key].numpy(), value, err_msg=key)
            np.testing.assert_array_equal(from_function[key].numpy(), value, err_msg=key)
