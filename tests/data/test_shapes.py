"""Tests of the embedded synthetic dataset (solo_tf.data.shapes)."""

import hashlib
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from solo_tf.data import shapes, shapes_heldout, shapes_render

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
EXPECTED_CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "triangle", "supercategory": "shape"},
    {"id": 3, "name": "square", "supercategory": "shape"},
    {"id": 4, "name": "star", "supercategory": "shape"},
]
SPLITS = {"train": 20, "val": 8, "heldout": 8}  # images per split of the `dataset` fixture
MAX_INSTANCES = {"train": 12, "val": 12, "heldout": shapes_heldout.MAX_OBJECTS}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """20 train, 8 val and 8 held-out images at the default sizes."""
    root = tmp_path_factory.mktemp("shapes")
    return shapes.generate(str(root), **{f"num_{s}": n for s, n in SPLITS.items()}, seed=0)


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
    for split, count in SPLITS.items():
        assert dataset[f"num_{split}"] == count
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


@pytest.mark.parametrize("split", list(SPLITS))
def test_annotations_decode_to_exact_masks(dataset, split):
    coco = COCO(dataset[f"{split}_annotations"])
    assert coco.getCatIds() == [1, 2, 3, 4]
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert 1 <= len(anns) <= MAX_INSTANCES[split]
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


@pytest.mark.parametrize("split", ["val", "heldout"])
def test_backgrounds_are_textured(dataset, split):
    coco = COCO(dataset[f"{split}_annotations"])
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        with Image.open(os.path.join(dataset[f"{split}_images"], info["file_name"])) as image:
            pixels = np.asarray(image, np.float32)
        objects = np.zeros(pixels.shape[:2], bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            objects |= coco.annToMask(ann).astype(bool)
        assert pixels[~objects].std(axis=0).max() > 3.0


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        shapes.generate(str(tmp_path / name), num_train=4, num_val=2, seed=seed, num_heldout=3)
    first, second, other = (_files(tmp_path / n) for n in "abc")
    assert len(first) == 4 + 2 + 3 + 3
    assert first == second
    assert first.keys() == other.keys()
    assert all(first[k] != other[k] for k in first)


def test_splits_differ(dataset):
    first = {s: Image.open(os.path.join(dataset[f"{s}_images"], "000001.png")) for s in SPLITS}
    for a, b in (("train", "val"), ("train", "heldout"), ("val", "heldout")):
        assert first[a].size != first[b].size or not np.array_equal(
            np.asarray(first[a]), np.asarray(first[b])
        )


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
        shapes.generate(str(tmp_path), num_train=1, num_val=1, num_heldout=-1)
    with pytest.raises(ValueError):
        shapes.generate(str(tmp_path), num_train=1, num_val=1, min_size=300, max_size=200)


def test_command_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    command = [sys.executable, "-m", "solo_tf.data.shapes", f"--output_dir={tmp_path}"]
    command += ["--num_train=2", "--num_val=1", "--num_heldout=3", "--seed=3"]
    command += ["--min_size=64", "--max_size=96"]
    subprocess.run(command, check=True, cwd=REPO_ROOT, env=env, capture_output=True, timeout=600)
    with open(tmp_path / "annotations" / "instances_val.json") as f:
        data = json.load(f)
    assert len(data["images"]) == 1 and data["info"]["seed"] == 3
    assert len(os.listdir(tmp_path / "train")) == 2
    assert len(os.listdir(tmp_path / "heldout")) == 3
    for info in data["images"]:
        assert 64 <= info["height"] <= 96 and 64 <= info["width"] <= 96


# ----------------------------------------------------------------------------------------
# The held-out style split and the train/val bytes it must leave alone

# sha256 (first 16 hex digits) of image, packed masks and category ids, written down from the
# generator as committed before the held-out split existed: the val AP of earlier runs stays
# comparable only while these hold.
TRAIN_VAL_DIGESTS = {
    ("train", 0): "1449e73811cd2ba1",
    ("train", 1): "ab5b94fc4a07a0d2",
    ("train", 7): "4fd654eb47467419",
    ("val", 0): "50e5d71fc1034249",
    ("val", 1): "5e114727b0daf694",
    ("val", 7): "546eade06d88fb53",
}


def _digest(rendered: shapes.RenderedImage) -> str:
    h = hashlib.sha256(rendered.image.tobytes())
    h.update(np.packbits(rendered.masks).tobytes())
    h.update(np.asarray(rendered.category_ids, np.int64).tobytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def heldout_rendered():
    """60 held-out style images (no files), for the statistics."""
    return [
        shapes_heldout.render_heldout_image(shapes.image_rng(123, "heldout", i)) for i in range(60)
    ]


def test_train_and_val_are_unchanged():
    for (split, index), expected in TRAIN_VAL_DIGESTS.items():
        rendered = shapes.render_image(shapes.image_rng(0, split, index), 64, 160)
        assert _digest(rendered) == expected, (split, index)


def test_train_and_val_bytes_do_not_depend_on_heldout(tmp_path):
    shapes.generate(str(tmp_path / "a"), num_train=2, num_val=2, seed=4, num_heldout=0)
    shapes.generate(str(tmp_path / "b"), num_train=2, num_val=2, seed=4, num_heldout=2)
    without, with_heldout = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert "annotations/instances_heldout.json" not in without
    assert not (tmp_path / "a" / "heldout").exists()
    assert without == {k: v for k, v in with_heldout.items() if "heldout" not in k}
    assert len(with_heldout) == len(without) + 3


def test_heldout_json_reads_without_skips(dataset):
    from solo_tf.data.coco import CocoReader

    with open(dataset["heldout_annotations"]) as f:
        data = json.load(f)
    assert data["categories"] == EXPECTED_CATEGORIES
    assert data["info"]["description"] == "solo-tf synthetic shapes, heldout split"
    reader = CocoReader(
        dataset["heldout_annotations"], dataset["heldout_images"], bad_sample_policy="skip"
    )
    assert reader.num_images == SPLITS["heldout"]
    for index in range(reader.num_images):
        example = reader.load(index)
        assert example is not None and len(example["classes"]) >= 1
        assert example["masks"].sum(axis=(1, 2)).min() >= shapes.MIN_VISIBLE_AREA
    assert not reader.skipped
    assert dataset["num_heldout_instances"] == len(data["annotations"])


def test_heldout_backgrounds_are_families_training_never_shows(heldout_rendered):
    assert not set(shapes_heldout.HELDOUT_BACKGROUNDS) & set(shapes.BACKGROUNDS)
    assert not set(shapes_heldout.HELDOUT_DISTRACTORS) & set(shapes.DISTRACTORS)
    families = [r.background for r in heldout_rendered]
    assert set(families) == set(shapes_heldout.HELDOUT_BACKGROUNDS)  # each one, nothing else


def test_heldout_background_families():
    rng = np.random.default_rng(0)
    checker = shapes_heldout._checker(rng, 64, 96)
    assert checker.shape == (64, 96, 3) and len(np.unique(checker.reshape(-1, 3), axis=0)) == 2
    duotone = shapes_heldout._duotone(rng, 64, 96)
    pixels = duotone.reshape(-1, 3)
    assert np.linalg.norm(pixels.max(0) - pixels.min(0)) > 140.0  # a strong gradient
    collage = shapes_heldout._collage(rng, 64, 96)
    assert np.abs(np.diff(collage, axis=1)).max() < 60.0  # blurred: no hard edge
    for image in (checker, duotone, collage):
        assert image.dtype == np.float32 and image.min() >= 0 and image.max() <= 255


def test_round_corners_hand_worked():
    square = np.array([[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]])
    chamfer = shapes_heldout.round_corners(square, 0.25, 1)
    assert chamfer.shape == (8, 2)
    np.testing.assert_allclose(chamfer[:4], [[0, 0.5], [0.5, 0], [1.5, 0], [2, 0.5]])
    rounded = shapes_heldout.round_corners(square, 0.25, 2)
    # The Bezier midpoint: 0.25 before + 0.5 corner + 0.25 after.
    np.testing.assert_allclose(rounded[:3], [[0, 0.5], [0.125, 0.125], [0.5, 0]])


def test_heldout_distractors_hand_worked():
    parts = shapes_heldout.distractor_parts(np.random.default_rng(0), "crescent")
    (vertices, fill), outer_points = parts[0], 33
    # Between the unit half circle and a half ellipse of x-radius k: area (1 - k) * pi / 2.
    k = vertices[outer_points:, 0].max()
    assert fill == 1 and 0.2 <= k <= 0.6
    area = shapes_render._polygon_area(vertices)
    assert area == pytest.approx((1 - k) * math.pi / 2, rel=0.01)
    arrow = shapes_heldout.distractor_parts(np.random.default_rng(0), "arrow")[0][0]
    assert arrow.shape == (7, 2) and arrow[:, 0].max() == 1.0 and arrow[:, 0].min() == -1.0
    for kind in shapes_heldout.DISTRACTOR_KINDS:
        parts = shapes_heldout.distractor_parts(np.random.default_rng(1), kind)
        scaled, area = shapes_render._scaled_parts(np.random.default_rng(2), parts, 2000.0)
        drawn = shapes_render._rasterize([(v + 100, fill) for v, fill in scaled], 200, 200)
        assert drawn is not None and 0.5 * area < drawn[2].sum() < 1.5 * area, kind


def test_hollow_outline_is_a_stroke():
    unit = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    parts, area = shapes_heldout._scaled_outline(np.random.default_rng(0), unit, 3600.0, "stroke")
    assert [fill for _, fill in parts] == [1, 0]
    y0, x0, mask = shapes_render._rasterize([(v + 100, fill) for v, fill in parts], 200, 200)
    assert not mask[100 - y0, 100 - x0]  # the centre is hollow
    assert mask.sum() == pytest.approx(area, rel=0.1) and area < 0.6 * 3600
    solid, solid_area = shapes_heldout._scaled_outline(np.random.default_rng(0), unit, 3600, "x")
    assert len(solid) == 1 and solid_area == 3600


def test_heldout_outlines_are_centred():
    rng = np.random.default_rng(0)
    for category in shapes.CATEGORIES:
        for _ in range(10):
            vertices = shapes_heldout.heldout_outline(rng, category["name"])
            centroid = shapes_heldout._polygon_centroid(vertices)
            np.testing.assert_allclose(centroid, [0.0, 0.0], atol=1e-9)
            assert shapes_render._polygon_area(vertices) > 0.3


def test_heldout_style_statistics(heldout_rendered):
    visible = np.concatenate([r.masks.sum(axis=(1, 2)) for r in heldout_rendered])
    full = np.concatenate([r.full_areas for r in heldout_rendered])
    assert np.all(visible <= full)
    fraction = visible / full
    assert fraction.min() >= shapes_heldout.MIN_VISIBLE_FRACTION - 1e-9
    assert np.mean(fraction < shapes.MIN_VISIBLE_FRACTION) > 0.01  # heavier than training
    fills = [(f, c) for r in heldout_rendered for f, c in zip(r.fills, r.category_ids, strict=True)]
    assert {f for f, _ in fills} == set(shapes_heldout.FILLS)
    assert ("stroke", 1) not in fills  # a hollow circle would be the training ring distractor
    with_distractors = np.mean([r.num_distractors > 0 for r in heldout_rendered])
    assert 0.45 < with_distractors < 0.75
    counts = [len(r.category_ids) for r in heldout_rendered]
    assert np.mean(counts) > 6 and max(counts) <= shapes_heldout.MAX_OBJECTS
    for r in heldout_rendered[:20]:
        assert r.masks.sum(axis=0).max() == 1  # visible masks never overlap
        image = r.image.astype(np.float32)
        for mask in r.masks:
            border = _dilate(mask, 2) & ~mask
            assert np.linalg.norm(image[mask].mean(0) - image[border].mean(0)) > 40.0


def test_heldout_is_deterministic_and_separate_from_val():
    first = shapes_heldout.render_heldout_image(shapes.image_rng(9, "heldout", 3), 64, 128)
    again = shapes_heldout.render_heldout_image(shapes.image_rng(9, "heldout", 3), 64, 128)
    assert _digest(first) == _digest(again) and first.fills == again.fills
    assert len(set(shapes.SPLIT_CODES.values())) == len(shapes.SPLIT_CODES) == 3


# ----------------------------------------------------------------------------------------
# The train split's varied looks (render_image(..., variety=p), generate(train_variety=p))


def test_varied_families_are_not_heldout_families():
    assert not set(shapes_render.VARIED_BACKGROUNDS) & set(shapes_heldout.HELDOUT_BACKGROUNDS)
    assert not set(shapes_render.VARIED_BACKGROUNDS) & set(shapes.BACKGROUNDS)
    assert not set(shapes_render.VARIED_FILLS) & set(shapes_heldout.FILLS)


def test_stretch_and_shear_hand_worked():
    square = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    out = shapes_render.stretch_and_shear(square, math.log(2.0), 0.5)
    # x' = 2x + 0.5 y', y' = y / 2.
    np.testing.assert_allclose(out, [[2, 0], [0.25, 0.5], [-2, 0], [-0.25, -0.5]])
    assert shapes_render._polygon_area(out) == pytest.approx(shapes_render._polygon_area(square))


def test_bordered_fill_is_the_inner_rim():
    mask = np.ones((9, 9), bool)  # radius sqrt(81 / pi) = 5.1: the rim is 1 pixel wide
    rim = shapes_render.fill_pattern(np.random.default_rng(0), "bordered", mask)
    expected = np.ones((9, 9), np.float32)
    expected[1:-1, 1:-1] = 0
    np.testing.assert_array_equal(rim, expected)
    disc = np.hypot(*np.mgrid[-20:21, -20:21]) <= 20  # radius 20: a rim of 2 to 5 pixels
    rim = shapes_render.fill_pattern(np.random.default_rng(1), "bordered", disc) > 0
    assert not (rim & ~disc).any() and rim[0, 20] and not rim[20, 20]
    width = np.flatnonzero(~rim[20, :21] & disc[20, :21])[0] - np.flatnonzero(disc[20])[0]
    assert 2 <= width <= 5


@pytest.mark.parametrize("fill", shapes_render.VARIED_FILLS)
def test_varied_fills_are_two_colour_patterns(fill):
    mask = np.ones((48, 64), bool)
    for seed in range(3):
        t = shapes_render.fill_pattern(np.random.default_rng(seed), fill, mask)
        assert t.shape == mask.shape and t.dtype == np.float32
        assert t.min() >= 0 and t.max() <= 1 and 0.05 < t.mean() < 0.95
    if fill in ("dotted", "banded", "bordered"):
        assert set(np.unique(t)) == {0.0, 1.0}
    if fill == "banded":  # the centre starts a band of the first colour
        assert t[24, 32] == 0 and t[24, 31] == 0


def test_varied_backgrounds_are_hard_edged():
    base = np.array([100.0, 150.0, 50.0])
    mosaic = shapes_render._mosaic(np.random.default_rng(0), 64, 96, base)
    colours = np.unique(mosaic.reshape(-1, 3), axis=0)
    assert 2 <= len(colours) <= 4 and base.astype(np.float32).tolist() in colours.tolist()
    bars = shapes_render._bars(np.random.default_rng(0), 64, 96, base)
    assert len(np.unique(bars.reshape(-1, 3), axis=0)) == 2
    assert np.abs(np.diff(bars, axis=1)).max() > 20.0  # hard edges, unlike BACKGROUNDS
    image = shapes_render.varied_background(np.random.default_rng(3), 64, 96)
    assert image.shape == (64, 96, 3) and image.dtype == np.float32


def test_variety_draws_other_images_with_the_same_rules():
    with pytest.raises(ValueError, match="variety"):
        shapes.render_image(shapes.image_rng(0, "train", 0), variety=1.5)
    plain = [shapes.render_image(shapes.image_rng(0, "train", i), 96, 160) for i in range(12)]
    varied = [shapes.render_image(shapes.image_rng(0, "train", i), 96, 160, 1.0) for i in range(12)]
    assert all(_digest(a) != _digest(b) for a, b in zip(plain, varied, strict=True))
    for r in varied:
        assert r.masks.sum(axis=0).max() <= 1 and len(r.category_ids) >= 1
        assert r.masks.sum(axis=(1, 2)).min() >= shapes.MIN_VISIBLE_AREA
    assert np.mean([r.num_distractors > 0 for r in varied]) > np.mean(
        [r.num_distractors > 0 for r in plain]
    )


def test_train_variety_changes_only_the_train_split(tmp_path):
    shapes.generate(str(tmp_path / "a"), num_train=2, num_val=2, seed=1, num_heldout=1)
    shapes.generate(
        str(tmp_path / "b"), num_train=2, num_val=2, seed=1, num_heldout=1, train_variety=0.5
    )
    plain, varied = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert plain.keys() == varied.keys()
    for key in plain:
        if key.startswith("val/") or "val" in key or "heldout" in key:
            assert plain[key] == varied[key], key
    assert plain["train/000001.png"] != varied["train/000001.png"]
    with open(tmp_path / "b" / "annotations" / "instances_train.json") as f:
        assert json.load(f)["info"]["variety"] == 0.5
    with pytest.raises(ValueError, match="train_variety"):
        shapes.generate(str(tmp_path / "c"), num_train=1, num_val=1, train_variety=-0.1)


def test_workers_draw_the_same_bytes(tmp_path):
    kwargs = {"num_train": 5, "num_val": 2, "num_heldout": 3, "seed": 2, "train_variety": 0.5}
    shapes.generate(str(tmp_path / "one"), **kwargs)
    shapes.generate(str(tmp_path / "two"), **kwargs, workers=2)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
