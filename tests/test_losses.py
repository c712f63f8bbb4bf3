"""Losses on hand-worked cases, their gradients, and the split-batch (multi-replica) identity.

The tiny SOLO set-up: 32 x 32 input, 2 classes, num_grids (2, 1), strides (8, 16), so mask
strides (4, 8): level 0 has 4 cells and 8 x 8 masks, level 1 one cell and 4 x 4 masks;
G = 5 and instance masks are 8 x 8. SOLOv2 (E = 2): both levels' masks are 8 x 8 (stride 4).
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from solo_tf.cell_masks import cell_mask_probs
from solo_tf.config import LossConfig, ModelConfig
from solo_tf.losses import (
    count_positives,
    dice_loss,
    downsample_masks,
    mask_loss_sum,
    sigmoid_focal_loss,
    solo_loss,
)

LOG2 = math.log(2.0)
LOSS = LossConfig()


def _config(head_type="vanilla"):
    return ModelConfig(num_classes=2, num_grids=(2, 1), strides=(8, 16), head_type=head_type)


def _outputs(batch, head_type="vanilla", fill=0.0, seed=None):
    """Model outputs of the tiny set-up, constant ``fill`` or random with ``seed``."""
    rng = np.random.default_rng(seed)
    make = lambda *shape: (
        np.full(shape, fill, np.float32) if seed is None else rng.normal(size=shape)
    ).astype(np.float32)
    outputs = {}
    if head_type == "solov2":
        outputs["mask_features"] = make(batch, 8, 8, 2)
    for level, (grid, size) in enumerate([(2, 8), (1, 4)]):
        outputs[f"cate_logits_{level}"] = make(batch, grid, grid, 2)
        if head_type == "solov2":
            outputs[f"kernel_preds_{level}"] = make(batch, grid, grid, 2)
        elif head_type == "vanilla":
            outputs[f"mask_logits_{level}"] = make(batch, size, size, grid * grid)
        else:
            for axis in "xy":
                outputs[f"mask_{axis}_logits_{level}"] = make(batch, size, size, grid)
    return outputs


def _targets(batch, positives=(), masks=None):
    """positives: (image, cell in 0..4, class, instance row); masks: [B, N, 8, 8]."""
    cate = np.full((batch, 5), -1, np.int32)
    index = np.full((batch, 5), -1, np.int32)
    for b, cell, cls, row in positives:
        cate[b, cell], index[b, cell] = cls, row
    if masks is None:
        masks = np.zeros((batch, 2, 8, 8), np.uint8)
    return {"cate_targets": cate, "mask_indices": index, "instance_masks": masks}


# --- focal loss --------------------------------------------------------------------------


def test_focal_of_logit_zero():
    # target 1: alpha * (1 - 0.5)^2 * log 2; target 0: (1 - alpha) * 0.5^2 * log 2.
    loss = sigmoid_focal_loss(tf.zeros([1, 2]), tf.constant([[1.0, 0.0]]), 0.25, 2.0)
    assert float(loss) == pytest.approx(0.25 * 0.25 * LOG2 + 0.75 * 0.25 * LOG2, rel=1e-6)


def test_focal_of_confident_logits():
    # p = 0.75 (logit log 3): target 1 -> 0.25 * 0.25^2 * -log 0.75; target 0 ->
    # 0.75 * 0.75^2 * -log 0.25.
    logits = tf.fill([2], math.log(3.0))
    loss = sigmoid_focal_loss(logits, tf.constant([1.0, 0.0]), 0.25, 2.0)
    expected = 0.25 * 0.0625 * -math.log(0.75) + 0.75 * 0.5625 * -math.log(0.25)
    assert float(loss) == pytest.approx(expected, rel=1e-6)


# --- Dice loss ---------------------------------------------------------------------------


def test_dice_of_2x2_masks():
    probs = tf.constant([[[1.0, 0.5], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    targets = tf.constant([[[1, 1], [0, 0]], [[0, 0], [0, 0]]], tf.uint8)
    loss = dice_loss(probs, targets).numpy()
    # sum pq = 1.5, sum p^2 = 1.25, sum q^2 = 2; the empty pair gives 1 - 0 / 0.002.
    np.testing.assert_allclose(loss, [1 - 3.0 / (1.251 + 2.001), 1.0], rtol=1e-6)


def test_dice_of_perfect_prediction_is_about_zero():
    mask = np.zeros((1, 8, 8), np.float32)
    mask[0, 2:6, 1:7] = 1.0
    loss = float(dice_loss(mask, mask)[0])
    # 24 pixels: 1 - 2 * 24 / ((24 + 0.001) + (24 + 0.001))
    assert loss == pytest.approx(1 - 48.0 / 48.002, abs=1e-7) and loss < 1e-4


def test_downsample_masks_thresholds_block_average_at_half():
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, :3, :3] = 1  # 2x2 blocks cover 4, 2, 2 and 1 pixels
    np.testing.assert_array_equal(downsample_masks(masks, 2)[0], [[1, 1], [1, 0]])
    np.testing.assert_array_equal(downsample_masks(masks, 1)[0], masks[0])


# --- solo_loss ---------------------------------------------------------------------------


@pytest.mark.parametrize("head_type", ["vanilla", "decoupled"])
def test_solo_loss_hand_worked(head_type):
    masks = np.zeros((1, 2, 8, 8), np.uint8)
    masks[0, 0, 2:6, 2:6] = 1  # 16 pixels at stride 4
    masks[0, 1, :3, :3] = 1  # at stride 8: 3 pixels after block-average >= 0.5
    targets = _targets(1, [(0, 3, 1, 0), (0, 4, 0, 1)], masks)
    fill = 0.0 if head_type == "vanilla" else 10.0  # decoupled: 0.5 = sigmoid(10) * 0.5
    outputs = _outputs(1, head_type, fill=fill)
    if head_type == "decoupled":
        for key in outputs:
            if key.startswith(("cate", "mask_y")):
                outputs[key][:] = 0.0
    losses = solo_loss(outputs, targets, _config(head_type), LOSS)
    # category: 2 positive and 8 negative entries, all logits 0.
    cate = (2 * 0.0625 + 8 * 0.1875) * LOG2 / (2 + 1)
    # masks: every probability 0.5 (p = sigmoid(10) * 0.5 for decoupled: sigmoid(10) ~ 1).
    p = 0.5 if head_type == "vanilla" else 0.5 / (1 + math.exp(-10.0))
    dice0 = 1 - 2 * p * 16 / ((64 * p * p + 1e-3) + (16 + 1e-3))
    dice1 = 1 - 2 * p * 3 / ((16 * p * p + 1e-3) + (3 + 1e-3))
    assert float(losses["num_pos"]) == 2.0
    assert float(losses["loss_cate"]) == pytest.approx(cate, rel=1e-5)
    assert float(losses["loss_mask"]) == pytest.approx((dice0 + dice1) / 2, rel=1e-5)
    assert float(losses["loss"]) == pytest.approx(cate + 3 * (dice0 + dice1) / 2, rel=1e-5)


def test_solov2_dice_at_stride_4_on_every_level():
    masks = np.zeros((1, 2, 8, 8), np.uint8)
    masks[0, 0, 2:6, 2:6] = 1  # 16 pixels
    masks[0, 1, :3, :3] = 1  # 9 pixels: level 1 uses them as they are (no pooling)
    targets = _targets(1, [(0, 3, 1, 0), (0, 4, 0, 1)], masks)
    outputs = _outputs(1, "solov2")  # zero kernels: every mask probability 0.5
    outputs["mask_features"][:] = 1.0
    losses = solo_loss(outputs, targets, _config("solov2"), LOSS)
    cate = (2 * 0.0625 + 8 * 0.1875) * LOG2 / (2 + 1)
    dice0 = 1 - 2 * 0.5 * 16 / ((64 * 0.25 + 1e-3) + (16 + 1e-3))
    dice1 = 1 - 2 * 0.5 * 9 / ((64 * 0.25 + 1e-3) + (9 + 1e-3))
    assert float(losses["loss_cate"]) == pytest.approx(cate, rel=1e-5)
    assert float(losses["loss_mask"]) == pytest.approx((dice0 + dice1) / 2, rel=1e-5)
    # A kernel that reproduces instance 1 exactly: logits +-20 from features (1, +-1).
    outputs["mask_features"][0, :, :, 1] = np.where(masks[0, 1] > 0, 1.0, -1.0)
    outputs["kernel_preds_1"][0, 0, 0] = [0.0, 20.0]
    perfect = solo_loss(outputs, targets, _config("solov2"), LOSS)
    dice1 = 1 - 2 * 9 / ((9 + 1e-3) + (9 + 1e-3))  # sigmoid(+-20) is 1 or 0 to 2e-9
    assert float(perfect["loss_mask"]) == pytest.approx((dice0 + dice1) / 2, rel=1e-6)


@pytest.mark.parametrize("head_type", ["vanilla", "decoupled", "solov2"])
def test_empty_ground_truth(head_type):
    outputs = {k: tf.constant(v) for k, v in _outputs(2, head_type, seed=1).items()}
    with tf.GradientTape() as tape:
        tape.watch(outputs)
        losses = solo_loss(outputs, _targets(2), _config(head_type), LOSS)
    assert float(losses["loss_mask"]) == 0.0  # exactly, not NaN
    assert 0.0 < float(losses["loss_cate"]) < float("inf")
    assert float(losses["num_pos"]) == 0.0
    grads = tape.gradient(losses["loss"], outputs)
    assert all(np.isfinite(g.numpy()).all() for g in grads.values() if g is not None)


@pytest.mark.parametrize("head_type", ["vanilla", "decoupled", "solov2"])
def test_split_batch_with_global_normalisers_sums_to_full_batch(head_type):
    rng = np.random.default_rng(3)
    masks = rng.integers(0, 2, size=(4, 2, 8, 8)).astype(np.uint8)
    positives = [(0, 0, 1, 0), (0, 3, 0, 1), (1, 4, 1, 0), (2, 1, 0, 1), (2, 2, 1, 0)]
    targets = _targets(4, positives, masks)  # image 3 has no positives
    outputs = _outputs(4, head_type, seed=2)
    config = _config(head_type)
    full = solo_loss(outputs, targets, config, LOSS)
    num_pos_global = count_positives(targets["cate_targets"])
    halves = [
        solo_loss(
            {k: v[s] for k, v in outputs.items()},
            {k: v[s] for k, v in targets.items()},
            config,
            LOSS,
            num_pos_global=num_pos_global,
        )
        for s in (slice(0, 2), slice(2, 4))
    ]
    for key in ("loss", "loss_cate", "loss_mask"):
        total = sum(float(h[key]) for h in halves)
        assert total == pytest.approx(float(full[key]), abs=1e-6)
    assert sum(float(h["num_pos"]) for h in halves) == 5.0


def test_solo_loss_in_graph_with_low_precision_outputs():
    masks = np.zeros((2, 2, 8, 8), np.uint8)
    masks[1, 0, 1:4, 1:4] = 1
    targets = _targets(2, [(1, 2, 0, 0)], masks)
    outputs = {k: tf.cast(v, tf.bfloat16) for k, v in _outputs(2, seed=4).items()}
    eager = solo_loss(outputs, targets, _config(), LOSS)
    graph = tf.function(lambda o, t: solo_loss(o, t, _config(), LOSS))(outputs, targets)
    assert eager["loss"].dtype == tf.float32
    assert float(graph["loss"]) == pytest.approx(float(eager["loss"]), rel=1e-6)


@pytest.fixture(scope="module")
def solov2_tiny():
    """A tiny SOLOv2 (E = 8), two 64 x 64 images and targets with four positive cells."""
    from solo_tf.modeling.factory import build_model
    from tests.modeling.tiny import tiny_config

    config = tiny_config(head_type="solov2", mask_feature_channels=8, mask_feature_mid=8)
    g = sum(s * s for s in config.num_grids)
    cate, index = np.full((2, g), -1, np.int32), np.full((2, g), -1, np.int32)
    for b, cell, cls, row in [(0, 27, 1, 0), (0, 28, 1, 0), (1, 70, 2, 1), (1, 110, 0, 0)]:
        cate[b, cell], index[b, cell] = cls, row
    masks = np.zeros((2, 2, 16, 16), np.uint8)
    masks[:, 0, 4:12, 2:9], masks[:, 1, 0:5, 6:16] = 1, 1
    targets = {"cate_targets": cate, "mask_indices": index, "instance_masks": masks}
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    return build_model(config), config, images, targets


def test_solov2_tiny_model_loss_eager_equals_graph(solov2_tiny):
    model, config, images, targets = solov2_tiny
    outputs = model(images)
    eager = solo_loss(outputs, targets, config, LOSS)
    graph = tf.function(lambda o, t: solo_loss(o, t, config, LOSS))(outputs, targets)
    for key in eager:
        assert float(graph[key]) == pytest.approx(float(eager[key]), rel=1e-6)
    assert float(eager["num_pos"]) == 4.0 and 0.0 < float(eager["loss_mask"]) < 1.0


@pytest.mark.slow
def test_solov2_one_training_step_reaches_every_head_weight(solov2_tiny):
    model, config, images, targets = solov2_tiny
    import keras

    optimizer = keras.optimizers.SGD(0.01)
    with tf.GradientTape() as tape:
        before = solo_loss(model(images, training=True), targets, config, LOSS)
    variables = model.trainable_variables
    grads = tape.gradient(before["loss"], variables)
    head = {v.path for v in model.head.trainable_variables}
    for variable, grad in zip(variables, grads, strict=True):
        if variable.path in head:
            assert grad is not None and np.abs(grad.numpy()).max() > 0, variable.path
    names = {path.split("/")[2] for path in head}
    assert {"kernel_tower", "kernel_conv", "mask_feature_head", "cate_conv"} <= names
    optimizer.apply_gradients(zip(grads, variables, strict=True))
    after = solo_loss(model(images, training=True), targets, config, LOSS)
    assert float(after["loss"]) < float(before["loss"])


# --- gradients (float64 finite differences) ----------------------------------------------


def _max_gradient_error(fn, x):
    theoretical, numerical = tf.test.compute_gradient(fn, [x], delta=1e-6)
    return max(np.abs(t - n).max() for t, n in zip(theoretical, numerical, strict=True))


def test_focal_gradient_matches_finite_differences():
    rng = np.random.default_rng(5)
    logits = tf.constant(rng.normal(size=(3, 4)) * 2.0, tf.float64)
    targets = tf.constant(rng.integers(0, 2, size=(3, 4)), tf.float64)
    err = _max_gradient_error(lambda x: sigmoid_focal_loss(x, targets), logits)
    assert err < 1e-7


def test_decoupled_dice_gradient_matches_finite_differences():
    rng = np.random.default_rng(6)
    y_logits = tf.constant(rng.normal(size=(2, 4, 4, 3)), tf.float64)
    x_logits = tf.constant(rng.normal(size=(2, 4, 4, 3)), tf.float64)
    targets = tf.constant(rng.integers(0, 2, size=(3, 4, 4)), tf.float64)
    batch, cells = tf.constant([0, 1, 1]), tf.constant([0, 5, 7])

    def loss_of_x(x):
        outputs = {"mask_x_logits_0": x, "mask_y_logits_0": y_logits}
        probs = cell_mask_probs(outputs, 0, batch, cells, "decoupled", 3)
        return tf.reduce_sum(dice_loss(probs, targets))

    assert (
        cell_mask_probs(
            {"mask_x_logits_0": x_logits, "mask_y_logits_0": y_logits},
            0,
            batch,
            cells,
            "decoupled",
            3,
        ).dtype
        == tf.float64
    )
    assert _max_gradient_error(loss_of_x, x_logits) < 1e-7


def test_solov2_mask_loss_of_all_levels_at_once_with_batch_known_or_not():
    # The loss takes every positive of every level at once (cell_masks.dynamic_positive_probs):
    # image by image with the batch known when tracing (training), each pair against every
    # image with it unknown. Both equal a numpy Dice of sigmoid(kernel . features).
    rng = np.random.default_rng(5)
    masks = rng.integers(0, 2, size=(3, 2, 8, 8)).astype(np.uint8)
    positives = [(0, 0, 1, 0), (0, 4, 0, 1), (1, 2, 1, 1), (1, 3, 0, 0), (2, 1, 0, 1)]
    targets = _targets(3, positives, masks)
    outputs = {k: tf.constant(v) for k, v in _outputs(3, "solov2", seed=6).items()}
    config = _config("solov2")
    at_once = mask_loss_sum(outputs, targets["mask_indices"], targets["instance_masks"], config)
    spec = {k: tf.TensorSpec([None, *v.shape[1:]], v.dtype) for k, v in outputs.items()}
    unknown_batch = tf.function(
        lambda o: mask_loss_sum(o, targets["mask_indices"], targets["instance_masks"], config),
        input_signature=[spec],
    )(outputs)
    raw = {k: v.numpy().astype(np.float64) for k, v in outputs.items()}
    kernels = np.concatenate(
        [raw[f"kernel_preds_{level}"].reshape(3, -1, 2) for level in (0, 1)], 1
    )
    probs = 1 / (1 + np.exp(-np.einsum("bhwe,bke->bkhw", raw["mask_features"], kernels)))
    expected = 0.0
    for b, cell, _, row in positives:
        p, q = probs[b, cell].ravel(), masks[b, row].ravel().astype(np.float64)
        expected += 1 - 2 * (p * q).sum() / ((p * p).sum() + 1e-3 + (q * q).sum() + 1e-3)
    assert float(at_once) == pytest.approx(expected, rel=1e-5)
    assert float(unknown_batch) == pytest.approx(expected, rel=1e-5)
