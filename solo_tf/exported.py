"""In-process runners of exported models, used by ``evaluate`` and ``predict``.

``SavedModelPredictor(path)`` loads a SavedModel written by ``export.saved_model`` and
``TFLitePredictor(path)`` a ``.tflite`` file written by ``export.tflite`` (run with the
LiteRT interpreter, ``ai_edge_litert``). Both have ``predict(image uint8 [H0, W0, 3]) ->
(detections, names)``: the detections of that one image as numpy arrays cut to its
``n`` valid rows, ``detection_scores`` [n], ``detection_classes`` [n] (dataset ids),
``detection_masks`` uint8 [n, H0, W0], ``detection_boxes`` [n, 4] (ymin, xmin, ymax, xmax in
original pixels, max exclusive), and ``names``, category id -> name from the label map that
travels with the export.

The SavedModel resizes and pads inside its graph. A TFLite model takes the padded input
itself: ``solo_tf.images.letterbox`` does what an app must do (padding with the
``pad_colour`` of ``model_info.json``), and the masks that come back in input pixels are
cropped to the scaled image and resized (nearest) to the original size here.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from solo_tf.data.label_map import LabelMap
from solo_tf.detector import one_image
from solo_tf.images import boxes_from_masks, letterbox, resize_masks_nearest, to_input_dtype


def read_model_info(path: str) -> dict | None:
    """The ``model_info.json`` next to an exported file (TFLite, ONNX), or None."""
    info_path = os.path.join(os.path.dirname(path), "model_info.json")
    if not os.path.exists(info_path):
        return None
    with open(info_path) as f:
        return json.load(f)


def app_side(path: str, label_map: LabelMap | None) -> tuple[LabelMap | None, tuple]:
    """The label map (``label_map`` when given, else ``model_info.json``'s labels) and the
    letterbox pad colour (``model_info.json``'s ``preprocessing.pad_colour``; 0 for files
    exported before it was recorded) of an exported fixed-size file."""
    info = read_model_info(path) or {}
    if label_map is None and "labels" in info:
        label_map = LabelMap.from_dict({"categories": info["labels"]})
    colour = info.get("preprocessing", {}).get("pad_colour", (0.0, 0.0, 0.0))
    return label_map, tuple(float(c) for c in colour)


def find_version_dir(path: str) -> str:
    """``path`` itself when it holds ``saved_model.pb``, else its highest numbered version."""
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    versions = []
    if tf.io.gfile.isdir(path):
        versions = [v.strip("/") for v in tf.io.gfile.listdir(path) if v.strip("/").isdigit()]
    if not versions:
        raise FileNotFoundError(f"{path!r} is neither a SavedModel nor a folder of versions")
    return os.path.join(path, max(versions, key=int))


class SavedModelPredictor:
    """Runs the ``serving_default`` signature of an exported SavedModel in this process."""

    def __init__(self, path: str):
        self.path = find_version_dir(path)
        self._loaded = tf.saved_model.load(self.path)
        self._serve = self._loaded.signatures["serving_default"]
        self.label_map = LabelMap.from_json(os.path.join(self.path, "assets", "label_map.json"))
        self.names = self.label_map.names_by_id()

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The signature's padded outputs for uint8 images [B, H0, W0, 3] of one size."""
        outputs = self._serve(images=tf.constant(np.asarray(images, np.uint8)))
        return {key: value.numpy() for key, value in outputs.items()}

    def predict(self, image: np.ndarray) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        return one_image(self.run(np.asarray(image)[None])), self.names

    __call__ = predict


class TFLitePredictor:
    """Runs a ``.tflite`` file of ``export.tflite`` with the LiteRT interpreter.

    Labels and the pad colour come from ``model_info.json`` next to the file (``label_map``
    overrides its labels).
    """

    def __init__(self, path: str, label_map: LabelMap | None = None, num_threads: int = 2):
        self.path = path
        self._interpreter = Interpreter(model_path=path, num_threads=num_threads)
        self._runner = self._interpreter.get_signature_runner("serving_default")
        details = self._runner.get_input_details()["image"]
        self.input_size = tuple(int(s) for s in details["shape"][1:3])
        self.input_dtype = np.dtype(details["dtype"])
        self.label_map, self.pad_colour = app_side(path, label_map)
        self.names = self.label_map.names_by_id() if self.label_map is not None else {}

    def run(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """The raw outputs for one padded input [1, H, W, 3] (cast to the input dtype)."""
        outputs = self._runner(image=to_input_dtype(np.asarray(image), self.input_dtype))
        return {key: np.asarray(value) for key, value in outputs.items()}

    def predict(
        self, image: np.ndarray, full_size: bool = True
    ) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        """``full_size=False`` leaves the masks at the scaled image's size (the model's
        resolution), a uniform scaling of the original: large photos then cost no memory."""
        padded, image_info = letterbox(image, self.input_size, self.input_dtype, self.pad_colour)
        dets = one_image(self.run(padded[None]))
        scaled_h, scaled_w = (int(round(v)) for v in image_info[1])
        dets["detection_masks"] = dets["detection_masks"][:, :scaled_h, :scaled_w]
        if full_size:
            dets["detection_masks"] = resize_masks_nearest(
                dets["detection_masks"], image.shape[:2]
            )  # [n, H0, W0]
            dets["detection_boxes"] = boxes_from_masks(dets["detection_masks"])
        return dets, self.names

    __call__ = predict


def tflite_operators(path: str) -> list[str]:
    """Sorted names of the operators a ``.tflite`` file uses (Flex ops start with Flex)."""
    interpreter = Interpreter(model_path=path)
    return sorted({op["op_name"] for op in interpreter._get_ops_details()})


def tflite_signature_details(path: str) -> dict:
    """Name, shape, dtype and tensor index of the inputs and outputs of ``serving_default``."""
    runner = Interpreter(model_path=path).get_signature_runner("serving_default")

    def describe(details: dict) -> dict:
        return {
            name: {
                "name": name,
                "shape": [int(s) for s in d["shape"]],
                "dtype": np.dtype(d["dtype"]).name,
                "tensor_index": int(d["index"]),
            }
            for name, d in details.items()
        }

    return {
        "inputs": describe(runner.get_input_details()),
        "outputs": describe(runner.get_output_details()),
    }
