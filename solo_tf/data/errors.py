"""Bad input: the checks on COCO annotations, the error they raise, the log of skips.

The readers share one policy (``DataConfig.bad_sample_policy``): ``"error"`` raises
``BadSampleError`` naming the file and the ids, ``"skip"`` drops the sample (or only the bad
annotation, where dropping it cannot mislabel a pixel) and records it in a ``SkipLog``.
A JSON that is not a COCO instances file at all (``validate_structure``) is always a
``ValueError``.
"""

from __future__ import annotations

import collections
import math
import operator
import threading

from absl import logging

POLICIES = ("error", "skip")
_MIN_POLYGON_AREA = 1e-9  # square pixels; below this a polygon is degenerate

# Reasons, the keys of ``SkipLog.counts``.
MISSING_FILE = "missing_file"  # image file not found (sample skipped)
UNDECODABLE_IMAGE = "undecodable_image"  # truncated, corrupt or not an image (sample)
IMAGE_SIZE_MISMATCH = "image_size_mismatch"  # decoded size != JSON height/width (sample)
MASK_SIZE_MISMATCH = "mask_size_mismatch"  # RLE size or length != image size (sample)
BAD_SEGMENTATION = "bad_segmentation"  # malformed segmentation field (sample)
DEGENERATE_POLYGON = "degenerate_polygon"  # < 3 points or zero area (that polygon)
EMPTY_MASK = "empty_mask"  # the instance covers no pixel (that annotation)
_ANNOTATION_REASONS = (DEGENERATE_POLYGON, EMPTY_MASK)  # the image is kept


class BadSampleError(ValueError):
    """A sample the reader cannot turn into a correct example; the message names file and ids."""

    def __init__(self, reason: str, message: str, image_id=None, annotation_id=None):
        super().__init__(message)
        self.reason = reason
        self.image_id = image_id
        self.annotation_id = annotation_id


class TooManySkipsError(ValueError):
    """More samples were skipped than ``max_skip_fraction`` allows."""


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"bad_sample_policy must be one of {POLICIES}, got {policy!r}")
    return policy


class SkipLog:
    """Thread-safe record of skipped samples, each counted and logged once.

    tf.data may decode one image several times (epochs, parallel calls); a skip is keyed by
    (reason, image id, annotation id) so the counts describe the dataset, not the iteration.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._seen: set[tuple] = set()
        self._images: set = set()  # ids of the images dropped whole
        self._counts: collections.Counter = collections.Counter()

    def record(self, error: BadSampleError) -> None:
        key = (error.reason, error.image_id, error.annotation_id)
        with self._lock:
            if key in self._seen:
                return
            self._seen.add(key)
            self._counts[error.reason] += 1
            if error.reason not in _ANNOTATION_REASONS:
                self._images.add(error.image_id)
        logging.warning("skipped (%s): %s", error.reason, error)

    @property
    def images_skipped(self) -> int:
        """How many images were dropped whole."""
        with self._lock:
            return len(self._images)

    @property
    def counts(self) -> collections.Counter:
        with self._lock:
            return collections.Counter(self._counts)


def skip_summary(counts, images_skipped: int, num_listed: int, cut_shards=None) -> str:
    """One line on what the ``skip`` policy left out: images dropped whole and annotations
    dropped, by reason (``SkipLog.counts``; None: TFRecords, not counted), and files whose
    tail could not be read (``{file: records read}``)."""
    if counts is None:
        parts = [
            f"{num_listed} records readable; examples that fail to decode are dropped "
            "and logged by tf.data, not counted"
        ]
        counts = {}
    else:
        whole = {k: v for k, v in sorted(counts.items()) if k not in _ANNOTATION_REASONS}
        parts = [f"{images_skipped} of {num_listed} images skipped ({_reasons(whole)})"]
    partial = {k: v for k, v in sorted(counts.items()) if k in _ANNOTATION_REASONS}
    if partial:
        dropped = sum(partial.values())
        parts.append(f"{dropped} annotations dropped, their images kept ({_reasons(partial)})")
    for path, count in sorted((cut_shards or {}).items()):
        parts.append(f"the tail of {path} could not be read ({count} records read)")
    return "; ".join(parts)


def _reasons(counts: dict) -> str:
    return ", ".join(f"{reason}: {count}" for reason, count in counts.items()) or "none"


def validate_structure(data, path: str) -> None:
    """Raises a ValueError naming the file and the entry for anything pycocotools would trip on."""
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{path}: missing key {key!r} (a COCO instances file needs it)")
        if not isinstance(data[key], list):
            raise ValueError(f"{path}: {key!r} must be a list, got {type(data[key]).__name__}")
    image_ids = _unique_ids(data["images"], "images", ("id", "file_name", "height", "width"), path)
    category_ids = _unique_ids(data["categories"], "categories", ("id", "name"), path)
    _unique_ids(data["annotations"], "annotations", ("id", "image_id", "category_id"), path)
    for image in data["images"]:
        for key in ("height", "width"):
            if not isinstance(image[key], int) or image[key] <= 0:
                raise ValueError(f"{path}: image id {image['id']} has {key} {image[key]!r}")
    for ann in data["annotations"]:
        if ann["image_id"] not in image_ids:
            raise ValueError(
                f"{path}: annotation id {ann['id']} refers to image id {ann['image_id']}, "
                "which is not in 'images'"
            )
        if ann["category_id"] not in category_ids:
            raise ValueError(
                f"{path}: annotation id {ann['id']} refers to category id "
                f"{ann['category_id']}, which is not in 'categories'"
            )


def _unique_ids(entries: list, key: str, required: tuple[str, ...], path: str) -> set:
    ids = set()
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {key}[{k}] must be an object, got {entry!r:.80}")
        missing = [field for field in required if field not in entry]
        if missing:
            raise ValueError(f"{path}: {key}[{k}] (id {entry.get('id')}) lacks {missing}")
        if not isinstance(entry["id"], int) or isinstance(entry["id"], bool):
            raise ValueError(f"{path}: {key}[{k}] has a non-integer id {entry['id']!r}")
        if entry["id"] in ids:
            raise ValueError(f"{path}: {key} holds id {entry['id']} twice")
        ids.add(entry["id"])
    return ids


def check_segmentation(ann: dict, height: int, width: int, where: str):
    """The annotation's segmentation, checked against the image size; BadSampleError if not."""

    def bad(reason, problem):
        return BadSampleError(
            reason, f"{where}: {problem}", image_id=ann["image_id"], annotation_id=ann["id"]
        )

    segmentation = ann.get("segmentation")
    if isinstance(segmentation, list):
        for k, polygon in enumerate(segmentation):
            if not isinstance(polygon, list) or len(polygon) % 2:
                raise bad(BAD_SEGMENTATION, f"polygon #{k} is not a list of x, y pairs")
            try:  # a finite sum means finite numbers (and is much faster than a loop)
                finite = math.isfinite(sum(polygon))
            except TypeError:
                finite = False
            if not finite:
                raise bad(BAD_SEGMENTATION, f"polygon #{k} holds non-finite numbers")
        return segmentation
    if not isinstance(segmentation, dict) or not {"counts", "size"} <= set(segmentation):
        raise bad(BAD_SEGMENTATION, f"unsupported segmentation {segmentation!r:.80}")
    size = list(segmentation["size"])
    if size != [height, width]:
        raise bad(
            MASK_SIZE_MISMATCH,
            f"RLE size {size} (HxW) differs from the image size {[height, width]}",
        )
    counts = segmentation["counts"]
    try:
        length = sum(rle_counts(counts))
    except ValueError as e:
        raise bad(BAD_SEGMENTATION, f"invalid RLE counts ({e})") from None
    if length != height * width:
        raise bad(
            MASK_SIZE_MISMATCH,
            f"RLE counts cover {length} pixels, the {height}x{width} image has {height * width}",
        )
    return segmentation


def rle_counts(counts) -> list[int]:
    """Run lengths of an uncompressed (list) or compressed (COCO string) RLE."""
    if isinstance(counts, list):
        if not all(isinstance(c, int) and c >= 0 for c in counts):
            raise ValueError("counts must be non-negative integers")
        return counts
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if not isinstance(counts, str):
        raise ValueError(f"counts must be a list or a string, got {type(counts).__name__}")
    # COCO's compressed form: each run is a signed varint of 5-bit groups in chars from '0'
    # (0x20 = more groups follow, 0x10 in the last group = negative); runs after the second
    # are stored as the difference to the run two before.
    runs, value, shift = [], 0, 0
    for char in counts:
        group = ord(char) - 48
        if not 0 <= group < 64:
            raise ValueError(f"invalid character {char!r}")
        value |= (group & 0x1F) << shift
        shift += 5
        if group & 0x20:
            continue
        if group & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ValueError("negative run length")
        runs.append(value)
        value, shift = 0, 0
    if shift:
        raise ValueError("truncated string")
    return runs


def polygon_area(polygon: list) -> float:
    """Signed shoelace area of a flat [x0, y0, x1, y1, ...] polygon."""
    xs, ys = polygon[0::2], polygon[1::2]
    forward = sum(map(operator.mul, xs, ys[1:] + ys[:1]))
    backward = sum(map(operator.mul, xs[1:] + xs[:1], ys))
    return 0.5 * (forward - backward)


def degenerate_polygons(polygons: list) -> dict[int, str]:
    """{index: problem} of the polygons with fewer than 3 points or zero area."""
    bad = {}
    for k, polygon in enumerate(polygons):
        points = len(polygon) // 2
        if points < 3:
            bad[k] = f"{points} points"
        elif abs(polygon_area(polygon)) < _MIN_POLYGON_AREA:
            bad[k] = "zero area"
    return bad
