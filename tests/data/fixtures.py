"""Tiny COCO datasets for the reader tests, generated with numpy, PIL and pycocotools.

``write_tiny_coco(root)`` writes four images of different sizes and modes with polygon,
compressed-RLE and uncompressed-RLE (crowd) annotations and returns what a reader must yield
for each image id. Category ids 90, 3, 7 (listed in that order) map to indices 2, 0, 1.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

CATEGORIES = [
    {"id": 90, "name": "zebra", "supercategory": "animal"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 7, "name": "train", "supercategory": "vehicle"},
]
CLASS_INDEX = {3: 0, 7: 1, 90: 2}


def box_mask(height: int, width: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    """uint8 [H, W] mask with ones on rows top..bottom-1 and columns left..right-1."""
    mask = np.zeros([height, width], np.uint8)
    mask[top:bottom, left:right] = 1
    return mask


def square_polygon(left: float, top: float, size: float) -> list[float]:
    """A COCO polygon (flat x, y) whose pixels are [top, top+size) x [left, left+size)."""
    right, bottom = left + size, top + size
    return [left, top, right, top, right, bottom, left, bottom]


def compressed_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a [H, W] mask, JSON-ready (counts as str)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.astype(np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def encode_image(array: np.ndarray, fmt: str, mode: str | None = None, **kwargs) -> bytes:
    image = Image.fromarray(array) if mode is None else Image.fromarray(array).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def write_json(path: str, data) -> str:
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


@dataclasses.dataclass
class TinyCoco:
    annotation_file: str
    image_dir: str
    # image id -> expected example (numpy arrays, as in docs/architecture.md section 1);
    # "image" is None where the file is lossy (JPEG) and cannot be compared exactly.
    expected: dict[int, dict]
    # image id -> (top, left, bottom, right) pixel box of each instance.
    boxes: dict[int, list[tuple[int, int, int, int]]]


def _pixels(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, [height, width, 3], dtype=np.uint8)


def write_tiny_coco(root: str) -> TinyCoco:
    """Writes ``root/images/*`` and ``root/annotations.json``; returns the expected examples."""
    image_dir = os.path.join(root, "images")
    os.makedirs(image_dir, exist_ok=True)
    images, annotations, expected, boxes = [], [], {}, {}

    def add_image(image_id, file_name, data, height, width, pixels):
        with open(os.path.join(image_dir, file_name), "wb") as f:
            f.write(data)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        expected[image_id] = {
            "image": pixels,
            "masks": np.zeros([0, height, width], np.uint8),
            "classes": np.zeros([0], np.int32),
            "is_crowd": np.zeros([0], bool),
            "image_id": np.int64(image_id),
            "original_size": np.array([height, width], np.int32),
        }
        boxes[image_id] = []

    def add_annotation(ann_id, image_id, category_id, segmentation, box, crowd=False):
        top, left, bottom, right = box
        height, width = expected[image_id]["original_size"]
        mask = box_mask(height, width, top, left, bottom, right)
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": segmentation,
                "area": float(mask.sum()),
                "bbox": [left, top, right - left, bottom - top],
                "iscrowd": int(crowd),
            }
        )
        example = expected[image_id]
        example["masks"] = np.concatenate([example["masks"], mask[None]])
        example["classes"] = np.append(example["classes"], np.int32(CLASS_INDEX[category_id]))
        example["is_crowd"] = np.append(example["is_crowd"], crowd)
        boxes[image_id].append(box)

    # 1: RGB PNG, 30x40: a 10x10 polygon square (car) and a compressed-RLE box (zebra).
    rgb = _pixels(30, 40, 1)
    add_image(1, "rgb.png", encode_image(rgb, "PNG"), 30, 40, rgb)
    add_annotation(101, 1, 3, [square_polygon(5, 5, 10)], (5, 5, 15, 15))
    add_annotation(102, 1, 90, compressed_rle(box_mask(30, 40, 20, 30, 25, 38)), (20, 30, 25, 38))
    # 2: greyscale JPEG, 20x24: an uncompressed-RLE crowd (train) and a car drawn as one
    # polygon square (two-part polygons are tested on their own).
    grey = np.full([20, 24], 128, np.uint8)
    add_image(2, "grey.jpg", encode_image(grey, "JPEG", quality=95), 20, 24, None)
    add_annotation(201, 2, 7, uncompressed_rle(box_mask(20, 24, 2, 3, 6, 10)), (2, 3, 6, 10), True)
    add_annotation(202, 2, 3, [square_polygon(12, 10, 8)], (10, 12, 18, 20))
    # 3: palette PNG, 16x16, no objects.
    palette = Image.fromarray(_pixels(16, 16, 3)).quantize(colors=4)
    buffer = io.BytesIO()
    palette.save(buffer, "PNG")
    add_image(3, "palette.png", buffer.getvalue(), 16, 16, np.asarray(palette.convert("RGB")))
    # 4: RGBA PNG, 12x20: one zebra polygon; alpha is dropped.
    rgba = np.dstack([_pixels(12, 20, 4), np.full([12, 20], 7, np.uint8)])
    add_image(4, "rgba.png", encode_image(rgba, "PNG"), 12, 20, rgba[..., :3])
    add_annotation(401, 4, 90, [square_polygon(2, 3, 6)], (3, 2, 9, 8))

    annotation_file = write_json(
        os.path.join(root, "annotations.json"),
        {"images": images, "annotations": annotations, "categories": CATEGORIES},
    )
    return TinyCoco(annotation_file, image_dir, expected, boxes)
