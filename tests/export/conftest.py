"""Session fixtures: one tiny model_dir, one SavedModel and one set of TFLite files.

Exporting and converting take most of this package's test time, so every test module of
``tests/export`` shares the same exports (built lazily, once per session).
"""

from __future__ import annotations

import os

import pytest
import tensorflow as tf
from PIL import Image

from export import saved_model, tflite
from solo_tf.detector import Detector
from tests.export import fixtures

TFLITE_SIZE = (128, 128)


def pytest_collection_modifyitems(config, items):
    """Every test here builds, exports or converts a model: all are in the slow tier."""
    here = os.path.dirname(os.path.abspath(__file__))
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("model_dir"))
    fixtures.write_model_dir(path)
    return path


@pytest.fixture(scope="session")
def source(model_dir):
    return Detector.from_model_dir(model_dir, "latest")


@pytest.fixture(scope="session")
def keras_detect(source):
    return fixtures.keras_detector(source)


@pytest.fixture(scope="session")
def images():
    return fixtures.sample_images()


@pytest.fixture(scope="session")
def saved_model_dir(model_dir, tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("serving"))
    return saved_model.export_from_model_dir(model_dir, output_dir, "best", "solo", 1)


@pytest.fixture(scope="session")
def loaded(saved_model_dir):
    return tf.saved_model.load(saved_model_dir)


@pytest.fixture(scope="session")
def calibration_dir(images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration")
    for k, image in enumerate(images):
        Image.fromarray(image).save(os.path.join(folder, f"image_{k}.png"))
    return str(folder)


@pytest.fixture(scope="session")
def tflite_dir(source, calibration_dir, tmp_path_factory):
    output_dir = str(tmp_path_factory.mktemp("tflite"))
    tflite.export_tflite(
        source,
        output_dir,
        TFLITE_SIZE,
        "uint8",
        ["none", "fp16", "dynamic", "int8"],
        calibration_dir,
        num_calibration=4,
    )
    return output_dir
