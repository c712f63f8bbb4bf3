"""scripts/diagnose_detections.py on a hand-worked case: one image, three objects."""

import importlib.util
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "diagnose_detections", os.path.join(ROOT, "scripts", "diagnose_detections.py")
)
diagnose = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(diagnose)


def _rle(rows, cols):
    mask = np.zeros((10, 10), np.uint8)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


A, B, C = _rle((0, 4), (0, 4)), _rle((5, 10), (5, 10)), _rle((0, 2), (7, 10))


@pytest.fixture
def case():
    """Objects A (class 1), B (class 2), C (class 1). Detections: A as class 1 (0.9), B as
    class 1 (0.8) and B again as class 2 (0.3); nothing on C."""
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "height": 10, "width": 10}],
        "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}],
        "annotations": [
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": c,
                "segmentation": m,
                "iscrowd": 0,
                "area": float(mask_utils.area(m)),
                "bbox": list(mask_utils.toBbox(m)),
            }
            for i, (c, m) in enumerate(((1, A), (2, B), (1, C)))
        ],
    }
    gt.createIndex()
    detections = [
        {"image_id": 1, "category_id": c, "segmentation": m, "score": s}
        for c, m, s in ((1, A, 0.9), (1, B, 0.8), (2, B, 0.3))
    ]
    return gt, detections


def test_objects_sorted_into_no_mask_right_and_wrong_class(case):
    result = diagnose.match_objects(*case)
    assert result["no mask"] == 1  # C
    assert result["right class"] == 1  # A
    assert result["wrong class"] == 1  # B: its best-scored mask says class 1
    assert result["right_scores"] == [0.9]
    assert result["wrong_scores"] == [0.8]
    assert result["num_objects"] == 3


def test_mask_ap_with_and_without_categories(case):
    # With classes: class 1 reaches recall 1/2 at precision 1 (51 of 101 recall points; the
    # 0.8 detection is a false positive), class 2 recall 1 at precision 1: (51/101 + 1) / 2.
    ap, ap50 = diagnose.mask_ap(*case, use_categories=True)
    assert ap == pytest.approx((51 / 101 + 1) / 2, abs=1e-6)
    assert ap50 == pytest.approx(ap, abs=1e-6)
    # Without: A and B found (recall 2/3 at precision 1: 67 of 101 points), the 0.3
    # duplicate of B a false positive after them.
    ap, _ = diagnose.mask_ap(*case, use_categories=False)
    assert ap == pytest.approx(67 / 101, abs=1e-6)
