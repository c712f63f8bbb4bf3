"""SOLOModel: config round trip, mixed precision, and one training step on mock targets."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from solo_tf.config import LossConfig
from solo_tf.losses import solo_loss
from solo_tf.modeling.factory import build_model
from solo_tf.modeling.solo_model import SOLOModel
from tests.modeling.tiny import tiny_config

IMAGES = np.random.default_rng(0).uniform(0, 255, (1, 64, 96, 3)).astype(np.float32)


@pytest.mark.parametrize("head_type", ["vanilla", "decoupled"])
def test_config_round_trip_gives_identical_outputs(head_type):
    model = build_model(tiny_config(head_type=head_type))
    config = json.loads(json.dumps(keras.saving.serialize_keras_object(model)))
    clone = keras.saving.deserialize_keras_object(config)
    assert isinstance(clone, SOLOModel) and type(clone.head) is type(model.head)
    clone(IMAGES)
    clone.set_weights(model.get_weights())
    expected, actual = model(IMAGES), clone(IMAGES)
    assert sorted(actual) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key])
    assert len(clone.trainable_weights) == len(model.trainable_weights)


def test_accepts_the_model_input_dict():
    model = build_model(tiny_config())
    out = model({"image": IMAGES, "image_id": np.zeros([1], np.int64)})
    np.testing.assert_array_equal(out["cate_logits_0"], model(IMAGES)["cate_logits_0"])


def _targets(config):
    """One positive cell (level 1, cell 7) of class 2 with a 16 x 16 square mask."""
    total = sum(s * s for s in config.num_grids)
    cate = np.full((1, total), -1, np.int32)
    index = np.full((1, total), -1, np.int32)
    cell = config.num_grids[0] ** 2 + 7
    cate[0, cell], index[0, cell] = 2, 0
    masks = np.zeros((1, 4, 16, 24), np.uint8)
    masks[0, 0, 4:12, 8:16] = 1
    return {"cate_targets": cate, "mask_indices": index, "instance_masks": masks}


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("head_type", ["vanilla", "decoupled"])
def test_mixed_precision_forward_and_gradients(policy, head_type):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        config = tiny_config(head_type=head_type)
        model = build_model(config)
        with tf.GradientTape() as tape:
            outputs = model(IMAGES, training=True)
            losses = solo_loss(outputs, _targets(config), config, LossConfig())
        grads = tape.gradient(losses["loss"], model.trainable_variables)
    finally:
        keras.config.set_dtype_policy(previous)
    low = tf.bfloat16 if policy == "mixed_bfloat16" else tf.float16
    assert all(v.dtype == low for v in outputs.values())
    assert all(v.dtype == tf.float32 for v in model.trainable_variables)
    assert losses["loss"].dtype == tf.float32 and np.isfinite(float(losses["loss"]))
    assert float(losses["num_pos"]) == 1.0 and float(losses["loss_mask"]) > 0.0
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)


@pytest.mark.slow  # a training step: not in make test-fast
def test_one_sgd_step_lowers_the_loss():
    config = tiny_config()
    model = build_model(config)
    targets = _targets(config)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = solo_loss(model(IMAGES, training=True), targets, config, LossConfig())["loss"]
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    first = float(step())
    for _ in range(3):
        last = float(step())
    assert last < first


@pytest.mark.parametrize("head_type", ["vanilla", "decoupled"])
def test_tf_checkpoint_round_trip(head_type, tmp_path):
    """train_lib saves tf.train.Checkpoint(model=...): every variable must be restored."""
    model = build_model(tiny_config(head_type=head_type))
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    clone = build_model(tiny_config(head_type=head_type))
    tf.train.Checkpoint(model=clone).restore(path).assert_existing_objects_matched()
    for a, b in zip(model.weights, clone.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
