"""Masks or classes? What a set of detections gets right, object by object.

Run:  python scripts/diagnose_detections.py ANNOTATIONS.json DETECTIONS.json
      (DETECTIONS.json: what ``solo_tf.evaluate --output_dir`` writes, COCO results format)

Prints mask AP with and without the categories (pycocotools ``useCats``), and for every
ground-truth object whether some detection's mask overlaps it with IoU >= 0.5 and, if so,
whether the highest-scored of those has the right class. Many matched masks with wrong
classes point at the category branch; few matched masks at the mask branch.
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import statistics
import sys

from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from solo_tf import eval_lib  # noqa: E402


def mask_ap(gt: COCO, detections: list, use_categories: bool) -> tuple[float, float]:
    """(AP, AP50) of segm detections (``eval_lib.evaluate_coco``); class-agnostic when
    ``use_categories`` is False."""
    # loadRes adds fields to the dicts it is given (a numpy bbox that a second call cannot
    # take): hand it copies.
    metrics = eval_lib.evaluate_coco(
        gt, [dict(d) for d in detections], use_categories=use_categories
    )
    return metrics["AP"], metrics["AP50"]


def match_objects(gt: COCO, detections: list, iou: float = 0.5) -> dict:
    """Per ground-truth object: "no mask" (no detection with mask IoU >= ``iou``), "right
    class" or "wrong class" (the class of the highest-scored detection among those).

    Returns the counts, ``right_scores`` / ``wrong_scores`` (that detection's score) and
    ``num_objects``.
    """
    by_image = collections.defaultdict(list)
    for det in detections:
        by_image[det["image_id"]].append(det)
    counts = collections.Counter()
    scores = {"right": [], "wrong": []}
    for ann in gt.dataset["annotations"]:
        candidates = by_image.get(ann["image_id"], [])
        if candidates:
            overlaps = mask_utils.iou(
                [d["segmentation"] for d in candidates], [gt.annToRLE(ann)], [0]
            )[:, 0]
            candidates = [d for d, o in zip(candidates, overlaps, strict=True) if o >= iou]
        if not candidates:
            counts["no mask"] += 1
            continue
        best = max(candidates, key=lambda d: d["score"])
        verdict = "right" if best["category_id"] == ann["category_id"] else "wrong"
        counts[f"{verdict} class"] += 1
        scores[verdict].append(best["score"])
    return {
        **counts,
        "right_scores": scores["right"],
        "wrong_scores": scores["wrong"],
        "num_objects": len(gt.dataset["annotations"]),
    }


def main(argv) -> int:
    if len(argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(argv[1])
    with open(argv[2]) as f:
        detections = json.load(f)
    for use, name in ((True, "mask AP"), (False, "class-agnostic mask AP")):
        ap, ap50 = mask_ap(gt, detections, use)
        print(f"{name}: {ap:.3f} (AP50 {ap50:.3f})")
    result = match_objects(gt, detections)
    total = result["num_objects"]
    for key in ("no mask", "right class", "wrong class"):
        print(f"objects, {key}: {result.get(key, 0)} of {total}")
    for key in ("right", "wrong"):
        values = result[f"{key}_scores"]
        median = f"{statistics.median(values):.2f}" if values else "-"
        print(f"median score of the {key}-class matches: {median}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
