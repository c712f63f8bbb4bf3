"""scripts/heldout_breakdown.py: the held-out split's families redrawn, AP split by them."""

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "heldout_breakdown", os.path.join(ROOT, "scripts", "heldout_breakdown.py")
)
breakdown_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(breakdown_script)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    from solo_tf.data import shapes

    root = tmp_path_factory.mktemp("heldout")
    paths = shapes.generate(
        str(root), num_train=1, num_val=1, num_heldout=8, seed=3, min_size=96, max_size=160
    )
    with open(paths["heldout_annotations"]) as f:
        return json.load(f)


def test_families_are_redrawn_from_the_seed(heldout):
    from solo_tf.data import shapes, shapes_heldout

    backgrounds, fills = breakdown_script.heldout_families(heldout)
    assert sorted(fills) == sorted(a["id"] for a in heldout["annotations"])
    third = shapes_heldout.render_heldout_image(shapes.image_rng(3, "heldout", 2), 96, 160)
    assert backgrounds[3] == third.background
    first_of_third = min(a["id"] for a in heldout["annotations"] if a["image_id"] == 3)
    assert [fills[first_of_third + k] for k in range(len(third.fills))] == third.fills
    broken = {**heldout, "annotations": heldout["annotations"][1:]}
    with pytest.raises(ValueError, match="image 1"):
        breakdown_script.heldout_families(broken)


def test_perfect_detections_of_one_fill_score_one_there_only(heldout):
    _, fills = breakdown_script.heldout_families(heldout)
    detections = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "segmentation": a["segmentation"],
            "score": 0.9,
        }
        for a in heldout["annotations"]
        if fills[a["id"]] == "shaded"
    ]
    assert 0 < len(detections) < len(heldout["annotations"])
    rows = breakdown_script.breakdown(heldout, detections)
    assert rows["fill shaded"]["AP"] == pytest.approx(1.0)
    others = [name for name in rows if name.startswith("fill ") and name != "fill shaded"]
    assert others and all(rows[name]["AP"] == 0.0 for name in others)
    assert 0.0 < rows["all"]["AP"] < 1.0
    assert {n for n in rows if n.startswith("background ")} <= {
        "background checker",
        "background duotone",
        "background collage",
    }
