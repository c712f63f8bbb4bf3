"""The TFLite export: built-in operators only, every file runs in LiteRT, float32 equals
the Keras model, quantized files stay close, model_info.json describes the files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from tensorflow.lite.python import schema_py_generated as schema

from export import tflite
from solo_tf import exported
from solo_tf import images as images_lib
from tests.export import fixtures
from tests.export.conftest import TFLITE_SIZE

FILES = ("model_fp32.tflite", "model_fp16.tflite", "model_dynamic.tflite", "model_int8.tflite")
BUILTIN_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}

pytestmark = pytest.mark.slow  # exports and converts models


def flatbuffer_operators(path: str) -> list[tuple[str, str]]:
    """(builtin name, custom code) of each operator code, read from the flatbuffer itself."""
    with open(path, "rb") as f:
        model = schema.Model.GetRootAsModel(f.read(), 0)
    codes = []
    for k in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(k)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        codes.append((BUILTIN_NAMES[builtin], custom.decode() if custom else ""))
    return codes


def letterboxed(image: np.ndarray) -> np.ndarray:
    # The files take uint8, padded with model_info.json's pad_colour.
    padded, _ = images_lib.letterbox(image, TFLITE_SIZE, np.uint8, fixtures.PAD_COLOUR)
    return padded[None]


@pytest.fixture(scope="module")
def keras_input_detect(source):
    """The Keras model + postprocess on an already letterboxed input (input pixels out)."""
    detect = source.detect_fn(output_size=TFLITE_SIZE)
    height, width = TFLITE_SIZE
    info = np.array([[[height, width], [height, width], [1, 1], [0, 0]]], np.float32)

    def run(padded):
        dets = detect(tf.constant(padded, tf.float32), tf.constant(info))
        return {k: v.numpy() for k, v in dets.items()}

    return run


@pytest.mark.parametrize("name", FILES)
def test_only_builtin_operators(tflite_dir, name):
    path = os.path.join(tflite_dir, name)
    codes = flatbuffer_operators(path)
    assert codes, "no operator found"
    bad = [c for c in codes if c[0] in ("CUSTOM", "DELEGATE") or c[1] or c[0].startswith("Flex")]
    assert not bad, f"{name} uses non-builtin operators {bad}"
    ops = exported.tflite_operators(path)  # the interpreter's view agrees
    assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"]
    assert {"CONV_2D", "TOPK_V2", "BATCH_MATMUL"} <= set(ops)


@pytest.mark.parametrize("name", FILES)
def test_every_file_runs_with_fixed_shapes(tflite_dir, images, name):
    predictor = exported.TFLitePredictor(os.path.join(tflite_dir, name))
    assert predictor.input_size == TFLITE_SIZE and predictor.input_dtype == np.uint8
    outputs = predictor.run(letterboxed(images[0]))
    k = fixtures.tiny_config().postprocess.max_detections
    expected = {
        "num_detections": ((1,), np.int32),
        "detection_scores": ((1, k), np.float32),
        "detection_classes": ((1, k), np.int32),
        "detection_masks": ((1, k, *TFLITE_SIZE), np.uint8),
        "detection_boxes": ((1, k, 4), np.float32),
    }
    assert set(outputs) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert outputs[key].shape == shape and outputs[key].dtype == dtype, key
        assert np.all(np.isfinite(outputs[key])), key
    count = int(outputs["num_detections"][0])
    assert 0 < count <= k
    assert set(outputs["detection_classes"][0, :count]) <= set(fixtures.LABEL_MAP.ids)
    assert not outputs["detection_scores"][0, count:].any()


def test_fp32_matches_keras(tflite_dir, images, keras_input_detect):
    predictor = exported.TFLitePredictor(os.path.join(tflite_dir, "model_fp32.tflite"))
    square = images[0][:, :96]  # letterboxes to the whole 128 x 128 input
    for image in [*images, square]:
        padded = letterboxed(image)
        got = fixtures.one_image(predictor.run(padded))
        fixtures.assert_same_detections(got, fixtures.one_image(keras_input_detect(padded)))


@pytest.mark.parametrize(
    "name, score_tol, min_iou, min_matched",
    [
        ("model_fp16.tflite", 0.01, 0.9, 0.95),
        ("model_dynamic.tflite", 0.05, 0.8, 0.8),
        # int8 activations of a random network move scores and mask edges: loose.
        ("model_int8.tflite", 0.05, 0.8, 0.3),
    ],
)
def test_quantized_close_to_fp32(tflite_dir, images, name, score_tol, min_iou, min_matched):
    """The share of float32 detections found again (same class, score, mask)."""
    reference = exported.TFLitePredictor(os.path.join(tflite_dir, "model_fp32.tflite"))
    quantized = exported.TFLitePredictor(os.path.join(tflite_dir, name))
    matched = total = 0
    for image in images:
        want = reference.run(letterboxed(image))
        got = quantized.run(letterboxed(image))
        counts = [int(o["num_detections"][0]) for o in (got, want)]
        assert abs(counts[0] - counts[1]) <= max(2, counts[1] // 3), counts
        np.testing.assert_allclose(
            got["detection_scores"][0, 0], want["detection_scores"][0, 0], atol=score_tol
        )
        total += counts[1]
        matched += _count_matches(
            fixtures.one_image(got), fixtures.one_image(want), score_tol, min_iou
        )
    assert matched >= min_matched * total, (matched, total)


def _count_matches(got, want, score_tol, min_iou) -> int:
    free, matched = set(range(len(got["detection_scores"]))), 0
    for k, score in enumerate(want["detection_scores"]):
        for j in sorted(free):
            same = got["detection_classes"][j] == want["detection_classes"][k]
            close = abs(got["detection_scores"][j] - score) <= score_tol
            iou = fixtures.mask_iou(got["detection_masks"][j], want["detection_masks"][k])
            if same and close and iou >= min_iou:
                free.remove(j)
                matched += 1
                break
    return matched


def test_model_info(tflite_dir):
    with open(os.path.join(tflite_dir, "model_info.json")) as f:
        info = json.load(f)
    assert info["files"] == {
        "none": "model_fp32.tflite",
        "fp16": "model_fp16.tflite",
        "dynamic": "model_dynamic.tflite",
        "int8": "model_int8.tflite",
    }
    assert info["labels"] == fixtures.LABEL_MAP.to_dict()["categories"]
    (image,) = info["inputs"]
    assert image["name"] == "image" and image["shape"] == [1, *TFLITE_SIZE, 3]
    assert image["dtype"] == "uint8"
    outputs = {o["name"]: o for o in info["outputs"]}
    assert outputs["detection_masks"]["shape"] == [1, 20, *TFLITE_SIZE]
    assert outputs["detection_masks"]["dtype"] == "uint8"
    assert all(o["meaning"] for o in info["outputs"])
    assert info["preprocessing"]["input_size"] == list(TFLITE_SIZE)
    np.testing.assert_allclose(info["preprocessing"]["pad_colour"], fixtures.PAD_COLOUR, atol=1e-3)
    assert info["preprocessing"]["pad_colour"] != [0, 0, 0]  # the mean, not black
    interpreter = Interpreter(model_path=os.path.join(tflite_dir, "model_fp32.tflite"))
    indices = {d["index"] for d in interpreter.get_output_details()}
    assert {o["tensor_index"] for o in info["outputs"]} == indices


def test_predictor_maps_back_to_the_original_image(tflite_dir, images):
    predictor = exported.TFLitePredictor(os.path.join(tflite_dir, "model_fp32.tflite"))
    # The pad colour is read from model_info.json.
    np.testing.assert_allclose(predictor.pad_colour, fixtures.PAD_COLOUR, atol=1e-3)
    image = images[1]  # 120 x 80: scaled to 128 x 85, padded on the right
    dets, names = predictor(image)
    assert names == {1: "circle", 5: "square", 9: "triangle"}
    assert dets["detection_masks"].shape[1:] == image.shape[:2]
    padded = predictor.run(letterboxed(image))
    count = int(padded["num_detections"][0])
    assert len(dets["detection_scores"]) == count
    np.testing.assert_array_equal(dets["detection_scores"], padded["detection_scores"][0, :count])
    areas = dets["detection_masks"].reshape(count, -1).sum(1)
    scaled = padded["detection_masks"][0, :count, :, :85].reshape(count, -1).sum(1)
    np.testing.assert_allclose(areas * (128 / 120) * (85 / 80), scaled, rtol=0.1, atol=20)


def test_bad_arguments_fail_before_converting(source, tmp_path):
    with pytest.raises(ValueError, match="multiples of 32"):
        tflite.export_tflite(source, str(tmp_path), (100, 128))
    with pytest.raises(ValueError, match="unknown quantization"):
        tflite.export_tflite(source, str(tmp_path), TFLITE_SIZE, quantizations=["int4"])
    with pytest.raises(ValueError, match="calibration"):
        tflite.export_tflite(source, str(tmp_path), TFLITE_SIZE, quantizations=["int8"])


def test_command_line_float32_input(model_dir, source, images, tmp_path):
    """``python -m export.tflite`` with a float32 input of another size."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = tmp_path / "float_input"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.tflite",
            f"--model_dir={model_dir}",
            f"--output_dir={out}",
            "--image_size=96,128",
            "--input_type=float32",
            "--quantization=none",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "model_info.json") as f:
        info = json.load(f)
    assert info["inputs"][0]["shape"] == [1, 96, 128, 3]
    assert info["inputs"][0]["dtype"] == "float32"
    predictor = exported.TFLitePredictor(str(out / "model_fp32.tflite"))
    padded, _ = images_lib.letterbox(images[0], (96, 128))  # float pixels, not rounded
    detect = source.detect_fn(output_size=(96, 128))
    info = np.array([[[96, 128], [96, 128], [1, 1], [0, 0]]], np.float32)
    want = {k: v.numpy() for k, v in detect(tf.constant(padded[None]), info).items()}
    got = predictor.run(padded[None])
    assert got["detection_masks"].shape[2:] == (96, 128)
    fixtures.assert_same_detections(fixtures.one_image(got), fixtures.one_image(want))
