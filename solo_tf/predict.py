"""Draws SOLO predictions: ``python -m solo_tf.predict --model_dir DIR --images GLOB``.

Writes one PNG overlay per image and ``results.json`` (COCO-style results with the file
name of each image) into ``--output_dir``. Images of any size, PNG or JPEG, grayscale or
RGBA; an unreadable file is reported by name and the others go on.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from PIL import Image
from tqdm.auto import tqdm

from solo_tf import entry_point, eval_lib, exported, images, visualize
from solo_tf import flags as solo_flags
from solo_tf import model_dir as model_dir_lib
from solo_tf.detector import Detector

solo_flags.define_flags()
flags.DEFINE_string("images", None, "An image file, a folder of images, or a glob.")
flags.DEFINE_string("output_dir", "predictions", "Where overlays and results.json go.")
flags.DEFINE_string("checkpoint", "best", "best, latest, or a checkpoint path in model_dir.")
flags.DEFINE_string("saved_model", "", "Use this exported SavedModel version dir instead.")
flags.DEFINE_string("tflite", "", "Use this .tflite file instead.")
flags.DEFINE_string("onnx", "", "Use this .onnx file (export.onnx) in ONNX Runtime instead.")
flags.DEFINE_float("draw_threshold", 0.3, "Draw detections scoring at least this.")
flags.DEFINE_integer("max_images", 0, "Stop after this many images (0: all).")
flags.DEFINE_integer("max_overlay_side", 2048, "Overlays of larger images are shrunk to this.")
flags.mark_flag_as_required("images")
FLAGS = flags.FLAGS


def overlay_paths(paths: list[str], output_dir: str) -> list[str]:
    """One overlay file per input: ``<stem>.png``, or ``<name with suffix>.png`` where two
    inputs share a stem (``a.png`` and ``a.jpg`` -> ``a.png.png`` and ``a.jpg.png``)."""
    stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    clash = {s for s in stems if stems.count(s) > 1}
    names = [os.path.basename(p) if s in clash else s for p, s in zip(paths, stems, strict=True)]
    return [os.path.join(output_dir, f"{name}.png") for name in names]


def main(argv):
    del argv
    files = images.list_images(FLAGS.images)
    if FLAGS.max_images:
        files = files[: FLAGS.max_images]
    predict = _make_predictor()
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    results, failed = [], []
    outputs = overlay_paths(files, FLAGS.output_dir)
    for index, (path, output) in enumerate(tqdm(list(zip(files, outputs, strict=True)))):
        try:
            image = images.read_image(path)
            dets, names = predict(image)
        except (ValueError, tf.errors.InvalidArgumentError) as error:  # the others go on
            logging.error("%s: %s", path, entry_point.readable_message(error))
            failed.append(path)
            continue
        draw(image, dets, names).save(output)
        for result in eval_lib.image_results(dets, index, image.shape[:2]):
            results.append({**result, "file_name": os.path.basename(path)})
    with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
        json.dump(results, f)
    logging.info(
        "%d images drawn into %s, %d unreadable: %s",
        len(files) - len(failed),
        FLAGS.output_dir,
        len(failed),
        failed,
    )


def draw(image, dets: dict, names: dict):
    """The overlay of the detections scoring ``--draw_threshold`` or more, on the image
    shrunk to ``--max_overlay_side`` (masks are resized one at a time as they are drawn)."""
    scale = min(1.0, FLAGS.max_overlay_side / max(image.shape[:2]))
    if scale < 1.0:
        size = [max(1, round(s * scale)) for s in image.shape[:2]]
        image = np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR))
    keep = dets["detection_scores"] >= FLAGS.draw_threshold
    return visualize.draw_detections(
        image,
        images.ResizedMasks(dets["detection_masks"][keep], image.shape[:2]),
        dets["detection_classes"][keep],
        dets["detection_scores"][keep],
        names,
    )


def _make_predictor():
    """``predict(image uint8 [H, W, 3]) -> (detections of that image, id -> name)``; masks
    at the model's resolution where the runner allows it (memory bounded for any photo)."""
    if FLAGS.saved_model:
        return exported.SavedModelPredictor(FLAGS.saved_model).predict
    if FLAGS.tflite:
        runner = exported.TFLitePredictor(FLAGS.tflite)
        return lambda image: runner.predict(image, full_size=False)
    if not FLAGS.model_dir:
        raise app.UsageError("give --model_dir, --saved_model or --tflite")
    config = solo_flags.config_from_flags(base=model_dir_lib.load_config(FLAGS.model_dir))
    detector = Detector.from_model_dir(FLAGS.model_dir, FLAGS.checkpoint, config=config)
    detect_fn = detector.detect_fn()
    return lambda image: (
        detector.detect_image(image, detect_fn, full_size=False),
        detector.names,
    )


if __name__ == "__main__":
    entry_point.run(main)
