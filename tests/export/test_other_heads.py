"""The decoupled head (what ``experiments/shapes.flags`` trains) through both exports."""

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


@pytest.fixture(scope="module")
def decoupled(tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("decoupled_model"))
    fixtures.write_model_dir(model_dir, head_type="decoupled")
    return Detector.from_model_dir(model_dir, "latest")


def test_decoupled_saved_model_and_tflite_match_keras(decoupled, images, tmp_path):
    assert decoupled.config.model.head_type == "decoupled"
    path = saved_model.export_saved_model(decoupled, str(tmp_path / "solo" / "1"))
    predictor = exported.SavedModelPredictor(path)
    keras_detect = fixtures.keras_detector(decoupled)
    total = 0
    for image in images[:2]:
        got, _ = predictor(image)
        fixtures.assert_same_detections(got, keras_detect(image))
        total += len(got["detection_scores"])
    assert total > 0

    tflite.export_tflite(decoupled, str(tmp_path / "tflite"), (128, 128), "uint8", ["none"])
    runner = exported.TFLitePredictor(os.path.join(tmp_path, "tflite", "model_fp32.tflite"))
    detect = decoupled.detect_fn(output_size=(128, 128))
    info = tf.constant([[[128, 128], [128, 128], [1, 1], [0, 0]]], tf.float32)
    padded, _ = images_lib.letterbox(images[0], (128, 128), np.uint8)
    want = {k: v.numpy() for k, v in detect(tf.constant(padded[None], tf.float32), info).items()}
    got = runner.run(padded[None])
    assert int(want["num_detections"][0]) > 0
    fixtures.assert_same_detections(fixtures.one_image(got), fixtures.one_image(want))
