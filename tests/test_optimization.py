"""Learning-rate schedule and gradient processing on hand-worked values."""

import numpy as np
import pytest
import tensorflow as tf

from solo_tf import optimization
from solo_tf.config import TrainConfig


def test_warmup_then_step_decay_exact_values():
    schedule = optimization.WarmupStepDecay(0.01, 500, 1.0 / 3.0, [1000, 2000], 0.1)
    lrs = [float(schedule(step)) for step in (0, 250, 500, 999, 1000, 1999, 2000)]
    # mmdetection linear warm-up: factor = 1/3 + (2/3) * step / 500.
    expected = [0.01 / 3, 0.01 * (1 / 3 + 1 / 3), 0.01, 0.01, 0.001, 0.001, 0.0001]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)


def test_warmup_then_linear_decay_exact_values():
    # Warm-up 100 steps from 0.003 * 0.5; then 0.003 * (1700 - step) / 1600, 0 from step 1700.
    schedule = optimization.WarmupStepDecay(0.003, 100, 0.5, [1450], 0.1, "linear", 1700)
    lrs = [float(schedule(step)) for step in (0, 50, 100, 900, 1500, 1700, 1800)]
    expected = [0.0015, 0.003 * 0.75, 0.003, 0.0015, 0.003 * 200 / 1600, 0.0, 0.0]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6, atol=1e-12)
    config = TrainConfig(
        optimizer="adamw",
        learning_rate=0.003,
        warmup_steps=100,
        total_steps=1700,
        lr_decay="linear",
    )
    built = optimization.build_optimizer(config, steps_per_epoch=10)._learning_rate
    assert built.get_config()["decay"] == "linear" and built.get_config()["total_steps"] == 1700
    with pytest.raises(ValueError, match="linear decay needs total_steps"):
        optimization.WarmupStepDecay(0.003, 100, 0.5, [], 0.1, "linear", 100)


def test_epochs_become_steps():
    config = TrainConfig(epochs=36, decay_epochs=(27, 33))
    total, boundaries = optimization.total_and_decay_steps(config, steps_per_epoch=100)
    assert total == 3600 and boundaries == [2700, 3300]
    config = TrainConfig(total_steps=50, decay_steps=(40,))
    assert optimization.total_and_decay_steps(config, 100) == (50, [40])


def test_clip_then_weight_decay_hand_worked():
    v = tf.Variable([1.0, 2.0])
    w = tf.Variable([[2.0]])
    grads = [tf.constant([3.0, 0.0]), tf.constant([[4.0]])]  # global norm 5
    out, norm = optimization.reduce_and_clip(grads, [v, w], clip_norm=2.5, weight_decay=0.1)
    assert float(norm) == pytest.approx(5.0)
    # Clipped to norm 2.5 (halved), then + 0.1 * weight.
    np.testing.assert_allclose(out[0].numpy(), [1.5 + 0.1, 0.0 + 0.2], rtol=1e-6)
    np.testing.assert_allclose(out[1].numpy(), [[2.0 + 0.2]], rtol=1e-6)


def test_missing_gradient_is_zero_and_adamw_has_no_loop_decay():
    v = tf.Variable([1.0])
    out, norm = optimization.reduce_and_clip([None], [v], clip_norm=35.0, weight_decay=0.0)
    assert out[0].numpy().tolist() == [0.0] and float(norm) == 0.0
    assert optimization.loop_weight_decay(TrainConfig(optimizer="adamw")) == 0.0
    assert optimization.loop_weight_decay(TrainConfig(weight_decay=1e-4)) == 1e-4
