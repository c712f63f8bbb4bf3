"""Tests of the embedded synthetic dataset (solo_tf.data.shapes)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from solo_tf.data import shapes

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
EXPECTED_CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "triangle", "supercategory": "shape"},
    {"id": 3, "name": "square", "supercategory": "shape"},
    {"id": 4, "name": "star", "supercategory": "shape"},
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """20 train and 8 val images at the default sizes."""
    root = tmp_path_factory.mktemp("shapes")
    return shapes.generate(str(root), num_train=20, num_val=8, seed=0)


@pytest.fixture(scope="module")
def rendered():
    """150 rendered images (no files), for the statistics."""
    return [shapes.render_image(shapes.image_rng(123, "train", i)) for i in range(150)]


def _files(root: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    h, w = mask.shape
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy : dy + h, dx : dx + w]
    return out


def test_result_paths_and_counts(dataset):
    assert dataset["num_train"] == 20 and dataset["num_val"] == 8
    for split, count in (("train", 20), ("val", 8)):
        assert dataset[f"{split}_annotations"].endswith(f"annotations/instances_{split}.json")
        assert sorted(os.listdir(dataset[f"{split}_images"])) == [
            f"{i:06d}.png" for i in range(1, count + 1)
        ]
        with open(dataset[f"{split}_annotations"]) as f:
            assert len(json.load(f)["annotations"]) == dataset[f"num_{split}_instances"]


def test_categories_and_json_layout(dataset):
    assert shapes.CATEGORIES == EXPECTED_CATEGORIES
    with open(dataset["train_annotations"]) as f:
        data = json.load(f)
    assert set(data) == {"info", "licenses", "images", "annotations", "categories"}
    assert data["categories"] == EXPECTED_CATEGORIES
    assert {"id", "file_name", "height", "width"} <= set(data["images"][0])
    assert all(isinstance(a["segmentation"]["counts"], str) for a in data["annotations"])
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])


@pytest.mark.parametrize("split", ["train", "val"])
def test_annotations_decode_to_exact_masks(dataset, split):
    coco = COCO(dataset[f"{split}_annotations"])
    assert coco.getCatIds() == [1, 2, 3, 4]
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert 1 <= len(anns) <= 12
        coverage = np.zeros((info["height"], info["width"]), np.int32)
        for ann in anns:
            mask = coco.annToMask(ann)
            assert mask.shape == (info["height"], info["width"])
            assert mask.sum() > 0 and mask.sum() == ann["area"]
            assert ann["area"] >= shapes.MIN_VISIBLE_AREA
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            box = [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
            assert ann["bbox"] == box
            assert ann["iscrowd"] == 0 and ann["category_id"] in (1, 2, 3, 4)
            coverage += mask
        assert coverage.max() == 1  # visible masks never overlap


def test_images_match_json_and_sizes(dataset):
    with open(dataset["train_annotations"]) as f:
        data = json.load(f)
    shapes_seen = set()
    for info in data["images"]:
        with Image.open(os.path.join(dataset["train_images"], info["file_name"])) as image:
            assert image.mode == "RGB" and image.format == "PNG"
            assert image.size == (info["width"], info["height"])
        assert 256 <= info["height"] <= 512 and 256 <= info["width"] <= 512
        shapes_seen.add(info["height"] == info["width"])
    assert False in shapes_seen  # non-square images are present


def test_backgrounds_are_textured(dataset):
    coco = COCO(dataset["val_annotations"])
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        with Image.open(os.path.join(dataset["val_images"], info["file_name"])) as image:
            pixels = np.asarray(image, np.float32)
        objects = np.zeros(pixels.shape[:2], bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            objects |= coco.annToMask(ann).astype(bool)
        assert pixels[~objects].std(axis=0).max() > 3.0


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        shapes.generate(str(tmp_path / name), num_train=4, num_val=2, seed=seed)
    first, second, other = (_files(tmp_path / n) for n in "abc")
    assert len(first) == 4 + 2 + 2
    assert first == second
    assert first.keys() == other.keys()
    assert all(first[k] != other[k] for k in first)


def test_splits_differ(dataset):
    train = Image.open(os.path.join(dataset["train_images"], "000001.png"))
    val = Image.open(os.path.join(dataset["val_images"], "000001.png"))
    assert train.size != val.size or not np.array_equal(np.asarray(train), np.asarray(val))


def test_size_mix(rendered):
    areas = np.concatenate([r.masks.sum(axis=(1, 2)) for r in rendered])
    small = np.mean(areas < 32**2)
    large = np.mean(areas > 96**2)
    medium = 1.0 - small - large
    assert min(small, medium, large) >= 0.15, (small, medium, large)


def test_occlusion_distractors_and_contrast(rendered):
    visible = np.concatenate([r.masks.sum(axis=(1, 2)) for r in rendered])
    full = np.concatenate([r.full_areas for r in rendered])
    assert np.all(visible <= full)
    assert np.mean(visible < full) > 0.1  # objects do overlap
    with_distractors = np.mean([r.num_distractors > 0 for r in rendered])
    assert 0.15 < with_distractors < 0.45
    for r in rendered[:40]:
        image = r.image.astype(np.float32)
        assert 1 <= len(r.category_ids) <= 12
        for mask in r.masks:
            border = _dilate(mask, 2) & ~mask
            inside, outside = image[mask].mean(axis=0), image[border].mean(axis=0)
            assert np.linalg.norm(inside - outside) > 40.0


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        shapes.generate(str(tmp_path), num_train=1, num_val=1, seed=-1)
    with pytest.raises(ValueError):
        shapes.generate(str(tmp_path), num_train=1, num_val=1, min_size=300, max_size=200)


def test_command_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, "-m", "solo_tf.data.shapes", f"--output_dir={tmp_path}"]
    command += ["--num_train=2", "--num_val=1", "--seed=3", "--min_size=64", "--max_size=96"]
    subprocess.run(command, check=True, cwd=REPO_ROOT, env=env, capture_output=True, timeout=120)
    with open(tmp_path / "annotations" / "instances_val.json") as f:
        data = json.load(f)
    assert len(data["images"]) == 1 and data["info"]["seed"] == 3
    assert len(os.listdir(tmp_path / "train")) == 2
    for info in data["images"]:
        assert 64 <= info["height"] <= 96 and 64 <= info["width"] <= 96
