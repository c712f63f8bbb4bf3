"""TFLite export with post-processing inside: ``python -m export.tflite --model_dir DIR``.

Writes one file per ``--quantization`` into ``--output_dir`` (``model_fp32.tflite`` for
``none``, ``model_fp16.tflite``, ``model_dynamic.tflite``, ``model_int8.tflite``) and
``model_info.json``: inputs, outputs, labels and the preprocessing an app must do.

Each file takes one image [1, H, W, 3] (``--image_size``; uint8 or float32 RGB in [0, 255],
``--input_type``) that the app has already resized to fit H x W keeping its aspect ratio and
padded at the bottom/right with the model's mean colour (``preprocessing.pad_colour`` in
``model_info.json``: 0 after the normalisation inside, as in training), and returns
``num_detections`` [1], ``detection_scores`` [1, K], ``detection_classes`` [1, K] (dataset
ids), ``detection_masks`` uint8 [1, K, H, W] and ``detection_boxes`` [1, K, 4], all in input
pixels. Only TFLite built-in operators are allowed (``int8`` also the int8 built-ins;
post-processing stays float where it must).

The graph goes through ``keras.export.ExportArchive`` and a SavedModel on disk before
conversion: a Keras 3 model wrapped in a plain ``tf.Module`` converts without its weights.
Every file is run once in the LiteRT interpreter after conversion: outputs must be finite,
and the float32 file must agree with the Keras model.
"""

from __future__ import annotations

import json
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl import flags, logging
from ai_edge_litert.interpreter import Interpreter
from tensorflow.lite.python import convert as lite_convert

from export import serving_module
from solo_tf import config as cfg
from solo_tf import entry_point, exported, images
from solo_tf.detector import Detector

QUANTIZATIONS = {
    "none": "model_fp32.tflite",
    "fp16": "model_fp16.tflite",
    "dynamic": "model_dynamic.tflite",
    "int8": "model_int8.tflite",
}
INPUT_TYPES = {"uint8": tf.uint8, "float32": tf.float32}
SIGNATURE = "serving_default"
POSTPROCESS_SCOPE = "postprocess/"  # the name scope of solo_tf.postprocess.postprocess
OUTPUT_MEANINGS = {
    "num_detections": "int32 [1]: valid rows of the padded outputs",
    "detection_scores": "float32 [1, K]: scores, descending, 0 past num_detections",
    "detection_classes": "int32 [1, K]: dataset category ids (see labels), 0 past num_detections",
    "detection_masks": "uint8 [1, K, H, W]: 0/1 masks in input pixels (padding included)",
    "detection_boxes": "float32 [1, K, 4]: ymin, xmin, ymax, xmax in input pixels, max "
    "exclusive, from the masks",
}


def write_float_saved_model(detector, image_size, input_type: str, path: str) -> None:
    """The fixed-shape TFLite graph as a SavedModel (one ``serving_default`` signature)."""
    archive = keras.export.ExportArchive()
    archive.track(detector.model)
    spec = tf.TensorSpec([1, *image_size, 3], INPUT_TYPES[input_type], name="image")
    archive.add_endpoint(SIGNATURE, serving_module.tflite_fn(detector, image_size), [spec])
    archive.write_out(path, verbose=False)


def calibration_images(
    folder: str, image_size, input_type: str, count: int, colour=(0.0, 0.0, 0.0)
) -> list:
    """Up to ``count`` images of ``folder``, letterboxed like an app does (padded with
    ``colour``), [1, H, W, 3]."""
    paths = images.list_images(folder) if os.path.isdir(folder) else []
    if not paths:
        raise FileNotFoundError(f"--calibration_images {folder!r} holds no image")
    batches = []
    for path in paths[:count]:
        padded, _ = images.letterbox(images.read_image(path), image_size, input_type, colour)
        batches.append(padded[None])
    return batches


def convert(saved_model_dir: str, quantization: str, calibration=None) -> bytes:
    """One TFLite flatbuffer of the SavedModel, built-in operators only."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, [SIGNATURE])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantization == "int8":
        return _convert_int8(converter, calibration)
    elif quantization != "none":
        raise ValueError(f"unknown quantization {quantization!r}: one of {list(QUANTIZATIONS)}")
    return converter.convert()


def _convert_int8(converter, calibration) -> bytes:
    """int8 weights and activations for the network; the post-processing stays float.

    The converter's one-step int8 path fails on the post-processing (the point-NMS pad
    value -1 lies outside the sigmoid's quantized range, which int8 PADV2 cannot express),
    and it is better off in float anyway (thresholds, sorting, Matrix NMS). So: calibrate,
    then quantize with every ``postprocess/`` tensor on the deny list, which is what
    ``tf.lite.experimental.QuantizationDebugger`` does for selective quantization.
    """
    if not calibration:
        raise ValueError("int8 quantization needs --calibration_images")
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image] for image in calibration)
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS,
    ]
    converter._experimental_calibrate_only = True
    calibrated = converter.convert()
    names = [t["name"] for t in Interpreter(model_content=calibrated).get_tensor_details()]
    denied = [name for name in names if name.startswith(POSTPROCESS_SCOPE)]
    return lite_convert.mlir_quantize(calibrated, denylisted_nodes=denied)


def check_operators(path: str) -> list[str]:
    """The sorted operator names of a .tflite file; raises on a Flex or custom operator."""
    ops = exported.tflite_operators(path)
    bad = [op for op in ops if op.startswith("Flex") or op in ("CUSTOM", "DELEGATE")]
    if bad:
        raise RuntimeError(f"{path} needs operators outside the TFLite built-ins: {bad}")
    return ops


def check_outputs(path: str, probe: np.ndarray, reference: dict | None) -> dict:
    """Runs ``path`` on ``probe``; raises on non-finite outputs or a Keras mismatch.

    ``reference``: the Keras model's detections of the probe (float32 file only). Sorted
    scores must agree within 0.1: a model that lost its weights is far off, while a
    detection near a threshold may legitimately flip.
    """
    outputs = exported.TFLitePredictor(path).run(probe)
    for name, value in outputs.items():
        if not np.all(np.isfinite(value)):
            raise RuntimeError(f"{path}: output {name} is not finite")
    if reference is not None:
        gap = np.max(np.abs(reference["detection_scores"] - outputs["detection_scores"]))
        logging.info("%s: largest score gap to Keras %.2e", path, gap)
        if gap > 0.1:
            raise RuntimeError(f"{path}: scores differ from the Keras model by {gap:.3f}")
    return outputs


def model_info(detector, image_size, input_type: str, files: dict, ops: dict, path: str) -> dict:
    """The ``model_info.json`` contents; tensor details read from the float32 file ``path``."""
    details = exported.tflite_signature_details(path)
    height, width = image_size
    return {
        "format": "tflite",
        "signature": SIGNATURE,
        "files": files,
        "operators": ops,
        "inputs": [
            {
                **details["inputs"]["image"],
                "meaning": input_meaning(image_size, input_type, detector.pad_colour),
            }
        ],
        "outputs": [
            {**details["outputs"][name], "meaning": OUTPUT_MEANINGS[name]}
            for name in serving_module.DETECTION_KEYS
        ],
        "labels": detector.label_map.to_dict()["categories"],
        **app_steps(image_size, input_type, detector.pad_colour),
        "postprocess_config": cfg.to_dict(detector.config.postprocess),
    }


def input_meaning(image_size, input_type: str, colour) -> str:
    """The ``meaning`` of a fixed-size model's image input in ``model_info.json``."""
    height, width = image_size
    return (
        f"RGB image in [0, 255], {input_type}, already resized to fit {height}x{width} "
        f"(aspect kept) and padded at the bottom/right with pad_colour {_rgb(colour)}"
    )


def _rgb(colour) -> list[float]:
    return [round(float(c), 3) for c in colour]


def app_steps(image_size, input_type: str, colour) -> dict:
    """What an app does before and after calling a fixed-size model (TFLite, ONNX).

    ``colour``: the letterbox padding, RGB in [0, 255]: the model's mean colour
    (``Detector.pad_colour``), which its normalisation maps to 0, as training padded.
    """
    height, width = image_size
    return {
        "preprocessing": {
            "input_size": [height, width],
            "input_dtype": input_type,
            "color": "RGB, channels last, values 0..255, no mean/std (inside the model)",
            "resize": "scale = min(H / h0, W / w0); resize (bilinear) to "
            "(round(h0 * scale), round(w0 * scale))",
            "pad": "with pad_colour at the bottom and right to H x W (uint8: rounded); "
            "the normalisation inside maps it to 0, as training padded",
            "pad_colour": _rgb(colour),
        },
        "postprocessing": "outputs are in input pixels: keep mask rows < round(h0 * scale) "
        "and columns < round(w0 * scale), resize them to h0 x w0; divide boxes by scale",
    }


def export_tflite(
    detector,
    output_dir: str,
    image_size: tuple[int, int],
    input_type: str = "uint8",
    quantizations=("none",),
    calibration_folder: str = "",
    num_calibration: int = 50,
) -> dict:
    """Writes the requested .tflite files and ``model_info.json``; returns the info dict."""
    if any(s % 32 for s in image_size):
        raise ValueError(f"--image_size {image_size} must be multiples of 32")
    if input_type not in INPUT_TYPES:
        raise ValueError(f"--input_type must be one of {list(INPUT_TYPES)}")
    quantizations = list(dict.fromkeys(quantizations))
    unknown = [q for q in quantizations if q not in QUANTIZATIONS]
    if unknown:
        raise ValueError(f"unknown quantization {unknown}: choose from {list(QUANTIZATIONS)}")
    if "int8" in quantizations and not calibration_folder:
        raise ValueError("int8 quantization needs calibration images (--calibration_images)")
    calibration = []
    if calibration_folder:
        calibration = calibration_images(
            calibration_folder, image_size, input_type, num_calibration, detector.pad_colour
        )
    probe = calibration[0] if calibration else _gray_probe(image_size, input_type)
    os.makedirs(output_dir, exist_ok=True)
    files, ops = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        write_float_saved_model(detector, image_size, input_type, tmp)
        reference = _keras_reference(detector, probe, image_size)
        for quantization in quantizations:
            path = os.path.join(output_dir, QUANTIZATIONS[quantization])
            with open(path, "wb") as f:
                f.write(convert(tmp, quantization, calibration))
            ops[quantization] = check_operators(path)
            check_outputs(path, probe, reference if quantization == "none" else None)
            files[quantization] = QUANTIZATIONS[quantization]
            logging.info("%s: %d bytes, operators %s", path, os.path.getsize(path), ops)
    details_from = os.path.join(output_dir, files[quantizations[0]])
    info = model_info(detector, image_size, input_type, files, ops, details_from)
    with open(os.path.join(output_dir, "model_info.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


def _gray_probe(image_size, input_type: str) -> np.ndarray:
    return np.full([1, *image_size, 3], 128, np.dtype(input_type))


def _keras_reference(detector, probe, image_size) -> dict:
    fn = serving_module.tflite_fn(detector, image_size)
    return serving_module.as_numpy(fn(tf.constant(probe)))


def parse_size(text: str) -> tuple[int, int]:
    parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise ValueError(f"--image_size {text!r}: give H,W")
    return parts[0], parts[1]


def main(argv):
    del argv
    detector = Detector.from_model_dir(FLAGS.model_dir, FLAGS.checkpoint)
    size = parse_size(FLAGS.image_size) if FLAGS.image_size else detector.config.data.output_size
    info = export_tflite(
        detector,
        FLAGS.output_dir,
        tuple(size),
        FLAGS.input_type,
        [q.strip() for q in FLAGS.quantization.split(",") if q.strip()],
        FLAGS.calibration_images,
        FLAGS.num_calibration,
    )
    print(json.dumps({"files": info["files"], "operators": info["operators"]}, indent=1))


if __name__ == "__main__":
    flags.DEFINE_string("model_dir", None, "A solo-tf model_dir (config.json, label_map.json).")
    flags.DEFINE_string("checkpoint", "best", "best, latest, or a checkpoint path.")
    flags.DEFINE_string("output_dir", None, "Where the .tflite files and model_info.json go.")
    flags.DEFINE_string("image_size", "", "Input H,W (multiples of 32); default data.output_size.")
    flags.DEFINE_enum("input_type", "uint8", list(INPUT_TYPES), "Input tensor dtype.")
    flags.DEFINE_string("quantization", "none", "Comma list of none, fp16, dynamic, int8.")
    flags.DEFINE_string("calibration_images", "", "Folder of images (int8 calibration).")
    flags.DEFINE_integer("num_calibration", 50, "Calibration images to use (int8).")
    flags.mark_flags_as_required(["model_dir", "output_dir"])
    FLAGS = flags.FLAGS
    entry_point.run(main)
