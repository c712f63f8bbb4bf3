"""Matrix NMS and greedy mask NMS on hand-worked cases and against plain numpy loops."""

import math

import numpy as np
import pytest
import tensorflow as tf

from solo_tf.matrix_nms import mask_nms, matrix_nms


def _masks(*pixel_ranges, width=12):
    """Binary 1-D 'masks' [P, width]: mask p covers pixels [lo, hi)."""
    masks = np.zeros((len(pixel_ranges), width), np.float32)
    for p, (lo, hi) in enumerate(pixel_ranges):
        masks[p, lo:hi] = 1.0
    return masks


def _numpy_matrix_nms(masks, classes, scores, valid, kernel, sigma):
    """The decay written as loops over pairs, independently of the matrix formulation."""
    num = len(scores)
    areas = masks.sum(-1)

    def iou(i, j):
        if not (valid[i] and valid[j] and classes[i] == classes[j] and i < j):
            return 0.0
        inter = float(masks[i] @ masks[j])
        union = areas[i] + areas[j] - inter
        return inter / union if union > 0 else 0.0

    def f(x):
        return math.exp(-sigma * x * x) if kernel == "gaussian" else 1.0 - x

    comp = [max([iou(k, i) for k in range(num)] + [0.0]) for i in range(num)]
    out = np.zeros(num, np.float32)
    for j in range(num):
        if not valid[j]:
            continue
        decay = 1.0
        for i in range(j):
            if iou(i, j) > 0 and f(comp[i]) > 0:
                decay = min(decay, f(iou(i, j)) / f(comp[i]))
        out[j] = scores[j] * decay
    return out


def _numpy_mask_nms(masks, classes, scores, valid, threshold):
    keep = np.array(valid, bool)
    areas = masks.sum(-1)
    for i in range(len(scores)):
        if not keep[i]:
            continue
        for j in range(i + 1, len(scores)):
            inter = float(masks[i] @ masks[j])
            union = areas[i] + areas[j] - inter
            if keep[j] and classes[i] == classes[j] and union > 0 and inter / union > threshold:
                keep[j] = False
    return np.where(keep, scores, 0.0).astype(np.float32)


def test_identical_masks_same_class():
    masks = _masks((0, 4), (0, 4))
    classes, scores = np.array([1, 1]), np.array([0.9, 0.8], np.float32)
    gauss = matrix_nms(masks, classes, scores, kernel="gaussian", sigma=2.0).numpy()
    np.testing.assert_allclose(gauss, [0.9, 0.8 * math.exp(-2.0)], rtol=1e-6)
    linear = matrix_nms(masks, classes, scores, kernel="linear").numpy()
    np.testing.assert_allclose(linear, [0.9, 0.0], atol=1e-7)


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_disjoint_or_other_class_no_decay(kernel):
    scores = np.array([0.9, 0.8], np.float32)
    disjoint = matrix_nms(_masks((0, 4), (4, 8)), np.array([0, 0]), scores, kernel=kernel)
    np.testing.assert_allclose(disjoint.numpy(), scores)
    other = matrix_nms(_masks((0, 4), (0, 4)), np.array([0, 1]), scores, kernel=kernel)
    np.testing.assert_allclose(other.numpy(), scores)


def test_three_masks_with_compensation():
    # A = [0, 4), B = [3, 7), C = [4, 8): IoU(A,B) = 1/7, IoU(A,C) = 0, IoU(B,C) = 3/5.
    # comp_B = 1/7, comp_C = 3/5.
    # gaussian: decay_B = exp(-2/49); decay_C = min(1, exp(-2 (9/25 - 1/49))).
    # linear:   decay_B = 6/7;        decay_C = min(1, (2/5) / (6/7)) = 7/15.
    masks = _masks((0, 4), (3, 7), (4, 8))
    classes, scores = np.array([2, 2, 2]), np.array([0.9, 0.8, 0.7], np.float32)
    gauss = matrix_nms(masks, classes, scores, kernel="gaussian", sigma=2.0).numpy()
    expected = [0.9, 0.8 * math.exp(-2 / 49), 0.7 * math.exp(-2 * (9 / 25 - 1 / 49))]
    np.testing.assert_allclose(gauss, expected, rtol=1e-6)
    linear = matrix_nms(masks, classes, scores, kernel="linear").numpy()
    np.testing.assert_allclose(linear, [0.9, 0.8 * 6 / 7, 0.7 * 7 / 15], rtol=1e-6)


def test_padding_neither_decays_nor_is_decayed():
    masks = _masks((0, 4), (0, 4), (0, 4))
    classes, scores = np.array([0, 0, 0]), np.array([0.9, 0.8, 0.7], np.float32)
    valid = np.array([False, True, True])
    out = matrix_nms(masks, classes, scores, valid=valid).numpy()
    np.testing.assert_allclose(out, [0.0, 0.8, 0.7 * math.exp(-2.0)], rtol=1e-6)
    out = mask_nms(masks, classes, scores, valid=valid).numpy()
    np.testing.assert_allclose(out, [0.0, 0.8, 0.0])


def test_mask_nms_greedy_chain():
    # A = [0, 4), B = [1, 5), C = [3, 8): IoU(A,B) = 3/5, IoU(A,C) = 1/8, IoU(B,C) = 2/7.
    # At 0.25, A suppresses B and C survives because only *kept* masks suppress.
    masks = _masks((0, 4), (1, 5), (3, 8))
    classes, scores = np.array([0, 0, 0]), np.array([0.9, 0.8, 0.7], np.float32)
    out = mask_nms(masks, classes, scores, iou_threshold=0.25).numpy()
    np.testing.assert_allclose(out, [0.9, 0.0, 0.7])
    out = mask_nms(masks, classes, scores, iou_threshold=0.1).numpy()
    np.testing.assert_allclose(out, [0.9, 0.0, 0.0])


def _random_case(rng, batch=2, num=24, pixels=64):
    base = rng.random((batch, 6, pixels)) < 0.3
    pick = rng.integers(0, 6, (batch, num))
    masks = np.take_along_axis(base, pick[..., None], 1)
    masks ^= rng.random((batch, num, pixels)) < 0.08  # near-duplicates
    scores = -np.sort(-rng.random((batch, num)), axis=1)
    classes = rng.integers(0, 3, (batch, num))
    valid = rng.random((batch, num)) < 0.85
    return masks.astype(np.float32), classes, scores.astype(np.float32), valid


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
def test_matrix_nms_matches_numpy_loops(kernel):
    masks, classes, scores, valid = _random_case(np.random.default_rng(0))
    out = matrix_nms(masks, classes, scores, valid=valid, kernel=kernel, sigma=2.0).numpy()
    for b in range(masks.shape[0]):
        ref = _numpy_matrix_nms(masks[b], classes[b], scores[b], valid[b], kernel, 2.0)
        np.testing.assert_allclose(out[b], ref, rtol=1e-5, atol=1e-6)


def test_mask_nms_matches_numpy_loops():
    masks, classes, scores, valid = _random_case(np.random.default_rng(1))
    out = mask_nms(masks, classes, scores, valid=valid, iou_threshold=0.4).numpy()
    for b in range(masks.shape[0]):
        ref = _numpy_mask_nms(masks[b], classes[b], scores[b], valid[b], 0.4)
        np.testing.assert_allclose(out[b], ref)


def test_eager_graph_and_xla_agree():
    masks, classes, scores, valid = _random_case(np.random.default_rng(2))

    def both(m, c, s, v):
        return matrix_nms(m, c, s, valid=v), mask_nms(m, c, s, valid=v)

    eager = both(masks, classes, scores, valid)
    graph = tf.function(both)(masks, classes, scores, valid)
    xla = tf.function(both, jit_compile=True)(masks, classes, scores, valid)
    for e, g, x in zip(eager, graph, xla, strict=True):
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-6)
        np.testing.assert_allclose(x.numpy(), e.numpy(), rtol=1e-5, atol=1e-6)
