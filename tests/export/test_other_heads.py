"""The decoupled head and SOLOv2 (what ``experiments/shapes.flags`` trains) through both
exports: the same detections as the Keras model, TFLite built-in operators only."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from export import saved_model, tflite
from solo_tf import exported
from solo_tf import images as images_lib
from solo_tf.detector import Detector
from tests.export import fixtures

pytestmark = pytest.mark.slow  # exports and converts models


@pytest.fixture(scope="module", params=["decoupled", "solov2"])
def detector(request, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp(f"{request.param}_model"))
    fixtures.write_model_dir(model_dir, head_type=request.param)
    return Detector.from_model_dir(model_dir, "latest")


def test_saved_model_and_tflite_match_keras(detector, images, calibration_dir, tmp_path):
    path = saved_model.export_saved_model(detector, str(tmp_path / "solo" / "1"))
    predictor = exported.SavedModelPredictor(path)
    keras_detect = fixtures.keras_detector(detector)
    total = 0
    for image in images[:2]:
        got, _ = predictor(image)
        fixtures.assert_same_detections(got, keras_detect(image))
        total += len(got["detection_scores"])
    assert total > 0

    quantizations = ["none", "fp16", "dynamic", "int8"]
    if detector.config.model.head_type != "solov2":
        quantizations = ["none"]  # the vanilla head's files are checked in test_tflite.py
    tflite.export_tflite(
        detector,
        str(tmp_path / "tflite"),
        (128, 128),
        "uint8",
        quantizations,
        calibration_dir,
        num_calibration=4,
    )
    for name in (tflite.QUANTIZATIONS[q] for q in quantizations):
        ops = tflite.check_operators(os.path.join(tmp_path, "tflite", name))
        assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"], (name, ops)
    runner = exported.TFLitePredictor(os.path.join(tmp_path, "tflite", "model_fp32.tflite"))
    detect = detector.detect_fn(output_size=(128, 128))
    info = tf.constant([[[128, 128], [128, 128], [1, 1], [0, 0]]], tf.float32)
    padded, _ = images_lib.letterbox(images[0], (128, 128), np.uint8)
    want = {k: v.numpy() for k, v in detect(tf.constant(padded[None], tf.float32), info).items()}
    got = runner.run(padded[None])
    assert int(want["num_detections"][0]) > 0
    fixtures.assert_same_detections(fixtures.one_image(got), fixtures.one_image(want))
