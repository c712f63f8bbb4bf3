"""Where the held-out style defeats a model: its AP by background family and by fill.

Run:  python scripts/heldout_breakdown.py DATA/annotations/instances_heldout.json \
          EVAL_HELDOUT/detections.json
      (the files ``make demo`` writes under its folder: data/annotations/, eval_heldout/)

The held-out split's JSON does not record which background an image has nor which fill an
object has; ``shapes_heldout.render_heldout_image`` does, and it draws the same images again
from the seed and sizes the JSON's ``info`` records. Rows:
- one per background family: AP over that family's images only;
- one per fill: AP with every object of another fill ignored (made a crowd region, so that a
  detection of it neither counts as a hit nor as a false positive; pycocotools takes only
  ``iscrowd`` as the ignore mark).
Each row gives AP, AP50 and AP per category (IoU .5:.95, all areas, 100 detections).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import sys

from pycocotools.coco import COCO

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from solo_tf import eval_lib  # noqa: E402
from solo_tf.data import shapes, shapes_heldout  # noqa: E402


def heldout_families(dataset: dict) -> tuple[dict[int, str], dict[int, str]]:
    """({image id: background family}, {annotation id: fill}) of a held-out split's JSON,
    drawn again from its seed; raises ValueError when the redrawn split does not match."""
    info = dataset["info"]
    backgrounds, fills = {}, {}
    for image in dataset["images"]:
        rng = shapes.image_rng(info["seed"], "heldout", image["id"] - 1)
        rendered = shapes_heldout.render_heldout_image(rng, info["min_size"], info["max_size"])
        if rendered.image.shape[:2] != (image["height"], image["width"]):
            raise ValueError(f"image {image['id']}: the redrawn image has another size")
        backgrounds[image["id"]] = rendered.background
        fills[image["id"]] = rendered.fills
    by_annotation = {}
    for image_id, image_fills in fills.items():
        annotations = [a for a in dataset["annotations"] if a["image_id"] == image_id]
        if len(annotations) != len(image_fills):
            raise ValueError(
                f"image {image_id}: {len(annotations)} annotations, redrawn "
                f"{len(image_fills)} objects"
            )
        for annotation, fill in zip(
            sorted(annotations, key=lambda a: a["id"]), image_fills, strict=True
        ):
            by_annotation[annotation["id"]] = fill
    return backgrounds, by_annotation


def _coco(dataset: dict) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    return coco


def _row(coco: COCO, detections: list, image_ids=None) -> dict[str, float]:
    metrics = eval_lib.evaluate_coco(coco, detections, per_category=True, image_ids=image_ids)
    return {k: v for k, v in metrics.items() if k in ("AP", "AP50") or k.startswith("AP/")}


def breakdown(dataset: dict, detections: list) -> dict[str, dict[str, float]]:
    """{row name: metrics} for the whole split, each background family and each fill."""
    backgrounds, fills = heldout_families(dataset)
    rows = {"all": _row(_coco(dataset), detections)}
    for family in shapes_heldout.HELDOUT_BACKGROUNDS:
        image_ids = [i for i, b in backgrounds.items() if b == family]
        if image_ids:
            rows[f"background {family}"] = _row(_coco(dataset), detections, image_ids)
    for fill in shapes_heldout.FILLS:
        only = copy.deepcopy(dataset)
        for annotation in only["annotations"]:
            if fills[annotation["id"]] != fill:
                annotation["iscrowd"] = 1
        if any(not a["iscrowd"] for a in only["annotations"]):
            rows[f"fill {fill}"] = _row(_coco(only), detections)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("annotations", help="instances_heldout.json")
    parser.add_argument("detections", help="detections.json of solo_tf.evaluate")
    args = parser.parse_args()
    with open(args.annotations) as f:
        dataset = json.load(f)
    with open(args.detections) as f:
        detections = json.load(f)
    rows = breakdown(dataset, detections)
    names = [k for k in rows["all"] if k.startswith("AP/")]
    print(f"{'':22s} {'AP':>6s} {'AP50':>6s} " + " ".join(f"{n[3:]:>8s}" for n in names))
    for name, metrics in rows.items():
        cells = " ".join(f"{metrics.get(n, float('nan')):8.3f}" for n in names)
        print(f"{name:22s} {metrics['AP']:6.3f} {metrics['AP50']:6.3f} {cells}")


if __name__ == "__main__":
    main()
