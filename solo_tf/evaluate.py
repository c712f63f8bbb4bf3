"""COCO mask AP of a trained model: ``python -m solo_tf.evaluate --model_dir DIR``.

Evaluates a checkpoint (default: the best, else the latest, in ``--model_dir``), an exported
SavedModel (``--saved_model VERSION_DIR``), a TFLite file (``--tflite FILE``) or an ONNX
file in ONNX Runtime (``--onnx FILE``, the optional extra ``onnx``) on the
validation split given by ``--val_annotations``/``--val_images`` (default: the split the
model was trained with). Writes ``metrics.json`` (AP, AP50, AP75, APs, APm, APl as fractions)
and ``detections.json`` (COCO results, RLE masks) into ``--output_dir``.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging

from solo_tf import entry_point, eval_lib
from solo_tf import flags as solo_flags
from solo_tf import model_dir as model_dir_lib
from solo_tf.detector import Detector
from solo_tf.onnx_runtime import ONNXPredictor

solo_flags.define_flags()
flags.DEFINE_string("checkpoint", "best", "best, latest, or a checkpoint path.")
flags.DEFINE_string("saved_model", "", "Evaluate this SavedModel version directory instead.")
flags.DEFINE_string("tflite", "", "Evaluate this .tflite file instead.")
flags.DEFINE_string("onnx", "", "Evaluate this .onnx file (export.onnx) in ONNX Runtime instead.")
flags.DEFINE_string("output_dir", "", "Where metrics.json and detections.json go.")
flags.DEFINE_bool("per_category", False, "Also report AP per category.")
flags.DEFINE_integer("batch_size", 8, "Images per batch (checkpoint evaluation).")
flags.DEFINE_integer("max_images", 0, "Evaluate only the first N images (0: all).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if FLAGS.onnx:
        result = eval_lib.evaluate_predictor(
            ONNXPredictor(FLAGS.onnx),
            annotations=FLAGS.val_annotations,
            images=FLAGS.val_images,
            per_category=FLAGS.per_category,
            max_images=FLAGS.max_images,
            bad_sample_policy=FLAGS.bad_sample_policy,
        )
    elif FLAGS.saved_model or FLAGS.tflite:
        result = eval_lib.evaluate_exported(
            saved_model=FLAGS.saved_model,
            tflite=FLAGS.tflite,
            annotations=FLAGS.val_annotations,
            images=FLAGS.val_images,
            per_category=FLAGS.per_category,
            max_images=FLAGS.max_images,
            bad_sample_policy=FLAGS.bad_sample_policy,
        )
    else:
        if not FLAGS.model_dir:
            raise app.UsageError("give --model_dir, --saved_model or --tflite")
        config = solo_flags.config_from_flags(base=model_dir_lib.load_config(FLAGS.model_dir))
        detector = Detector.from_model_dir(FLAGS.model_dir, FLAGS.checkpoint, config=config)
        result = eval_lib.evaluate_detector(
            detector,
            batch_size=FLAGS.batch_size,
            per_category=FLAGS.per_category,
            max_images=FLAGS.max_images,
        )
    results = result.pop("detections")
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.model_dir or ".", "eval")
    os.makedirs(output_dir, exist_ok=True)
    eval_lib.write_metrics_json(os.path.join(output_dir, "metrics.json"), result)
    with open(os.path.join(output_dir, "detections.json"), "w") as f:
        json.dump(results, f)
    table = "  ".join(f"{k} {result[k]:.3f}" for k in eval_lib.SUMMARY_KEYS)
    logging.info("mask AP: %s  (%s images/s)", table, result.get("images_per_s"))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    entry_point.run(main)
