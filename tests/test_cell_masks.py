"""cell_mask_probs: exact values for both heads, both gather paths, P = 0, graph and TFLite."""

import numpy as np
import pytest
import tensorflow as tf

from solo_tf import cell_masks
from solo_tf.cell_masks import cell_mask_probs

S = 3  # grid of the test level: 9 cells
B, HM, WM = 2, 4, 5


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _vanilla_outputs(seed=0):
    rng = np.random.default_rng(seed)
    return {"mask_logits_1": rng.normal(size=(B, HM, WM, S * S)).astype(np.float32)}


def _decoupled_outputs(seed=0):
    rng = np.random.default_rng(seed)
    return {
        f"mask_{axis}_logits_1": rng.normal(size=(B, HM, WM, S)).astype(np.float32) for axis in "xy"
    }


PAIRS = (np.array([1, 0, 1, 0], np.int32), np.array([0, 4, 8, 5], np.int32))


def test_vanilla_is_sigmoid_of_channel_k_of_image_b():
    outputs = _vanilla_outputs()
    probs = cell_mask_probs(outputs, 1, *PAIRS, "vanilla", S).numpy()
    assert probs.dtype == np.float32 and probs.shape == (4, HM, WM)
    for p, (b, k) in enumerate(zip(*PAIRS, strict=True)):
        np.testing.assert_allclose(probs[p], _sigmoid(outputs["mask_logits_1"][b, :, :, k]), 1e-6)


def test_decoupled_is_product_of_column_x_and_row_y():
    outputs = _decoupled_outputs()
    probs = cell_mask_probs(outputs, 1, *PAIRS, "decoupled", S).numpy()
    for p, (b, k) in enumerate(zip(*PAIRS, strict=True)):
        i, j = divmod(int(k), S)  # k = 5 -> row 1, column 2
        expected = _sigmoid(outputs["mask_x_logits_1"][b, :, :, j]) * _sigmoid(
            outputs["mask_y_logits_1"][b, :, :, i]
        )
        np.testing.assert_allclose(probs[p], expected, rtol=1e-6)


@pytest.mark.parametrize("head_type", ["vanilla", "decoupled"])
def test_both_gather_paths_agree(head_type, monkeypatch):
    outputs = _vanilla_outputs() if head_type == "vanilla" else _decoupled_outputs()
    results = []
    for threshold in (0, 10**6):  # 0: gather channels first; 10**6: transpose first
        monkeypatch.setattr(cell_masks, "_DYNAMIC_TRANSPOSE_MAX_CHANNELS", threshold)
        fn = tf.function(
            lambda b, k: cell_mask_probs(outputs, 1, b, k, head_type, S),  # noqa: B023
            input_signature=[tf.TensorSpec([None], tf.int32)] * 2,
        )
        results.append(fn(*PAIRS).numpy())
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("head_type", ["vanilla", "decoupled"])
def test_no_pairs_gives_empty_result_in_graph(head_type):
    outputs = _vanilla_outputs() if head_type == "vanilla" else _decoupled_outputs()

    @tf.function
    def positives_of(mask):  # P comes from tf.where, as in the loss
        where = tf.cast(tf.where(mask), tf.int32)
        return cell_mask_probs(outputs, 1, where[:, 0], where[:, 1], head_type, S)

    empty = positives_of(tf.zeros([B, S * S], tf.bool))
    assert empty.shape == (0, HM, WM) and empty.dtype == tf.float32
    assert positives_of(tf.ones([B, S * S], tf.bool)).shape == (B * S * S, HM, WM)


def test_low_precision_logits_give_float32():
    outputs = {k: tf.cast(v, tf.bfloat16) for k, v in _decoupled_outputs().items()}
    probs = cell_mask_probs(outputs, 1, *PAIRS, "decoupled", S)
    assert probs.dtype == tf.float32


@pytest.mark.parametrize("head_type", ["vanilla", "decoupled"])
def test_converts_to_tflite_builtins(head_type):
    from ai_edge_litert.interpreter import Interpreter

    outputs = _vanilla_outputs() if head_type == "vanilla" else _decoupled_outputs()
    keys = sorted(outputs)
    specs = [tf.TensorSpec(outputs[k].shape, tf.float32, name=k) for k in keys]
    specs += [tf.TensorSpec([4], tf.int32, name="b"), tf.TensorSpec([4], tf.int32, name="k")]

    @tf.function(input_signature=specs)
    def serve(*args):
        logits = dict(zip(keys, args[:-2], strict=True))
        return {"probs": cell_mask_probs(logits, 1, args[-2], args[-1], head_type, S)}

    module = tf.Module()
    module.serve = serve
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], module
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    lite = interpreter.get_signature_runner()(**outputs, b=PAIRS[0], k=PAIRS[1])["probs"]
    expected = cell_mask_probs(outputs, 1, *PAIRS, head_type, S).numpy()
    np.testing.assert_allclose(lite, expected, rtol=1e-5, atol=1e-6)


def _lazy_outputs(seed=0, channels=6):
    """The vanilla head's lazy outputs for level 1, and the logits they stand for."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(B, HM, WM, channels)).astype(np.float32)
    kernel = rng.normal(size=(channels, S * S)).astype(np.float32)
    bias = rng.normal(size=(S * S,)).astype(np.float32)
    lazy = {"mask_features_1": features, "mask_kernel_1": kernel, "mask_bias_1": bias}
    logits = np.einsum("bhwf,fk->bhwk", features, kernel) + bias
    return lazy, logits


@pytest.mark.parametrize("num_candidates", [4, 9, 12])  # fewer than S^2 (gather), equal, more
def test_lazy_vanilla_equals_the_full_logits(num_candidates):
    lazy, logits = _lazy_outputs()
    cells = np.random.default_rng(1).integers(0, S * S, (B, num_candidates)).astype(np.int32)
    got = cell_masks.batched_cell_mask_probs(lazy, 1, cells, "vanilla", S).numpy()
    assert got.shape == (B, num_candidates, HM, WM)
    for b in range(B):
        for p, k in enumerate(cells[b]):
            np.testing.assert_allclose(got[b, p], _sigmoid(logits[b, :, :, k]), atol=1e-6)


def test_lazy_vanilla_in_graph_with_unknown_batch():
    lazy, logits = _lazy_outputs(seed=3)
    cells = np.array([[8, 0, 3, 3], [1, 2, 7, 6]], np.int32)
    spec = {
        "mask_features_1": tf.TensorSpec([None, HM, WM, 6], tf.float32),
        "mask_kernel_1": tf.TensorSpec([6, S * S], tf.float32),
        "mask_bias_1": tf.TensorSpec([S * S], tf.float32),
    }
    fn = tf.function(
        lambda outputs, cells: cell_masks.batched_cell_mask_probs(outputs, 1, cells, "vanilla", S),
        input_signature=[spec, tf.TensorSpec([None, 4], tf.int32)],
    )
    got = fn(lazy, cells).numpy()
    want = _sigmoid(np.take_along_axis(logits, cells[:, None, None, :], axis=3))
    np.testing.assert_allclose(got, np.transpose(want, [0, 3, 1, 2]), atol=1e-6)
