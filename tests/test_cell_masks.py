"""cell_mask_probs: exact values for every head, both gather paths, P = 0, graph and TFLite;
SOLOv2's dynamic masks by hand and, from a tiny model's outputs, as the loss and the
post-processing see them."""

import keras
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


E = 3  # SOLOv2 mask feature channels


def _solov2_outputs(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "kernel_preds_1": rng.normal(size=(B, S, S, E)).astype(np.float32),
        "mask_features": rng.normal(size=(B, HM, WM, E)).astype(np.float32),
    }


def _outputs(head_type, seed=0):
    make = {"vanilla": _vanilla_outputs, "decoupled": _decoupled_outputs, "solov2": _solov2_outputs}
    return make[head_type](seed)


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


@pytest.mark.parametrize("head_type", ["vanilla", "decoupled", "solov2"])
def test_no_pairs_gives_empty_result_in_graph(head_type):
    outputs = _outputs(head_type)

    @tf.function
    def positives_of(mask):  # P comes from tf.where, as in the loss
        where = tf.cast(tf.where(mask), tf.int32)
        return cell_mask_probs(outputs, 1, where[:, 0], where[:, 1], head_type, S)

    empty = positives_of(tf.zeros([B, S * S], tf.bool))
    assert empty.shape == (0, HM, WM) and empty.dtype == tf.float32
    assert positives_of(tf.ones([B, S * S], tf.bool)).shape == (B * S * S, HM, WM)


@pytest.mark.parametrize("head_type", ["decoupled", "solov2"])
def test_low_precision_logits_give_float32(head_type):
    outputs = {k: tf.cast(v, tf.bfloat16) for k, v in _outputs(head_type).items()}
    probs = cell_mask_probs(outputs, 1, *PAIRS, head_type, S)
    assert probs.dtype == tf.float32
    batched = cell_masks.batched_cell_mask_probs(outputs, 1, [[0, 4], [8, 5]], head_type, S)
    assert batched.dtype == tf.float32


@pytest.mark.parametrize("head_type", ["vanilla", "decoupled"])
def test_converts_to_tflite_builtins(head_type):
    from ai_edge_litert.interpreter import Interpreter

    outputs = _outputs(head_type)
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


# --- SOLOv2: dynamic kernels ------------------------------------------------------------------


def test_hand_worked_dynamic_kernel_mask():
    # Features of a 2 x 2 map with E = 2, one cell's kernel (2, -1):
    # logits (1, 0).(2, -1) = 2, (0, 1) -> -1, (1, 1) -> 1, (2, -1) -> 5.
    features = np.array([[[[1, 0], [0, 1]], [[1, 1], [2, -1]]]], np.float32)  # [1, 2, 2, 2]
    kernels = np.array([[[2, -1], [0, 0]]], np.float32)  # [1, P = 2, 2]: the second is zero
    probs = cell_masks.dynamic_mask_probs(features, kernels).numpy()
    assert probs.shape == (1, 2, 2, 2) and probs.dtype == np.float32
    np.testing.assert_allclose(probs[0, 0], _sigmoid(np.array([[2.0, -1.0], [1.0, 5.0]])), 1e-6)
    np.testing.assert_array_equal(probs[0, 1], np.full((2, 2), 0.5, np.float32))
    # The same kernel as cell (1, 0) of a 2 x 2 grid, through both entry points.
    grid = np.zeros((1, 2, 2, 2), np.float32)
    grid[0, 1, 0] = [2, -1]
    outputs = {"kernel_preds_0": grid, "mask_features": features}
    by_pair = cell_mask_probs(outputs, 0, [0], [2], "solov2", 2).numpy()
    by_image = cell_masks.batched_cell_mask_probs(outputs, 0, [[2, 3]], "solov2", 2).numpy()
    np.testing.assert_allclose(by_pair[0], probs[0, 0], rtol=1e-6)
    np.testing.assert_allclose(by_image[0], probs[0], rtol=1e-6)


def _dynamic_reference(outputs, level, b, k):
    """sigmoid(kernel . features) of cell k of image b, in NumPy (float64)."""
    kernel = outputs[f"kernel_preds_{level}"][b].reshape(-1, outputs["mask_features"].shape[-1])
    return _sigmoid(np.einsum("hwe,e->hw", outputs["mask_features"][b], kernel[k]))


def test_solov2_pairs_per_image_and_unknown_batch_paths():
    outputs = _solov2_outputs(seed=5)
    expected = [_dynamic_reference(outputs, 1, b, k) for b, k in zip(*PAIRS, strict=True)]
    static = cell_mask_probs(outputs, 1, *PAIRS, "solov2", S).numpy()  # B known: per image
    spec = {k: tf.TensorSpec([None, *v.shape[1:]], tf.float32) for k, v in outputs.items()}
    unknown = tf.function(
        lambda o, b, k: cell_mask_probs(o, 1, b, k, "solov2", S),
        input_signature=[spec, tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)],
    )(outputs, *PAIRS).numpy()  # B unknown: every pair against every image
    for got in (static, unknown):
        assert got.shape == (4, HM, WM)
        np.testing.assert_allclose(got, np.stack(expected), rtol=1e-5, atol=1e-6)


def test_solov2_batched_converts_to_tflite_builtins():
    from ai_edge_litert.interpreter import Interpreter

    outputs = _solov2_outputs(seed=6)
    cells = np.array([[8, 0, 3], [1, 1, 7]], np.int32)
    keys = sorted(outputs)
    specs = [tf.TensorSpec(outputs[k].shape, tf.float32, name=k) for k in keys]

    @tf.function(input_signature=[*specs, tf.TensorSpec(cells.shape, tf.int32, name="cells")])
    def serve(*args):
        named = dict(zip(keys, args[:-1], strict=True))
        return {"probs": cell_masks.batched_cell_mask_probs(named, 1, args[-1], "solov2", S)}

    module = tf.Module()
    module.serve = serve
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], module
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    op_names = {op["op_name"] for op in interpreter._get_ops_details()}
    assert "BATCH_MATMUL" in op_names and "CONV_2D" not in op_names
    lite = interpreter.get_signature_runner()(**outputs, cells=cells)["probs"]
    for b in range(B):
        for p, k in enumerate(cells[b]):
            np.testing.assert_allclose(lite[b, p], _dynamic_reference(outputs, 1, b, k), atol=1e-6)


def test_solov2_dice_gradient_matches_finite_differences():
    from solo_tf.losses import dice_loss

    outputs = {k: tf.constant(v, tf.float64) for k, v in _solov2_outputs(seed=7).items()}
    targets = tf.constant(np.random.default_rng(8).integers(0, 2, (4, HM, WM)), tf.float64)

    def loss_of(name):
        @tf.function  # traced once, called twice per element by the finite differences
        def fn(x):
            probs = cell_mask_probs({**outputs, name: x}, 1, *PAIRS, "solov2", S)
            return tf.reduce_sum(dice_loss(probs, targets))

        return fn

    for name in ("kernel_preds_1", "mask_features"):
        theoretical, numerical = tf.test.compute_gradient(loss_of(name), [outputs[name]], 1e-6)
        assert np.abs(theoretical[0] - numerical[0]).max() < 1e-7


@pytest.fixture(scope="module")
def solov2_tiny():
    """A tiny SOLOv2 (64 x 64 inputs, E = 8) and its outputs for two images, float64 copies."""
    from solo_tf.modeling.factory import build_model
    from tests.modeling.tiny import tiny_config

    config = tiny_config(head_type="solov2", mask_feature_channels=8, mask_feature_mid=8)
    # Seeded: which levels the top candidates come from depends on the initial weights, and
    # the post-processing check below wants candidates from every level.
    keras.utils.set_random_seed(9)
    model = build_model(config)
    rng = np.random.default_rng(9)
    kernel = model.head.kernel_conv.kernel
    kernel.assign(rng.normal(0, 0.5, kernel.shape))  # masks far from 0.5 everywhere
    images = rng.uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    outputs = {k: v.numpy() for k, v in model(images).items()}
    return config, outputs


def test_loss_and_postprocess_see_sigmoid_of_kernel_dot_features(solov2_tiny, monkeypatch):
    from solo_tf import losses, postprocess
    from solo_tf.config import LossConfig, PostprocessConfig

    config, outputs = solov2_tiny
    seen = []
    dice = losses.dice_loss
    monkeypatch.setattr(losses, "dice_loss", lambda p, t: (seen.append(p.numpy()), dice(p, t))[1])
    grids, g = config.num_grids, sum(s * s for s in config.num_grids)
    cells = [(0, 0, 5), (1, 0, 63), (1, 1, 7), (0, 3, 8), (1, 4, 2)]  # (image, level, cell)
    cate, index = np.full((2, g), -1, np.int32), np.full((2, g), -1, np.int32)
    for b, level, k in cells:
        offset = sum(s * s for s in grids[:level]) + k
        cate[b, offset], index[b, offset] = 1, 0
    targets = {"cate_targets": cate, "mask_indices": index}
    targets["instance_masks"] = np.ones((2, 1, 16, 16), np.uint8)
    losses.solo_loss(outputs, targets, config, LossConfig())
    # Training sees every level's positives at once, image by image, levels in order
    # (cell_masks.dynamic_positive_probs).
    assert len(seen) == 1 and len(seen[0]) == 5
    in_order = [(0, 0, 5), (0, 3, 8), (1, 0, 63), (1, 1, 7), (1, 4, 2)]  # (image, level, cell)
    for row, (b, level, k) in enumerate(in_order):
        expected = _dynamic_reference(outputs, level, b, k)
        np.testing.assert_allclose(seen[0][row], expected, rtol=1e-5, atol=1e-6)

    captured = {}
    rescore = postprocess._rescore
    monkeypatch.setattr(
        postprocess,
        "_rescore",
        lambda probs, cands, *a: (
            captured.update(probs=probs, cands=cands),
            rescore(probs, cands, *a),
        )[1],
    )
    post = PostprocessConfig(score_threshold=0.0, nms_pre=60)
    postprocess.postprocess(
        outputs,
        np.tile([[[64, 64], [64, 64], [1, 1], [0, 0]]], (2, 1, 1)).astype(np.float32),
        config,
        post,
        np.arange(3),
    )
    probs, cands = captured["probs"].numpy(), {k: v.numpy() for k, v in captured["cands"].items()}
    assert probs.shape == (2, 60, 16, 16) and set(cands["levels"].ravel()) == {0, 1, 2, 3, 4}
    for b in range(2):
        for p in range(60):
            expected = _dynamic_reference(outputs, cands["levels"][b, p], b, cands["cells"][b, p])
            np.testing.assert_allclose(probs[b, p], expected, rtol=1e-5, atol=1e-6)
