"""COCO results and mask AP on hand-made ground truth with known answers."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from solo_tf.eval_lib import detections_to_coco_results, evaluate_coco, write_metrics_json

CATEGORIES = [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}]
SIZES = {1: (20, 30), 2: (16, 16)}  # image id -> (H, W)


def _mask(image_id, rows, cols):
    mask = np.zeros(SIZES[image_id], np.uint8)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = 1
    return mask


def _ground_truth(instances):
    """instances: (image_id, category_id, mask) -> an in-memory COCO."""
    annotations = []
    for index, (image_id, category_id, mask) in enumerate(instances):
        rle = mask_utils.encode(np.asfortranarray(mask))
        rle["counts"] = rle["counts"].decode("ascii")
        annotations.append(
            {
                "id": index + 1,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": rle,
                "area": float(mask.sum()),
                "bbox": mask_utils.toBbox(rle).tolist(),
                "iscrowd": 0,
            }
        )
    images = [{"id": i, "height": h, "width": w} for i, (h, w) in SIZES.items()]
    coco = COCO()
    coco.dataset = {"images": images, "categories": CATEGORIES, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _detections(per_image, max_detections=3, out_size=(20, 30)):
    """per_image: list of lists of (category_id, score, mask) -> postprocess-like numpy dict."""
    batch = len(per_image)
    dets = {
        "num_detections": np.zeros(batch, np.int32),
        "detection_scores": np.zeros((batch, max_detections), np.float32),
        "detection_classes": np.zeros((batch, max_detections), np.int32),
        "detection_masks": np.zeros((batch, max_detections, *out_size), np.uint8),
        "detection_boxes": np.zeros((batch, max_detections, 4), np.float32),
    }
    for b, items in enumerate(per_image):
        dets["num_detections"][b] = len(items)
        for k, (category_id, score, mask) in enumerate(items):
            dets["detection_scores"][b, k] = score
            dets["detection_classes"][b, k] = category_id
            dets["detection_masks"][b, k, : mask.shape[0], : mask.shape[1]] = mask
            rows, cols = np.nonzero(mask)
            dets["detection_boxes"][b, k] = [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]
    return dets


def _scene():
    return [
        (1, 3, _mask(1, (2, 12), (2, 10))),
        (1, 7, _mask(1, (12, 18), (15, 28))),
        (2, 3, _mask(2, (0, 8), (0, 8))),
    ]


def test_results_format():
    scene = _scene()
    dets = _detections([[(7, 0.9, scene[1][2])], [(3, 0.8, scene[2][2])]])
    results = detections_to_coco_results(dets, [1, 2], original_sizes=[SIZES[1], SIZES[2]])
    assert [(r["image_id"], r["category_id"]) for r in results] == [(1, 7), (2, 3)]
    assert results[0]["score"] == pytest.approx(0.9)
    assert results[0]["bbox"] == [15.0, 12.0, 13.0, 6.0]  # x, y, w, h
    assert isinstance(results[1]["segmentation"]["counts"], str)
    assert results[1]["segmentation"]["size"] == [16, 16]  # cut to the original size
    decoded = mask_utils.decode(results[1]["segmentation"])
    np.testing.assert_array_equal(decoded, scene[2][2])
    json.dumps(results)  # plain Python types only


def test_perfect_predictions_give_ap_one():
    scene = _scene()
    dets = _detections([[(3, 0.9, scene[0][2]), (7, 0.8, scene[1][2])], [(3, 0.7, scene[2][2])]])
    results = detections_to_coco_results(dets, [1, 2], original_sizes=[SIZES[1], SIZES[2]])
    before = copy.deepcopy(results)
    metrics = evaluate_coco(_ground_truth(scene), results, per_category=True)
    assert results == before  # pycocotools' loadRes adds id, area, bbox: to copies only
    for key in ("AP", "AP50", "AP75", "APs", "AP/circle", "AP/square"):
        assert metrics[key] == pytest.approx(1.0), key
    assert metrics["APm"] == -1.0 and metrics["APl"] == -1.0  # no medium or large instance


def test_one_of_two_found():
    # Recall reaches 1/2 at precision 1: 51 of COCO's 101 recall points (0, .01, ..., .5).
    scene = _scene()[:2]
    scene[1] = (1, 3, scene[1][2])  # both instances of class 3
    dets = _detections([[(3, 0.9, scene[0][2])]])
    results = detections_to_coco_results(dets, [1], original_sizes=[SIZES[1]])
    metrics = evaluate_coco(_ground_truth(scene), results, per_category=True, image_ids=[1])
    assert metrics["AP"] == pytest.approx(51 / 101)
    assert metrics["AP50"] == pytest.approx(51 / 101)
    assert metrics["AP/circle"] == pytest.approx(51 / 101)
    assert "AP/square" not in metrics  # no ground truth of that class


def test_partial_overlap_matches_low_thresholds_only():
    # GT 10 x 8 pixels, prediction its left 10 x 5: IoU 50 / 80 = 0.625, a match at
    # IoU thresholds 0.50, 0.55 and 0.60 of the ten (0.50:0.05:0.95): AP = 3 / 10.
    scene = _scene()[:1]
    dets = _detections([[(3, 0.9, _mask(1, (2, 12), (2, 7)))]])
    results = detections_to_coco_results(dets, [1], original_sizes=[SIZES[1]])
    metrics = evaluate_coco(_ground_truth(scene), results, image_ids=[1])
    assert metrics["AP"] == pytest.approx(0.3)
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(0.0)


def test_empty_results():
    metrics = evaluate_coco(_ground_truth(_scene()), [], per_category=True)
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0 and metrics["AP/square"] == 0.0
    assert metrics["APm"] == -1.0
    dets = _detections([[], []])
    assert detections_to_coco_results(dets, [1, 2]) == []


def test_write_metrics_json(tmp_path):
    path = tmp_path / "eval" / "metrics.json"
    write_metrics_json(path, {"AP": np.float32(0.25), "step": np.int64(7)})
    assert json.loads(path.read_text()) == {"AP": 0.25, "step": 7}


def test_the_last_smaller_batch_runs_the_traced_batch_size():
    import tensorflow as tf

    from solo_tf.eval_lib import detect_dataset

    # 5 images in batches of 2: the last batch (1 image) is padded with copies of its image
    # to 2, so detect_fn traces once; each image's detections are its own. The fake detector
    # finds one 4 x 4 square per image, scored by the image's mean (its id / 10).
    @tf.function
    def detect(images, image_info):
        batch = tf.shape(images)[0]
        masks = tf.pad(tf.ones([batch, 1, 4, 4], tf.uint8), [[0, 0], [0, 0], [0, 4], [0, 4]])
        return {
            "num_detections": tf.ones([batch], tf.int32),
            "detection_scores": tf.reduce_mean(images, [1, 2, 3])[:, None],
            "detection_classes": tf.ones([batch, 1], tf.int32),
            "detection_masks": masks,
            "detection_boxes": tf.tile(tf.constant([[[0.0, 0.0, 4.0, 4.0]]]), [batch, 1, 1]),
        }

    ids = np.arange(1, 6)
    info = np.array([[8, 8], [1, 1], [8, 8], [0, 0]], np.float32)
    dataset = tf.data.Dataset.from_tensor_slices(
        {
            "image": (ids[:, None, None, None] / 10 * np.ones([1, 8, 8, 3])).astype(np.float32),
            "image_info": np.tile(info, [5, 1, 1]),
            "image_id": ids,
        }
    ).batch(2)
    results, image_ids, _ = detect_dataset(detect, dataset, progress=False)
    assert image_ids == [1, 2, 3, 4, 5]
    assert [r["image_id"] for r in results] == [1, 2, 3, 4, 5]
    assert [r["score"] for r in results] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert detect.experimental_get_tracing_count() == 1
