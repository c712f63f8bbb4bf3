"""The SavedModel with the authors' geometry (``pad_mode="multiple"``): one image per request
is padded to its own multiple of 32 and detects as the Keras model does; a request of images
of several sizes is padded to its largest one."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from export import saved_model
from solo_tf.detector import Detector
from tests.export import fixtures

pytestmark = pytest.mark.slow  # exports a model


def test_saved_model_pads_each_request_to_multiples_of_32(tmp_path):
    config = fixtures.tiny_config()
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, pad_mode="multiple"))
    detector = Detector(fixtures.build_model(config), config, fixtures.LABEL_MAP)
    loaded = tf.saved_model.load(saved_model.export_saved_model(detector, str(tmp_path / "1")))
    keras_detect = fixtures.keras_detector(detector)
    images = fixtures.sample_images()  # 96 x 128, 120 x 80, 64 x 64, 200 x 150
    serve = loaded.signatures["serving_default"]
    for image in images:
        outputs = {k: v.numpy() for k, v in serve(images=tf.constant(image[None])).items()}
        assert outputs["detection_masks"].shape[2:] == image.shape[:2]
        fixtures.assert_same_detections(fixtures.one_image(outputs), keras_detect(image))
    encoded = tf.constant([fixtures.encode(image) for image in images])
    batch = loaded.signatures["serve_image_bytes"](image_bytes=encoded)
    # Eval short side 96, long side <= 128: 96 x 128, 128 x 85, 96 x 96, 128 x 96; the request
    # is padded to 128 x 128, each image's own size and scale kept in image_info.
    np.testing.assert_array_equal(
        batch["image_info"][:, 1].numpy(), [[96, 128], [128, 85], [96, 96], [128, 96]]
    )
    assert int(batch["num_detections"].numpy().min()) >= 1
