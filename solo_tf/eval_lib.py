"""COCO mask AP of SOLO detections: results in COCO's format and pycocotools' COCOeval.

Detections are ``solo_tf.postprocess.postprocess``'s dict as numpy arrays (shape letters:
B batch, K detections, Ho Wo the padded output mask size). Metrics are fractions in [0, 1]
(COCO prints them the same way; multiply by 100 for the papers' numbers).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence

import numpy as np
import tensorflow as tf
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm.auto import tqdm

from solo_tf import exported, visualize
from solo_tf.data import inputs
from solo_tf.data.coco import CocoReader
from solo_tf.detector import Detector
from solo_tf.images import ResizedMasks

SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]


def detections_to_coco_results(
    detections: dict[str, np.ndarray],
    image_ids: Sequence[int] | np.ndarray,
    original_sizes: np.ndarray | None = None,
) -> list[dict]:
    """COCO result dicts (RLE ``segmentation``, ``score``, ``category_id``, ``image_id``,
    ``bbox`` [x, y, w, h]) of the valid detections of a batch.

    Args:
      detections: numpy ``num_detections`` [B], ``detection_scores`` [B, K],
        ``detection_classes`` [B, K] (dataset category ids), ``detection_masks``
        [B, K, Ho, Wo], ``detection_boxes`` [B, K, 4] (ymin, xmin, ymax, xmax).
      image_ids: [B] dataset image ids.
      original_sizes: int [B, 2] (H0, W0); each mask is cut to its image's size before
        encoding (COCO compares masks of the image's size). When None, taken from
        ``detections["image_info"][:, 0]`` if present, else the whole Ho x Wo mask is used.
    """
    if original_sizes is None and "image_info" in detections:
        original_sizes = np.asarray(detections["image_info"])[:, 0]
    results = []
    for b, image_id in enumerate(np.asarray(image_ids).reshape(-1)):
        count = int(detections["num_detections"][b])
        masks = np.asarray(detections["detection_masks"][b, :count], np.uint8)  # [n, Ho, Wo]
        if original_sizes is not None:
            height, width = (int(round(float(v))) for v in original_sizes[b])
            masks = masks[:, :height, :width]
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
        for k, rle in enumerate(rles):
            ymin, xmin, ymax, xmax = (float(v) for v in detections["detection_boxes"][b, k])
            rle["counts"] = rle["counts"].decode("ascii")
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(detections["detection_classes"][b, k]),
                    "segmentation": rle,
                    "score": float(detections["detection_scores"][b, k]),
                    "bbox": [xmin, ymin, xmax - xmin, ymax - ymin],
                }
            )
    return results


def image_results(dets: dict[str, np.ndarray], image_id: int, size) -> list[dict]:
    """COCO result dicts of one image's detections (valid rows only) whose masks [n, h, w]
    are a uniform scaling of the image (``h, w`` its size or smaller): each mask is resized
    (nearest) to ``size`` = (H0, W0) and encoded one at a time; ``bbox`` from the mask."""
    masks = ResizedMasks(np.asarray(dets["detection_masks"], np.uint8), size)
    results = []
    for k, mask in enumerate(masks):
        rle = mask_utils.encode(np.asfortranarray(mask))
        bbox = [float(v) for v in mask_utils.toBbox(rle)]
        rle["counts"] = rle["counts"].decode("ascii")
        results.append(
            {
                "image_id": int(image_id),
                "category_id": int(dets["detection_classes"][k]),
                "segmentation": rle,
                "score": float(dets["detection_scores"][k]),
                "bbox": bbox,
            }
        )
    return results


def evaluate_coco(
    annotations: str | os.PathLike | COCO,
    results: list[dict],
    per_category: bool = False,
    image_ids: Iterable[int] | None = None,
    use_categories: bool = True,
) -> dict[str, float]:
    """Mask AP of ``results`` against a COCO ground truth (pycocotools, ``iouType='segm'``).

    Args:
      annotations: a COCO annotation file or a loaded ``COCO``.
      results: dicts from ``detections_to_coco_results``; may be empty.
      per_category: also return ``"AP/<category name>"`` (IoU 0.5:0.95, all areas, 100
        detections; categories without ground truth are left out).
      image_ids: evaluate these images only (default: every image of the ground truth).
      use_categories: False matches detections to objects whatever their classes
        (pycocotools ``useCats=0``): the class-agnostic mask AP.

    Returns:
      ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` as fractions, and COCO's -1 where
      the ground truth has no instance in that area range. No results: 0 (or -1) everywhere.
    """
    coco_gt = annotations if isinstance(annotations, COCO) else _load_coco(annotations)
    with contextlib.redirect_stdout(io.StringIO()) as log:
        coco_dt = _load_results(coco_gt, results)
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="segm")
        if image_ids is not None:
            coco_eval.params.imgIds = sorted(int(i) for i in image_ids)
        coco_eval.params.useCats = int(use_categories)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    logging.info("COCO mask evaluation:\n%s", log.getvalue())
    metrics = {
        key: float(value) for key, value in zip(SUMMARY_KEYS, coco_eval.stats[:6], strict=True)
    }
    if per_category:
        metrics.update(_per_category_ap(coco_eval, coco_gt))
    return metrics


def _load_results(coco_gt: COCO, results: list[dict]) -> COCO:
    """``coco_gt.loadRes(results)``, which cannot take an empty list: then an empty COCO.
    loadRes writes id, area and bbox into the dicts it gets: it gets copies, not the caller's."""
    if results:
        return coco_gt.loadRes([dict(result) for result in results])
    coco_dt = COCO()
    coco_dt.dataset = {
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": list(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    }
    coco_dt.createIndex()
    return coco_dt


def _per_category_ap(coco_eval: COCOeval, coco_gt: COCO) -> dict[str, float]:
    """AP (IoU .5:.95, area all, max detections 100) of each category with ground truth."""
    # precision: [T IoUs, R recalls, K categories, A areas, M max-dets]; -1 where no GT.
    precision = coco_eval.eval["precision"]
    metrics = {}
    for k, category_id in enumerate(coco_eval.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        if values.size:
            name = coco_gt.loadCats([category_id])[0]["name"]
            metrics[f"AP/{name}"] = float(values.mean())
    return metrics


def _load_coco(path) -> COCO:
    """The ground truth, without the polygons pycocotools cannot rasterise (fewer than 3
    points): each is named in a warning; an annotation left without one is dropped (the
    readers skip them the same way under ``bad_sample_policy=skip``)."""
    with tf.io.gfile.GFile(os.fspath(path)) as f:
        data = json.load(f)
    kept = []
    for ann in data.get("annotations", []):
        segmentation = ann.get("segmentation")
        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
            if len(polygons) < len(segmentation):
                logging.warning(
                    "%s: annotation %s (image %s) has polygons of fewer than 3 points; "
                    "they are left out of the ground truth",
                    path,
                    ann.get("id"),
                    ann.get("image_id"),
                )
            if not polygons:
                continue
            ann = {**ann, "segmentation": polygons}
        kept.append(ann)
    coco = COCO()
    coco.dataset = {**data, "annotations": kept}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def write_metrics_json(path: str | os.PathLike, metrics: dict) -> None:
    """Write ``metrics`` as indented JSON (numpy scalars as Python numbers); makes the folder."""
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        tf.io.gfile.makedirs(folder)
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True, default=_to_python)
        f.write("\n")


def _to_python(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def detect_dataset(detect_fn, dataset, num_images=None, progress=True):
    """Runs ``detect_fn(images, image_info)`` over eval batches.

    Returns (COCO results, the image ids seen, images per second after the first batch, or
    None when there was no second batch)."""
    results, image_ids, timed, seconds = [], [], 0, 0.0
    first_shape = None
    with tqdm(total=num_images, unit="img", disable=not progress, desc="detect") as bar:
        for batch in dataset:
            start = time.perf_counter()
            images, image_info = batch["image"], batch["image_info"]
            if first_shape is None:
                first_shape = images.shape
            count = int(images.shape[0])
            if count < first_shape[0] and images.shape[1:] == first_shape[1:]:
                # The last, smaller batch: its last image repeated up to the first batch's
                # size, so that detect_fn runs the shape it traced (a new batch size traced
                # again: ~6 s of a 2-core CPU); each image's detections are its own.
                extra = first_shape[0] - count
                images = tf.concat([images, tf.repeat(images[-1:], extra, axis=0)], 0)
                image_info = tf.concat([image_info, tf.repeat(image_info[-1:], extra, axis=0)], 0)
            dets = {k: v.numpy()[:count] for k, v in detect_fn(images, image_info).items()}
            if image_ids:  # the first batch pays for tracing
                seconds += time.perf_counter() - start
                timed += int(batch["image"].shape[0])
            ids = batch["image_id"].numpy()
            sizes = batch["image_info"].numpy()[:, 0]
            results += detections_to_coco_results(dets, ids, sizes)
            image_ids += [int(i) for i in ids]
            bar.update(len(ids))
    return results, image_ids, (timed / seconds) if seconds > 0 else None


def evaluate_detector(
    detector: Detector,
    batch_size: int = 8,
    per_category=False,
    max_images=0,
    progress=True,
    source: inputs.Source | None = None,
) -> dict:
    """Mask AP of a ``Detector`` on its config's validation split (``config.data``), or on
    ``source`` when given (an already opened split, as periodic evaluation keeps it).

    Only the images that were read count: under ``bad_sample_policy=skip`` an unreadable
    image is left out of the score (and of ``num_images``), not scored as missed.
    Returns the metrics plus ``images_per_s`` (model + post-processing, after the first
    batch; None with a single batch), ``num_images`` and ``detections`` (COCO results).
    """
    config = detector.config
    source = source or inputs.open_source(config.data, "val")
    if not source.annotation_file:
        raise ValueError("COCO evaluation needs --val_annotations (the ground-truth JSON)")
    dataset = inputs.eval_dataset(config, source, batch_size, max_images)
    count = min(source.num_images, max_images) if max_images else source.num_images
    detect = detector.detect_fn()
    results, image_ids, images_per_s = detect_dataset(detect, dataset, count, progress)
    for path, read in sorted(source.cut_shards.items()):
        logging.warning(
            "%s: the file could not be read past its first %d records; the images of its "
            "tail are left out of the score",
            path,
            read,
        )
    metrics = _scored(
        source.annotation_file, results, image_ids, max_images, per_category, images_per_s
    )
    if source.cut_shards:
        metrics["cut_shards"] = dict(source.cut_shards)  # {file: records read}
    return metrics


def _scored(annotations, results, image_ids, max_images, per_category, images_per_s) -> dict:
    """``evaluate_coco`` on the images read, with the counts and speed.

    ``num_images_left_out``: the images of the ground truth (its first ``max_images``, when
    not 0) that were not read: unreadable image files, the tail of a truncated TFRecord.
    """
    if not image_ids:
        raise ValueError(f"no image of {annotations} could be read: nothing to evaluate")
    coco_gt = _load_coco(annotations)
    expected = len(coco_gt.getImgIds())
    expected = min(expected, max_images) if max_images else expected
    if len(image_ids) < expected:
        logging.warning(
            "%d of the %d images of %s could not be read and are left out of the score",
            expected - len(image_ids),
            expected,
            annotations,
        )
    metrics = evaluate_coco(coco_gt, results, per_category, image_ids=image_ids)
    metrics["images_per_s"] = images_per_s
    metrics["num_images"] = len(image_ids)
    metrics["num_images_left_out"] = max(expected - len(image_ids), 0)
    metrics["detections"] = results
    return metrics


def make_eval_fn(config, batch_size: int = 8, num_images_to_draw: int = 3):
    """``eval_fn(model) -> metrics`` for periodic evaluation during training.

    The metrics also carry ``images``: uint8 [N, 256, 256, 3] overlays of the predictions on
    the first validation images, for TensorBoard.
    """

    opened = {}  # the validation split, read and checked once for every evaluation

    def eval_fn(model):
        if "val" not in opened:
            opened["val"] = inputs.open_source(config.data, "val")
        source = opened["val"]
        detector = Detector(model, config, source.label_map)
        metrics = evaluate_detector(detector, batch_size, progress=False, source=source)
        results = metrics.pop("detections")
        metrics["images"] = draw_first_images(source, results, num_images_to_draw)
        return metrics

    return eval_fn


def draw_first_images(
    source: inputs.Source, results, count: int, size: int = 256, min_score: float = 0.3
):
    """Overlays of ``results`` on the first ``count`` images of ``source``, letterboxed to
    ``size`` x ``size``: uint8 [count, size, size, 3] (JSON sources; empty otherwise)."""
    pictures = []
    if source.reader is None:
        return np.zeros([0, size, size, 3], np.uint8)
    names = source.label_map.names_by_id()
    for index in range(min(count, source.num_images)):
        example = source.reader.load(index)
        if example is None:
            continue
        image_id = int(example["image_id"])
        mine = [r for r in results if r["image_id"] == image_id and r["score"] >= min_score]
        masks = np.array([mask_utils.decode(r["segmentation"]) for r in mine], np.uint8)
        picture = visualize.draw_detections(
            example["image"],
            masks.reshape(-1, *example["image"].shape[:2]),
            np.array([r["category_id"] for r in mine]),
            np.array([r["score"] for r in mine]),
            names,
        )
        picture.thumbnail((size, size))
        canvas = np.zeros([size, size, 3], np.uint8)
        array = np.asarray(picture)
        canvas[: array.shape[0], : array.shape[1]] = array
        pictures.append(canvas)
    return np.stack(pictures) if pictures else np.zeros([0, size, size, 3], np.uint8)


def evaluate_predictor(
    predictor,
    annotations: str = "",
    images: str = "",
    per_category: bool = False,
    max_images: int = 0,
    progress: bool = True,
    bad_sample_policy: str = "error",
) -> dict:
    """Mask AP of an exported model's predictor, run image by image in this process.

    ``predictor.predict(image uint8 [H0, W0, 3]) -> (detections, names)``, e.g.
    ``solo_tf.exported.SavedModelPredictor`` or ``TFLitePredictor``. The COCO split
    (``annotations`` JSON, ``images`` folder) is read with ``CocoReader`` under
    ``bad_sample_policy``. Returns what ``evaluate_detector`` returns.
    """
    if not annotations or not images:
        raise ValueError("evaluating an export needs --val_annotations and --val_images")
    reader = CocoReader(annotations, images, bad_sample_policy=bad_sample_policy)
    label_map = getattr(predictor, "label_map", None)
    if label_map is not None and set(label_map.ids) - set(reader.label_map.ids):
        logging.warning(
            "the export's category ids %s are not all in %s (%s)",
            list(label_map.ids),
            annotations,
            list(reader.label_map.ids),
        )
    count = min(reader.num_images, max_images) if max_images else reader.num_images
    results, image_ids, seconds = [], [], 0.0
    with tqdm(total=count, unit="img", disable=not progress, desc="detect") as bar:
        for index in range(count):
            example = reader.load(index)
            bar.update(1)
            if example is None:  # skipped under bad_sample_policy="skip"
                continue
            start = time.perf_counter()
            dets, _ = predictor.predict(example["image"])
            if image_ids:  # the first call pays for loading and warm-up
                seconds += time.perf_counter() - start
            batch = {k: v[None] for k, v in dets.items()}
            batch["num_detections"] = np.array([len(dets["detection_scores"])])
            results += detections_to_coco_results(batch, [int(example["image_id"])])
            image_ids.append(int(example["image_id"]))
    images_per_s = (len(image_ids) - 1) / seconds if seconds > 0 else None
    return _scored(annotations, results, image_ids, max_images, per_category, images_per_s)


def evaluate_exported(saved_model: str = "", tflite: str = "", **kwargs) -> dict:
    """``evaluate_predictor`` of the SavedModel or the TFLite file given (exactly one)."""
    if bool(saved_model) == bool(tflite):
        raise ValueError("give exactly one of saved_model and tflite")
    if saved_model:
        predictor = exported.SavedModelPredictor(saved_model)
    else:
        predictor = exported.TFLitePredictor(tflite)
    return evaluate_predictor(predictor, **kwargs)
