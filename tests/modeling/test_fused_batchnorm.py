"""FusedBatchNormalization: Keras's BatchNormalization maths through TF's fused kernel."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from solo_tf.modeling import resnet
from solo_tf.modeling.factory import build_model
from solo_tf.modeling.normalization import FusedBatchNormalization, FusedGroupNormalization
from tests.modeling.tiny import tiny_config


def _pair(channels=8):
    ref = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9)
    fused = FusedBatchNormalization(epsilon=1e-5, momentum=0.9)
    for layer in (ref, fused):
        layer.build([None, 5, 6, channels])
        layer.gamma.assign(np.linspace(0.5, 2.0, channels))
        layer.beta.assign(np.linspace(-1.0, 1.0, channels))
        layer.moving_mean.assign(np.full(channels, 0.25))
        layer.moving_variance.assign(np.full(channels, 2.0))
    return ref, fused


def _call_and_grads(layer, x, w, training=True):
    """(output, gradients of sum(y^2 w) for the input, gamma and beta), in one tf.function."""

    @tf.function
    def run():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2 * w)
        return y, tape.gradient(loss, [x, layer.gamma, layer.beta])

    return run()


@pytest.fixture
def policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_training_batch_by_hand():
    """One channel, four values: normalised by the batch's mean 2.5 and biased variance 1.25;
    moving statistics 0.9 old + 0.1 batch."""
    layer = FusedBatchNormalization(epsilon=0.0, momentum=0.9)
    layer.build([None, 2, 2, 1])
    layer.gamma.assign([2.0])
    layer.beta.assign([1.0])
    x = tf.constant([1.0, 2.0, 3.0, 4.0], shape=[1, 2, 2, 1])
    y = layer(x, training=True).numpy().ravel()
    expected = 2.0 * (np.array([1.0, 2.0, 3.0, 4.0]) - 2.5) / np.sqrt(1.25) + 1.0
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    np.testing.assert_allclose(layer.moving_mean.numpy(), [0.9 * 0.0 + 0.1 * 2.5], rtol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), [0.9 * 1.0 + 0.1 * 1.25], rtol=1e-6)


@pytest.mark.parametrize("dtype_policy", ["float32", "mixed_bfloat16"])
def test_matches_keras_in_training(dtype_policy, policy):
    keras.mixed_precision.set_global_policy(dtype_policy)
    ref, fused = _pair()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(1.0, 3.0, [4, 5, 6, 8]), tf.float32)
    w = tf.constant(rng.normal(size=[4, 5, 6, 8]), tf.float32)
    y_ref, g_ref = _call_and_grads(ref, x, w)
    y_fused, g_fused = _call_and_grads(fused, x, w)
    assert y_fused.dtype == y_ref.dtype == keras.mixed_precision.global_policy().compute_dtype
    bf16 = dtype_policy == "mixed_bfloat16"
    atol = 2e-2 if bf16 else 1e-5  # one bfloat16 rounding of values of ~4
    np.testing.assert_allclose(
        tf.cast(y_fused, tf.float32), tf.cast(y_ref, tf.float32), atol=atol, rtol=0
    )
    for a, b in zip(g_fused, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-2 if bf16 else 1e-4, atol=1e-3 * np.abs(b).max())
    np.testing.assert_allclose(fused.moving_mean, ref.moving_mean, rtol=1e-6)
    np.testing.assert_allclose(fused.moving_variance, ref.moving_variance, rtol=1e-5)


def test_inference_and_frozen_layers_are_keras_own():
    ref, fused = _pair()
    x = tf.random.stateless_normal([2, 5, 6, 8], [1, 2])
    np.testing.assert_array_equal(fused(x, training=False), ref(x, training=False))
    fused.trainable = ref.trainable = False
    np.testing.assert_array_equal(fused(x, training=True), ref(x, training=True))
    np.testing.assert_allclose(fused.moving_mean, np.full(8, 0.25))  # not updated


def test_config_round_trip_and_resnet_uses_it():
    layer = FusedBatchNormalization(epsilon=1e-3, momentum=0.8, name="bn")
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(again) is FusedBatchNormalization
    assert (again.epsilon, again.momentum, again.name) == (1e-3, 0.8, "bn")
    assert isinstance(resnet._bn("bn1"), FusedBatchNormalization)


def _gn_pair(groups=4, channels=8):
    ref = keras.layers.GroupNormalization(groups, epsilon=1e-5)
    fused = FusedGroupNormalization(groups, epsilon=1e-5)
    for layer in (ref, fused):
        layer.build([None, 5, 6, channels])
        layer.gamma.assign(np.linspace(0.5, 2.0, channels))
        layer.beta.assign(np.linspace(-1.0, 1.0, channels))
    return ref, fused


def test_group_norm_by_hand():
    """Two images, one group of two channels each: each image normalised over its own four
    values ([1, 2, 3, 4]: mean 2.5, variance 1.25; [10, 10, 30, 30]: mean 20, variance 100)."""
    layer = FusedGroupNormalization(1, epsilon=0.0)
    layer.build([None, 1, 2, 2])
    layer.gamma.assign([1.0, 3.0])
    layer.beta.assign([0.0, 1.0])
    x = tf.constant([[1.0, 2.0, 3.0, 4.0], [10.0, 10.0, 30.0, 30.0]], shape=[2, 1, 2, 2])
    y = layer(x, training=True).numpy().reshape([2, 4])
    first = (np.array([1.0, 2.0, 3.0, 4.0]) - 2.5) / np.sqrt(1.25)
    second = np.array([-1.0, -1.0, 1.0, 1.0])
    gamma, beta = np.array([1.0, 3.0, 1.0, 3.0]), np.array([0.0, 1.0, 0.0, 1.0])
    np.testing.assert_allclose(y, [first * gamma + beta, second * gamma + beta], atol=1e-6)


@pytest.mark.parametrize("dtype_policy", ["float32", "mixed_bfloat16"])
def test_group_norm_matches_keras(dtype_policy, policy):
    keras.mixed_precision.set_global_policy(dtype_policy)
    ref, fused = _gn_pair()
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(0.5, 2.0, [3, 5, 6, 8]), tf.float32)
    w = tf.constant(rng.normal(size=[3, 5, 6, 8]), tf.float32)
    bf16 = dtype_policy == "mixed_bfloat16"
    y_ref, g_ref = _call_and_grads(ref, x, w)
    y_fused, g_fused = _call_and_grads(fused, x, w)
    assert y_fused.dtype == y_ref.dtype
    np.testing.assert_allclose(
        tf.cast(y_fused, tf.float32), tf.cast(y_ref, tf.float32), atol=4e-2 if bf16 else 1e-5
    )
    for a, b in zip(g_fused, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=(2e-2 if bf16 else 1e-4) * np.abs(b).max())
    # Inference is Keras's own graph, to the bit.
    np.testing.assert_array_equal(
        _call_and_grads(fused, x, w, training=False)[0],
        _call_and_grads(ref, x, w, training=False)[0],
    )


def test_a_training_forward_takes_the_fused_kernels():
    """Every BatchNormalization and GroupNormalization of a SOLO model runs as one
    FusedBatchNormV3 in a training forward (``training`` reaches the nested layers), none in
    an inference forward."""
    config = tiny_config(
        backbone_filters=(8, 8, 16, 16), freeze_stem_and_stage1=False, freeze_batchnorm=False
    )
    model = build_model(config)
    model(tf.zeros([1, 64, 64, 3]))
    norms = [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, (keras.layers.BatchNormalization, keras.layers.GroupNormalization))
    ]
    assert norms and all(
        isinstance(layer, (FusedBatchNormalization, FusedGroupNormalization)) for layer in norms
    )

    def fused_ops(training):
        graph = (
            tf.function(lambda x: model(x, training=training))
            .get_concrete_function(tf.TensorSpec([2, 64, 64, 3]))
            .graph
        )
        return sum(op.type == "FusedBatchNormV3" for op in graph.get_operations())

    calls = fused_ops(True)
    assert calls >= len(norms)  # a head's tower runs once per level
    assert fused_ops(False) == 0
