"""Draws SOLO predictions: ``python -m solo_tf.predict --model_dir DIR --images GLOB``.

Writes one PNG overlay per image and ``results.json`` (COCO-style results with the file
name of each image) into ``--output_dir``. Images of any size, PNG or JPEG, grayscale or
RGBA; an unreadable file is reported by name and the others go on.
"""

from __future__ import annotations

import glob
import json
import os

from absl import app, flags, logging

from solo_tf import flags as solo_flags

solo_flags.define_flags()
flags.DEFINE_string("images", None, "An image file, a folder of images, or a glob.")
flags.DEFINE_string("output_dir", "predictions", "Where overlays and results.json go.")
flags.DEFINE_string("checkpoint", "best", "best, latest, or a checkpoint path in model_dir.")
flags.DEFINE_string("saved_model", "", "Use this exported SavedModel version dir instead.")
flags.DEFINE_float("draw_threshold", 0.3, "Draw detections scoring at least this.")
flags.DEFINE_integer("max_images", 0, "Stop after this many images (0: all).")
flags.mark_flag_as_required("images")
FLAGS = flags.FLAGS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def list_images(spec: str) -> list[str]:
    """Files named by a path, a folder (its images, sorted) or a glob."""
    if os.path.isdir(spec):
        names = sorted(os.listdir(spec))
        return [os.path.join(spec, n) for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
    if os.path.isfile(spec):
        return [spec]
    files = sorted(glob.glob(spec))
    if not files:
        raise FileNotFoundError(f"--images {spec!r} names no file, folder or glob match")
    return files


def main(argv):
    del argv
    from tqdm.auto import tqdm  # noqa: PLC0415

    from solo_tf import visualize  # noqa: PLC0415
    from solo_tf.data.coco import decode_image_bytes  # noqa: PLC0415

    files = list_images(FLAGS.images)
    if FLAGS.max_images:
        files = files[: FLAGS.max_images]
    predictor = _make_predictor()
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    results, failed = [], []
    for index, path in enumerate(tqdm(files, unit="img", desc="predict")):
        try:
            with open(path, "rb") as f:
                image = decode_image_bytes(f.read())
        except Exception as error:  # noqa: BLE001 - report every unreadable file and go on
            logging.error("Cannot read %s: %s", path, error)
            failed.append(path)
            continue
        dets, names = predictor(image)
        keep = dets["detection_scores"] >= FLAGS.draw_threshold
        picture = visualize.draw_detections(
            image,
            dets["detection_masks"][keep],
            dets["detection_classes"][keep],
            dets["detection_scores"][keep],
            names,
        )
        stem = os.path.splitext(os.path.basename(path))[0]
        picture.save(os.path.join(FLAGS.output_dir, f"{stem}.png"))
        results += _coco_results(dets, index, path)
    with open(os.path.join(FLAGS.output_dir, "results.json"), "w") as f:
        json.dump(results, f)
    logging.info(
        "%d images drawn into %s, %d unreadable: %s",
        len(files) - len(failed),
        FLAGS.output_dir,
        len(failed),
        failed,
    )


def _make_predictor():
    """``predict(image uint8 [H, W, 3]) -> (detections of that image, id -> name)``."""
    import numpy as np  # noqa: PLC0415

    if FLAGS.saved_model:
        from solo_tf import exported  # noqa: PLC0415

        return exported.SavedModelPredictor(FLAGS.saved_model)
    from solo_tf import inference  # noqa: PLC0415
    from solo_tf.data.augment import preprocess_for_eval  # noqa: PLC0415

    if not FLAGS.model_dir:
        raise app.UsageError("give --model_dir or --saved_model")
    config = solo_flags.config_from_flags(base=inference.load_config(FLAGS.model_dir))
    label_map = inference.load_label_map(FLAGS.model_dir)
    model = inference.load_model(FLAGS.model_dir, FLAGS.checkpoint, config)
    detect = inference.make_detect_fn(model, config, label_map.class_ids)
    names = dict(zip(label_map.ids, label_map.names, strict=True))

    def predict(image):
        inputs = preprocess_for_eval({"image": image, "image_id": 0}, config.data)
        dets = detect(inputs["image"][None], inputs["image_info"][None])
        count = int(dets["num_detections"][0])
        one = {k: np.asarray(v[0][:count]) for k, v in dets.items() if k != "num_detections"}
        height, width = image.shape[:2]
        one["detection_masks"] = one["detection_masks"][:, :height, :width]
        return one, names

    return predict


def _coco_results(dets, index, path) -> list[dict]:
    """COCO results of one image's detections, with its file name."""
    import numpy as np  # noqa: PLC0415

    from solo_tf import eval_lib  # noqa: PLC0415

    batch = {k: np.asarray(v)[None] for k, v in dets.items()}
    batch["num_detections"] = np.array([len(dets["detection_scores"])])
    results = eval_lib.detections_to_coco_results(batch, [index])
    for result in results:
        result["file_name"] = os.path.basename(path)
    return results


if __name__ == "__main__":
    app.run(main)
