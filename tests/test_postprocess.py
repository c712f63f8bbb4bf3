"""Post-processing on hand-built logits of a tiny two-level model, and its TFLite conversion.

The tiny model: 64 x 64 padded input, 3 classes, num_grids (4, 2), strides (8, 16), so mask
strides (4, 8): level 0 masks are 16 x 16 (16 cells), level 1 masks 8 x 8 (4 cells).
Every logit is -10 (probability 4.5e-5) unless a test raises it. SOLOv2: both levels' masks
are 16 x 16 (stride 4), from E = 4 mask features (channel 1 all ones, the others 0 unless a test
draws a region in them) and kernels (0, -10, 0, 0) unless a test changes them.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from solo_tf.config import ModelConfig, PostprocessConfig
from solo_tf.postprocess import postprocess

CLASS_IDS = np.array([1, 3, 7], np.int32)
POST = PostprocessConfig(max_detections=5)
LOW = -10.0


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _config(head_type="vanilla"):
    return ModelConfig(num_classes=3, num_grids=(4, 2), strides=(8, 16), head_type=head_type)


def _outputs(batch, head_type="vanilla"):
    outputs = {}
    if head_type == "solov2":
        outputs["mask_features"] = np.zeros((batch, 16, 16, 4), np.float32)
        outputs["mask_features"][..., 1] = 1.0
    for level, (grid, size) in enumerate([(4, 16), (2, 8)]):
        outputs[f"cate_logits_{level}"] = np.full((batch, grid, grid, 3), LOW, np.float32)
        if head_type == "solov2":
            kernels = np.zeros((batch, grid, grid, 4), np.float32)
            kernels[..., 1] = LOW
            outputs[f"kernel_preds_{level}"] = kernels
        elif head_type == "vanilla":
            shape = (batch, size, size, grid * grid)
            outputs[f"mask_logits_{level}"] = np.full(shape, LOW, np.float32)
        else:
            for axis in "xy":
                shape = (batch, size, size, grid)
                outputs[f"mask_{axis}_logits_{level}"] = np.full(shape, LOW, np.float32)
    return outputs


def _image_info(*sizes):
    """sizes: ((orig_h, orig_w), (scaled_h, scaled_w)) per image."""
    info = np.zeros((len(sizes), 4, 2), np.float32)
    for b, (orig, scaled) in enumerate(sizes):
        info[b, 0], info[b, 1] = orig, scaled
        info[b, 2] = np.array(scaled, np.float32) / np.array(orig, np.float32)
    return info


def _run(outputs, image_info, head_type="vanilla", post=POST, output_size=None):
    dets = postprocess(outputs, image_info, _config(head_type), post, CLASS_IDS, output_size)
    return {k: v.numpy() for k, v in dets.items()}


def _box(mask):
    rows, cols = np.nonzero(mask)
    return [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]


def _one_strong_cell(head_type="vanilla"):
    """Level 0, cell (1, 2) (k = 6), class 1, logit 2; its mask: stride-4 rows 4..9, cols 6..11."""
    outputs = _outputs(1, head_type)
    outputs["cate_logits_0"][0, 1, 2, 1] = 2.0
    if head_type == "vanilla":
        outputs["mask_logits_0"][0, 4:10, 6:12, 6] = 10.0
    elif head_type == "solov2":  # kernel (20, -10, 0, 0): 10 inside the region, -10 outside
        outputs["mask_features"][0, 4:10, 6:12, 0] = 1.0
        outputs["kernel_preds_0"][0, 1, 2] = [20.0, LOW, 0.0, 0.0]
    else:
        outputs["mask_x_logits_0"][0, :, 6:12, 2] = 10.0  # column j = 2
        outputs["mask_y_logits_0"][0, 4:10, :, 1] = 10.0  # row i = 1
    return outputs


@pytest.mark.parametrize("head_type", ["vanilla", "decoupled", "solov2"])
def test_one_strong_cell(head_type):
    dets = _run(_one_strong_cell(head_type), _image_info(((64, 64), (64, 64))), head_type)
    inside = _sigmoid(10.0) if head_type != "decoupled" else _sigmoid(10.0) ** 2
    assert dets["num_detections"].tolist() == [1]
    np.testing.assert_allclose(dets["detection_scores"][0, 0], _sigmoid(2.0) * inside, rtol=1e-6)
    assert dets["detection_classes"][0].tolist() == [3, 0, 0, 0, 0]
    expected = np.zeros((64, 64), np.uint8)
    # The stride-4 block after the x4 bilinear resize: its border pixels sample 5/8 inside
    # along one axis (0.625 > 0.5), its corners 5/8 along both (0.39): corners drop out.
    expected[16:40, 24:48] = 1
    expected[[16, 16, 39, 39], [24, 47, 24, 47]] = 0
    np.testing.assert_array_equal(dets["detection_masks"][0, 0], expected)
    np.testing.assert_array_equal(dets["detection_boxes"][0, 0], [16, 24, 40, 48])
    # Padding rows are zero.
    assert dets["detection_masks"].shape == (1, 5, 64, 64)
    assert dets["detection_masks"].dtype == np.uint8
    assert not dets["detection_masks"][0, 1:].any()
    assert not dets["detection_scores"][0, 1:].any()
    assert not dets["detection_boxes"][0, 1:].any()


def test_point_nms_looks_up_and_left():
    outputs = _one_strong_cell()
    # Weaker same-class cells: right of the strong one (suppressed: the 2x2 window of (1, 3)
    # holds (1, 2)) and left of it (kept: its window holds (0, 0), (0, 1), (1, 0), (1, 1)).
    outputs["cate_logits_0"][0, 1, 3, 1] = 1.0
    outputs["mask_logits_0"][0, 12:16, 12:16, 7] = 10.0
    outputs["cate_logits_0"][0, 1, 1, 1] = 1.0
    outputs["mask_logits_0"][0, 0:4, 0:4, 5] = 10.0
    dets = _run(outputs, _image_info(((64, 64), (64, 64))))
    assert dets["num_detections"].tolist() == [2]
    scores = [_sigmoid(2.0) * _sigmoid(10.0), _sigmoid(1.0) * _sigmoid(10.0)]
    np.testing.assert_allclose(dets["detection_scores"][0, :2], scores, rtol=1e-6)
    np.testing.assert_array_equal(
        dets["detection_boxes"][0, :2], [[16, 24, 40, 48], [0, 0, 16, 16]]
    )


def _duplicate_mask_outputs():
    outputs = _one_strong_cell()
    outputs["cate_logits_0"][0, 3, 0, 1] = 1.0  # far away, same class, same mask
    outputs["mask_logits_0"][0, 4:10, 6:12, 12] = 10.0
    return outputs


def test_matrix_nms_decays_duplicate():
    dets = _run(_duplicate_mask_outputs(), _image_info(((64, 64), (64, 64))))
    assert dets["num_detections"].tolist() == [2]
    scores = [_sigmoid(2.0) * _sigmoid(10.0), _sigmoid(1.0) * _sigmoid(10.0) * math.exp(-2.0)]
    np.testing.assert_allclose(dets["detection_scores"][0, :2], scores, rtol=1e-6)


def test_mask_nms_removes_duplicate():
    post = PostprocessConfig(max_detections=5, nms_type="mask")
    dets = _run(_duplicate_mask_outputs(), _image_info(((64, 64), (64, 64))), post=post)
    assert dets["num_detections"].tolist() == [1]


def test_small_masks_and_low_scores_dropped():
    outputs = _one_strong_cell()
    outputs["cate_logits_0"][0, 3, 0, 0] = 3.0
    outputs["mask_logits_0"][0, 0:2, 0:4, 12] = 10.0  # 8 stride-4 pixels: not > stride 8
    outputs["cate_logits_0"][0, 3, 3, 2] = -2.3  # probability 0.091 <= 0.1
    outputs["mask_logits_0"][0, 0:4, 0:4, 15] = 10.0
    dets = _run(outputs, _image_info(((64, 64), (64, 64))))
    assert dets["num_detections"].tolist() == [1]
    assert dets["detection_classes"][0, 0] == 3


def _reference_mask(probs, fine_size, padded, scaled, original):
    """The authors' chain with tf.image.resize: level -> stride 4 -> padded, crop, original."""
    probs = tf.constant(probs[None, :, :, None])
    probs = tf.image.resize(probs, fine_size, "bilinear")
    fine = probs[0, :, :, 0].numpy()
    probs = tf.image.resize(probs, padded, "bilinear")[:, : scaled[0], : scaled[1]]
    probs = tf.image.resize(probs, original, "bilinear")
    return fine, (probs[0, :, :, 0].numpy() > 0.5).astype(np.uint8)


def test_batch_of_two_sizes_and_level_upsampling():
    outputs = _outputs(2)
    first = _one_strong_cell()
    for key in outputs:
        outputs[key][0] = first[key][0]
    # Image 1: level 1, cell (0, 1) (k = 1), class 2; mask at stride 8: rows 1..4, cols 3..5.
    outputs["cate_logits_1"][1, 0, 1, 2] = 3.0
    outputs["mask_logits_1"][1, 1:5, 3:6, 1] = 10.0
    info = _image_info(((64, 64), (64, 64)), ((128, 96), (64, 48)))
    dets = _run(outputs, info)

    assert dets["num_detections"].tolist() == [1, 1]
    assert dets["detection_masks"].shape == (2, 5, 128, 96)  # the batch's largest size
    assert dets["detection_classes"][:, 0].tolist() == [3, 7]
    first_mask = dets["detection_masks"][0, 0]
    assert not first_mask[64:].any() and not first_mask[:, 64:].any()

    probs = 1.0 / (1.0 + np.exp(-outputs["mask_logits_1"][1, :, :, 1]))
    fine, mask = _reference_mask(probs, (16, 16), (64, 64), (64, 48), (128, 96))
    binary = fine > 0.5
    maskness = (fine * binary).sum() / binary.sum()
    np.testing.assert_allclose(dets["detection_scores"][1, 0], _sigmoid(3.0) * maskness, rtol=1e-5)
    np.testing.assert_array_equal(dets["detection_masks"][1, 0], mask)
    np.testing.assert_array_equal(dets["detection_boxes"][1, 0], _box(mask))


@pytest.mark.parametrize("head_type", ["vanilla", "decoupled", "solov2"])
def test_batch_equals_images_alone(head_type):
    rng = np.random.default_rng(0)
    outputs = {
        k: rng.normal(0.0, 3.0, v.shape).astype(np.float32)
        for k, v in _outputs(3, head_type).items()
    }
    for level in range(2):
        outputs[f"cate_logits_{level}"] -= 2.0  # about a fifth of the pairs pass 0.1
    info = _image_info(((64, 64), (64, 64)), ((32, 48), (32, 48)), ((96, 64), (64, 43)))
    post = PostprocessConfig(max_detections=8, nms_pre=30)
    batched = _run(outputs, info, head_type, post, output_size=(96, 64))
    assert batched["num_detections"].min() > 0
    for b in range(3):
        alone = _run(
            {k: v[b : b + 1] for k, v in outputs.items()},
            info[b : b + 1],
            head_type,
            post,
            output_size=(96, 64),
        )
        for key, value in alone.items():
            np.testing.assert_allclose(batched[key][b], value[0], rtol=1e-5, atol=1e-6)


def test_static_output_size_and_graph_modes():
    outputs = _one_strong_cell()
    info = _image_info(((64, 64), (64, 64)))
    eager = _run(outputs, info, output_size=(72, 80))
    assert eager["detection_masks"].shape == (1, 5, 72, 80)
    fn = lambda o, i: postprocess(o, i, _config(), POST, CLASS_IDS, (72, 80))
    for graph in (tf.function(fn), tf.function(fn, jit_compile=True)):
        result = graph(outputs, info)
        for key, value in eager.items():
            np.testing.assert_allclose(result[key].numpy(), value, rtol=1e-5)


@pytest.mark.parametrize("nms_type", ["matrix", "mask"])
def test_tflite_builtins_only_and_matches_tf(nms_type):
    post = PostprocessConfig(max_detections=5, nms_type=nms_type)
    from ai_edge_litert.interpreter import Interpreter

    outputs = _outputs(2)
    first = _one_strong_cell()
    for key in outputs:
        outputs[key][0] = first[key][0]
    outputs["cate_logits_1"][1, 0, 1, 2] = 3.0
    outputs["mask_logits_1"][1, 1:5, 3:6, 1] = 10.0
    info = _image_info(((64, 64), (64, 64)), ((128, 96), (64, 48)))
    keys = sorted(outputs)

    @tf.function(
        input_signature=[tf.TensorSpec(outputs[k].shape, tf.float32, name=k) for k in keys]
        + [tf.TensorSpec(info.shape, tf.float32, name="image_info")]
    )
    def serve(*args):
        logits = dict(zip(keys, args[:-1], strict=True))
        return postprocess(logits, args[-1], _config(), post, CLASS_IDS, (128, 96))

    module = tf.Module()
    module.serve = serve
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], module
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # Flex fails here
    interpreter = Interpreter(model_content=converter.convert())
    op_names = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not {name for name in op_names if name.startswith("Flex") or name == "CUSTOM"}

    runner = interpreter.get_signature_runner()
    feed = {k: outputs[k] for k in keys}
    lite = runner(**feed, image_info=info)
    expected = _run(outputs, info, post=post, output_size=(128, 96))
    for key, value in expected.items():
        np.testing.assert_allclose(lite[key], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head_type", ["vanilla", "decoupled", "solov2"])
def test_unknown_batch_and_output_size_in_graph(head_type):
    outputs = _outputs(2, head_type)
    first = _one_strong_cell(head_type)
    for key in outputs:
        outputs[key][1] = first[key][0]
    info = _image_info(((64, 64), (64, 64)), ((32, 48), (32, 48)))
    specs = {k: tf.TensorSpec([None, *v.shape[1:]], tf.float32) for k, v in outputs.items()}

    @tf.function(input_signature=[specs, tf.TensorSpec([None, 4, 2], tf.float32)])
    def serve(logits, image_info):
        return postprocess(logits, image_info, _config(head_type), POST, CLASS_IDS)

    result = serve(outputs, info)
    expected = _run(outputs, info, head_type)
    assert result["detection_masks"].shape == (2, 5, 64, 64)
    assert result["num_detections"].numpy().tolist() == [0, 1]
    for key, value in expected.items():
        np.testing.assert_allclose(result[key].numpy(), value, rtol=1e-6)


# --- SOLOv2 ------------------------------------------------------------------------------------


def test_solov2_masks_at_stride_4_filtered_by_the_level_strides():
    """Areas count stride-4 pixels for every level; the filter uses strides (8, 16)."""
    outputs = _outputs(1, "solov2")
    outputs["mask_features"][0, 0:3, 0:4, 2] = 1.0  # 12 pixels
    outputs["mask_features"][0, 8:12, 8:13, 3] = 1.0  # 20 pixels
    small, large = [0.0, LOW, 20.0, 0.0], [0.0, LOW, 0.0, 20.0]
    # (level, row, column, kernel, class, category logit)
    cells = [(0, 0, 3, small, 0, 2.0), (1, 0, 0, small, 2, 3.0), (1, 1, 1, large, 1, 1.0)]
    for level, i, j, kernel, cls, logit in cells:
        outputs[f"kernel_preds_{level}"][0, i, j] = kernel
        outputs[f"cate_logits_{level}"][0, i, j, cls] = logit
    dets = _run(outputs, _image_info(((64, 64), (64, 64))), "solov2")
    # Level 0's 12 pixels pass (> 8), level 1's do not (<= 16), level 1's 20 pixels pass.
    assert dets["num_detections"].tolist() == [2]
    assert dets["detection_classes"][0, :2].tolist() == [1, 3]
    scores = [_sigmoid(2.0) * _sigmoid(10.0), _sigmoid(1.0) * _sigmoid(10.0)]
    np.testing.assert_allclose(dets["detection_scores"][0, :2], scores, rtol=1e-6)
    # x4 bilinear of a stride-4 block: its corner pixels drop out (see test_one_strong_cell).
    np.testing.assert_array_equal(
        dets["detection_boxes"][0, :2], [[0, 0, 12, 16], [32, 32, 48, 52]]
    )


def test_solov2_tflite_builtins_only_and_matches_tf():
    from ai_edge_litert.interpreter import Interpreter

    outputs = _outputs(1, "solov2")
    strong = _one_strong_cell("solov2")
    outputs.update(strong)
    outputs["cate_logits_1"][0, 0, 1, 2] = 3.0
    outputs["mask_features"][0, 8:12, 8:13, 3] = 1.0
    outputs["kernel_preds_1"][0, 0, 1] = [0.0, LOW, 0.0, 20.0]
    info = _image_info(((128, 96), (64, 48)))
    keys = sorted(outputs)

    @tf.function(
        input_signature=[tf.TensorSpec(outputs[k].shape, tf.float32, name=k) for k in keys]
        + [tf.TensorSpec(info.shape, tf.float32, name="image_info")]
    )
    def serve(*args):
        named = dict(zip(keys, args[:-1], strict=True))
        return postprocess(named, args[-1], _config("solov2"), POST, CLASS_IDS, (128, 96))

    module = tf.Module()
    module.serve = serve
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], module
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = Interpreter(model_content=converter.convert())
    op_names = {op["op_name"] for op in interpreter._get_ops_details()}
    assert not {name for name in op_names if name.startswith("Flex") or name == "CUSTOM"}
    assert "BATCH_MATMUL" in op_names and "CONV_2D" not in op_names

    lite = interpreter.get_signature_runner()(**outputs, image_info=info)
    expected = _run(outputs, info, "solov2", output_size=(128, 96))
    assert expected["num_detections"].tolist() == [2]
    for key, value in expected.items():
        np.testing.assert_allclose(lite[key], value, rtol=1e-5, atol=1e-6)


def test_solov2_tiny_model_end_to_end():
    """A tiny SOLOv2's outputs: eager == tf.function == one image at a time."""
    from solo_tf.modeling.factory import build_model
    from solo_tf.postprocess import postprocess_each_image
    from tests.modeling.tiny import tiny_config

    config = tiny_config(head_type="solov2", mask_feature_channels=8, mask_feature_mid=8)
    model = build_model(config)
    rng = np.random.default_rng(4)
    kernel = model.head.kernel_conv.kernel
    kernel.assign(rng.normal(0.0, 0.5, kernel.shape))  # masks far from 0.5
    model.head.cate_conv.bias.assign(np.zeros(3))  # scores about 0.5: past update_threshold
    images = rng.uniform(0, 255, (2, 64, 96, 3)).astype(np.float32)
    outputs = model(images, training=False, lazy_masks=True)
    info = _image_info(((64, 96), (64, 96)), ((100, 150), (64, 96)))
    post = PostprocessConfig(score_threshold=0.0, max_detections=10, nms_pre=50)
    class_ids = np.arange(3, dtype=np.int32)
    eager = postprocess(outputs, info, config, post, class_ids)
    graph = tf.function(lambda o, i: postprocess(o, i, config, post, class_ids))(outputs, info)
    each = postprocess_each_image(outputs, info, config, post, class_ids)
    assert eager["num_detections"].numpy().min() > 0
    assert eager["detection_masks"].shape == (2, 10, 100, 150)
    for other in (graph, each):
        for key, value in eager.items():
            np.testing.assert_allclose(other[key].numpy(), value.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("columns_first", [None, False, True])
def test_pasting_matmuls_equal_the_4_tap_gathers(columns_first):
    # benchmarks.paste keeps the gathers this replaced: both compose the same two resizes, so
    # only float rounding at the threshold may differ (none here; allow one pixel in 10^5),
    # with the two matmuls in either order (None: columns first, the masks being wider).
    from benchmarks.paste import gather_paste
    from solo_tf.postprocess import _masks_to_original

    rng = np.random.default_rng(0)
    small = rng.normal(0.0, 4.0, [2 * 3, 4, 5, 1]).astype(np.float32)
    probs = tf.reshape(tf.sigmoid(tf.image.resize(small, (16, 20))), [2, 3, 16, 20])
    info = tf.constant(_image_info(((50, 70), (45, 63)), ((90, 40), (64, 28))))
    new = _masks_to_original(probs, info, 4, (90, 70), 0.5, columns_first).numpy()
    old = gather_paste(probs, info, 4, (90, 70), 0.5).numpy()
    assert new.shape == old.shape == (2, 3, 90, 70)
    assert new.any() and not new[0, :, 50:].any() and not new[1, :, :, 40:].any()
    assert (new != old).sum() <= new.size // 10**5
