"""SavedModel export for TF Serving: ``python -m export.saved_model --model_dir DIR``.

Writes ``OUTPUT_DIR/<model_name>/<version>/`` (``saved_model.pb``, ``variables/``,
``assets/label_map.json``, ``assets/config.json``), the layout ``tensorflow_model_server
--model_base_path=OUTPUT_DIR/<model_name>`` serves. Signatures (``docs/serving.md``):

* ``serving_default``: ``images`` uint8 [B, H0, W0, 3] (one size for the whole batch);
* ``serve_image_bytes``: ``image_bytes`` string [B], encoded JPEG/PNG of any sizes;
* ``serve_examples``: ``examples`` string [B], serialized tf.Example with ``image/encoded``.

Each returns ``num_detections`` [B], ``detection_scores`` [B, K], ``detection_classes``
[B, K] (dataset category ids), ``detection_masks`` uint8 [B, K, Ho, Wo] (padded to the
batch's largest image), ``detection_boxes`` [B, K, 4] (ymin, xmin, ymax, xmax in original
pixels) and ``image_info`` [B, 4, 2] (row 0: each image's own height and width).

The SavedModel is built with ``keras.export.ExportArchive`` (the model tracked, one endpoint
per signature) and the export checks that every model weight landed in ``variables/``.
"""

from __future__ import annotations

import os
import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl import flags, logging

from export import serving_module
from solo_tf import entry_point
from solo_tf.detector import Detector
from solo_tf.modeling import factory

ASSET_FILES = ("label_map.json", "config.json")


def build_archive(
    detector: Detector, asset_dir: str, max_pixels: int = serving_module.MAX_IMAGE_PIXELS
):
    """An ``ExportArchive`` with the three serving endpoints and the two JSON assets.

    ``asset_dir`` must hold the asset files until ``write_out`` has copied them.
    """
    archive = keras.export.ExportArchive()
    archive.track(detector.model)
    specs = serving_module.signature_specs()
    for name, fn in serving_module.serving_functions(detector, max_pixels).items():
        archive.add_endpoint(name, fn, input_signature=specs[name])
    contents = {"label_map.json": detector.label_map_json(), "config.json": detector.config_json()}
    assets = {}
    for name in ASSET_FILES:
        path = os.path.join(asset_dir, name)
        with open(path, "w") as f:
            f.write(contents[name])
        assets[name.split(".")[0]] = tf.saved_model.Asset(path)
    # ExportArchive has no public hook for assets: hang them on its root object, which
    # tf.saved_model.save copies into assets/ (where TF Serving clients look for them).
    archive._tf_trackable.label_map_asset = assets["label_map"]
    archive._tf_trackable.config_asset = assets["config"]
    return archive


def export_saved_model(
    detector: Detector, export_dir: str, max_pixels: int = serving_module.MAX_IMAGE_PIXELS
) -> str:
    """Writes the SavedModel of ``detector`` into ``export_dir`` (a version folder)."""
    if tf.io.gfile.exists(os.path.join(export_dir, "saved_model.pb")):
        raise FileExistsError(f"{export_dir} already holds a SavedModel: pick another version")
    with tempfile.TemporaryDirectory() as asset_dir:
        archive = build_archive(detector, asset_dir, max_pixels)
        archive.write_out(export_dir, verbose=False)
    check_export(export_dir, detector.model)
    logging.info("SavedModel written to %s", export_dir)
    return export_dir


def check_export(export_dir: str, model) -> None:
    """Raises when a model weight or an asset is missing from the written SavedModel.

    Every model weight must have a saved variable of the same shape and value.
    """
    for name in ASSET_FILES:
        if not tf.io.gfile.exists(os.path.join(export_dir, "assets", name)):
            raise RuntimeError(f"{export_dir}: assets/{name} was not written")
    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    by_shape = {}
    for name, shape in reader.get_variable_to_shape_map().items():
        by_shape.setdefault(tuple(shape), []).append(name)
    for weight in model.weights:
        value = keras.ops.convert_to_numpy(weight.value)
        candidates = by_shape.get(tuple(value.shape), [])
        match = next((n for n in candidates if np.array_equal(reader.get_tensor(n), value)), None)
        if match is None:
            raise RuntimeError(
                f"{export_dir}: weight {weight.path} {tuple(value.shape)} is not in variables/"
            )
        candidates.remove(match)


def export_from_model_dir(
    model_dir: str,
    output_dir: str,
    checkpoint: str = "best",
    model_name: str = "solo",
    version: int = 1,
    compute_dtype: str = "float32",
    max_pixels: int = serving_module.MAX_IMAGE_PIXELS,
) -> str:
    """Restores ``model_dir``'s checkpoint and writes ``output_dir/model_name/version``."""
    detector = Detector.from_model_dir(model_dir, checkpoint, compute_dtype)
    path = os.path.join(output_dir, model_name, str(version))
    return export_saved_model(detector, path, max_pixels)


def main(argv):
    del argv
    path = export_from_model_dir(
        FLAGS.model_dir,
        FLAGS.output_dir,
        FLAGS.checkpoint,
        FLAGS.model_name,
        FLAGS.version,
        FLAGS.compute_dtype,
        FLAGS.max_image_pixels,
    )
    print(path)


if __name__ == "__main__":
    flags.DEFINE_string("model_dir", None, "A solo-tf model_dir (config.json, label_map.json).")
    flags.DEFINE_string("checkpoint", "best", "best, latest, or a checkpoint path.")
    flags.DEFINE_string("output_dir", None, "The model base folder goes under it.")
    flags.DEFINE_string("model_name", "solo", "TF Serving model name (a folder).")
    flags.DEFINE_integer("version", 1, "TF Serving model version (a numbered folder).")
    flags.DEFINE_enum(
        "compute_dtype",
        "float32",
        list(factory.COMPUTE_POLICIES),
        "Network arithmetic: float32, or bfloat16 (float32 weights, bfloat16 convolutions; "
        "~1.4x faster end to end on CPUs with AMX). Post-processing is float32 either way.",
    )
    flags.DEFINE_integer(
        "max_image_pixels",
        serving_module.MAX_IMAGE_PIXELS,
        "Refuse larger images (their masks come back at full size: ~K * H * W * 5 bytes).",
    )
    flags.mark_flags_as_required(["model_dir", "output_dir"])
    FLAGS = flags.FLAGS
    entry_point.run(main)
