"""COCO reader: an instances JSON and an image folder -> decoded examples.

``CocoReader(...).dataset()`` yields the dict of ``docs/architecture.md`` section 1:
``image`` uint8 [H0, W0, 3], ``masks`` uint8 [N, H0, W0], ``classes`` int32 [N] (contiguous
indices, see ``LabelMap``), ``is_crowd`` bool [N], ``image_id`` int64 [], ``original_size``
int32 [2].

Images are decoded by ``solo_tf.images.decode_image_bytes`` (any format and mode -> RGB
uint8, bit-identical to what Model Garden's TFRecord decoder gives for JPEG and PNG).

Validation: the JSON structure and ids are checked in ``__init__`` (always a ``ValueError``),
and so is every segmentation (RLE size and length, polygon points and area), which follows
``bad_sample_policy``. Image files are only opened while decoding. With ``"error"`` a bad
sample raises ``BadSampleError`` (inside tf.data it surfaces as a ``tf.errors`` exception
carrying the same message: file, image id, annotation id). With ``"skip"`` it is dropped,
logged and counted in ``reader.skipped``; only a degenerate polygon (zero area) or an empty
mask drops less than the whole image, since dropping them cannot mislabel a pixel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image, UnidentifiedImageError
from pycocotools.coco import COCO

from solo_tf.data import errors
from solo_tf.data.label_map import LabelMap
from solo_tf.images import decode_image_bytes

# (key, dtype, static shape) of the decoded example, in py_function output order.
_SPEC = (
    ("image", tf.uint8, [None, None, 3]),
    ("masks", tf.uint8, [None, None, None]),
    ("classes", tf.int32, [None]),
    ("is_crowd", tf.bool, [None]),
    ("image_id", tf.int64, []),
    ("original_size", tf.int32, [2]),
)
# The decoded-example signature of docs/architecture.md section 1, for tf.data generators.
EXAMPLE_SPEC = {key: tf.TensorSpec(shape, dtype) for key, dtype, shape in _SPEC}


@dataclasses.dataclass(frozen=True)
class _Instance:
    annotation_id: int
    class_index: int
    is_crowd: bool
    area: float | None  # the JSON's "area", when present
    segmentation: object  # validated; degenerate polygons removed


@dataclasses.dataclass(frozen=True)
class _Entry:
    image_id: int
    file_name: str
    path: str
    height: int
    width: int
    instances: tuple[_Instance, ...]


class CocoReader:
    """Reads a COCO instances JSON and its image folder; ``dataset()`` decodes in parallel."""

    def __init__(
        self,
        annotation_file: str,
        image_dir: str,
        skip_empty: bool = False,
        bad_sample_policy: str = "error",
        max_skip_fraction: float = 0.25,
        cache_bytes: int = 0,
    ):
        self._annotation_file = annotation_file
        # Decoded examples kept in memory, by index, until they hold cache_bytes (0: none).
        self._cache: dict[int, dict | None] = {}
        self._cache_room = int(cache_bytes)
        self._max_skip_fraction = max_skip_fraction
        self._image_dir = image_dir
        self._skip_empty = skip_empty
        self._policy = errors.check_policy(bad_sample_policy)
        self._skips = errors.SkipLog()
        data = _load_json(annotation_file)
        errors.validate_structure(data, annotation_file)
        self._label_map = LabelMap.from_coco_categories(data["categories"])
        self._coco = COCO()
        self._coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self._coco.createIndex()
        self._num_listed = len(data["images"])
        self._entries = []
        for image in data["images"]:
            entry = self._make_entry(image)
            if entry is None:
                continue
            if skip_empty and not any(not inst.is_crowd for inst in entry.instances):
                continue
            self._entries.append(entry)
        logging.info(
            "%s: %d of %d images kept (skip_empty=%s), skipped: %s",
            annotation_file,
            len(self._entries),
            len(data["images"]),
            skip_empty,
            dict(self.skipped),
        )

    @property
    def annotation_file(self) -> str:
        return self._annotation_file

    @property
    def image_dir(self) -> str:
        return self._image_dir

    @property
    def coco(self) -> COCO:
        """The pycocotools ``COCO`` object of the whole file (for evaluation)."""
        return self._coco

    @property
    def label_map(self) -> LabelMap:
        return self._label_map

    @property
    def image_ids(self) -> list[int]:
        """Ids of the images the reader yields, in file order (before decode-time skips)."""
        return [entry.image_id for entry in self._entries]

    @property
    def num_images(self) -> int:
        return len(self._entries)

    @property
    def skipped(self):
        """Counter of skipped samples by reason (``errors`` constants); grows while decoding."""
        return self._skips.counts

    @property
    def images_skipped(self) -> int:
        """How many images were dropped whole so far (``skip`` policy)."""
        return self._skips.images_skipped

    @property
    def num_listed(self) -> int:
        """How many images the JSON lists (``num_images``: those the reader yields)."""
        return self._num_listed

    def load(self, index: int, with_source: bool = False) -> dict | None:
        """Decodes the ``index``-th image into numpy arrays; None when skipped.

        With ``with_source`` (for conversion) the dict also holds ``encoded`` (the image
        file's bytes), ``file_name`` and ``areas`` (float32 [N]: the JSON's areas, the mask's
        pixel count where the JSON has none).

        With ``cache_bytes`` the examples decoded without ``with_source`` are kept in memory
        until they fill ``cache_bytes`` and returned from there afterwards (read-only
        arrays): a small training set is decoded once instead of once per epoch. A skipped
        sample is decoded (and counted) once only; the rest is never cached.
        """
        if not with_source and index in self._cache:
            return self._cache[index]
        example = self._load(index, with_source)
        if not with_source and self._cache_room > 0:
            size = 0 if example is None else sum(v.nbytes for v in example.values())
            if size <= self._cache_room:
                self._cache_room -= size
                for value in (example or {}).values():
                    if isinstance(value, np.ndarray):
                        value.setflags(write=False)
                self._cache[index] = example
        return example

    @property
    def cached_images(self) -> int:
        """How many decoded examples (or skips) ``load`` keeps in memory."""
        return len(self._cache)

    def _load(self, index: int, with_source: bool) -> dict | None:
        entry = self._entries[index]
        try:
            data = self._read_file(entry)
            image = self._decode(entry, data)
            masks, kept = self._masks(entry)
        except errors.BadSampleError as e:
            if self._policy == "error":
                raise
            self._skips.record(e)
            return None
        if self._skip_empty and all(inst.is_crowd for inst in kept):
            return None
        example = {
            "image": image,
            "masks": masks,
            "classes": np.array([inst.class_index for inst in kept], np.int32),
            "is_crowd": np.array([inst.is_crowd for inst in kept], bool),
            "image_id": np.int64(entry.image_id),
            "original_size": np.array(image.shape[:2], np.int32),
        }
        if with_source:
            example["encoded"] = data
            example["file_name"] = entry.file_name
            example["areas"] = np.array(
                [m.sum() if i.area is None else i.area for i, m in zip(kept, masks, strict=True)],
                np.float32,
            )
        return example

    def dataset(
        self,
        shuffle: bool = False,
        seed: int | None = None,
        parallel_calls: int = tf.data.AUTOTUNE,
        deterministic: bool | None = None,
    ) -> tf.data.Dataset:
        """A finite dataset of decoded examples (architecture section 1), one per image.

        ``shuffle`` permutes all images (anew each epoch); decoding runs ``parallel_calls``
        images at once; ``deterministic`` (None: tf.data's default) is passed to ``map``.
        """
        indices = tf.data.Dataset.range(self.num_images)
        if shuffle:
            indices = indices.shuffle(max(self.num_images, 1), seed=seed)
        return self.decode_indices(indices, parallel_calls, deterministic)

    def decode_indices(
        self,
        indices: tf.data.Dataset,
        parallel_calls: int = tf.data.AUTOTUNE,
        deterministic: bool | None = None,
    ) -> tf.data.Dataset:
        """Decodes a dataset of image indices (int64, into ``image_ids``) into examples.

        Shuffling and skipping indices before decoding is cheap, which is how training
        shuffles and resumes.
        """
        examples = indices.map(
            self.decode_index, num_parallel_calls=parallel_calls, deterministic=deterministic
        )
        return examples.filter(_is_valid).map(_drop_valid)

    def decode_index(self, index):
        """Graph-mode decode of one image index: ``(example, valid)``; ``valid`` is False
        for a sample skipped under the ``skip`` policy.

        A bad sample under ``error`` (or too many skips under ``skip``) fails with an
        ``InvalidArgumentError`` carrying the reader's message (file, image id). No Python
        exception ever leaves the ``py_function``: one raised there leaves tf.data's
        parallel map to hang in its destructor."""
        outputs = tf.py_function(
            self._load_py, [index], Tout=[dtype for _, dtype, _ in _SPEC] + [tf.bool, tf.string]
        )
        problem = outputs[-1]
        check = tf.debugging.Assert(tf.equal(problem, ""), [problem])
        example = {}
        with tf.control_dependencies([check]):
            for (key, _, shape), value in zip(_SPEC, outputs[:-2], strict=True):
                value = tf.identity(value)
                value.set_shape(shape)
                example[key] = value
            valid = tf.identity(outputs[-2])
        valid.set_shape([])
        return example, valid

    def _load_py(self, index):
        """``load`` for ``py_function``: the example's arrays, valid, and '' or the error."""
        problem = ""
        try:
            example = self.load(int(index.numpy()))
            self._check_skips()
        except Exception as error:  # noqa: BLE001 - reported through the graph, see above
            example, problem = None, f"{type(error).__name__}: {error}"
            if isinstance(error, (errors.BadSampleError, errors.TooManySkipsError)):
                problem = str(error)
        if example is None:
            empty = [np.zeros([0] * len(shape), dtype.as_numpy_dtype) for _, dtype, shape in _SPEC]
            empty[0] = np.zeros([0, 0, 3], np.uint8)
            empty[-1] = np.zeros([2], np.int32)
            return empty + [False, problem]
        return [example[key] for key, _, _ in _SPEC] + [True, problem]

    def _check_skips(self) -> None:
        """Raises ``TooManySkipsError`` once more than ``max_skip_fraction`` of the images
        were skipped: a dataset that is mostly unreadable is a mistake, not noise."""
        skipped = self._skips.images_skipped
        if skipped > self._max_skip_fraction * max(self._num_listed, 1):
            raise errors.TooManySkipsError(
                f"{self._annotation_file}: {skipped} of {self._num_listed} images could not be "
                f"read ({dict(self.skipped)}), more than --max_skip_fraction="
                f"{self._max_skip_fraction}; is --{{train,val}}_images ({self._image_dir}) right?"
            )

    # Eager validation (``__init__``).

    def _make_entry(self, image: dict) -> _Entry | None:
        image_id, height, width = image["id"], image["height"], image["width"]
        path = os.path.join(self._image_dir, image["file_name"])
        instances = []
        for ann in self._coco.imgToAnns.get(image_id, []):
            where = (
                f"{self._annotation_file}: annotation id {ann['id']} of image id {image_id} "
                f"({path})"
            )
            try:
                segmentation = errors.check_segmentation(ann, height, width, where)
                segmentation = self._drop_degenerate_polygons(segmentation, ann, where)
            except errors.BadSampleError as e:
                if self._policy == "error":
                    raise
                self._skips.record(e)
                return None
            if segmentation is None:
                continue
            instances.append(
                _Instance(
                    annotation_id=ann["id"],
                    class_index=self._label_map.index_of(ann["category_id"]),
                    is_crowd=bool(ann.get("iscrowd", 0)),
                    area=ann.get("area"),
                    segmentation=segmentation,
                )
            )
        return _Entry(image_id, image["file_name"], path, height, width, tuple(instances))

    def _drop_degenerate_polygons(self, segmentation, ann, where):
        """Polygons with < 3 points or zero area: raise, or drop them (None if none is left)."""
        if isinstance(segmentation, dict):
            return segmentation
        bad = errors.degenerate_polygons(segmentation)  # {index: problem}
        for k, problem in bad.items():
            error = errors.BadSampleError(
                errors.DEGENERATE_POLYGON,
                f"{where}: polygon #{k} is degenerate ({problem})",
                image_id=ann["image_id"],
                annotation_id=ann["id"],
            )
            if self._policy == "error":
                raise error
            self._skips.record(error)
        return [p for k, p in enumerate(segmentation) if k not in bad] or None

    # Decoding (``load``).

    def _read_file(self, entry: _Entry) -> bytes:
        try:
            with tf.io.gfile.GFile(entry.path, "rb") as f:
                return f.read()
        except (tf.errors.NotFoundError, FileNotFoundError):
            raise errors.BadSampleError(
                errors.MISSING_FILE,
                f"{entry.path} (image id {entry.image_id}): image file not found",
                image_id=entry.image_id,
            ) from None

    def _decode(self, entry: _Entry, data: bytes) -> np.ndarray:
        try:
            image = decode_image_bytes(data)
        except UnidentifiedImageError:
            raise errors.BadSampleError(
                errors.UNDECODABLE_IMAGE,
                f"{entry.path} (image id {entry.image_id}): not an image (unknown format)",
                image_id=entry.image_id,
            ) from None
        except (
            tf.errors.OpError,
            OSError,
            ValueError,
            SyntaxError,
            Image.DecompressionBombError,
        ) as e:
            message = getattr(e, "message", None) or str(e)
            message = re.sub(r"\{\{function_node [^}]*\}\}|\[Op:\w+\]", "", message)
            raise errors.BadSampleError(
                errors.UNDECODABLE_IMAGE,
                f"{entry.path} (image id {entry.image_id}): cannot decode the image "
                f"({type(e).__name__}: {message.strip()})",
                image_id=entry.image_id,
            ) from None
        if image.shape[:2] != (entry.height, entry.width):
            raise errors.BadSampleError(
                errors.IMAGE_SIZE_MISMATCH,
                f"{entry.path} (image id {entry.image_id}): the file is "
                f"{image.shape[0]}x{image.shape[1]} (HxW) but {self._annotation_file} says "
                f"{entry.height}x{entry.width}",
                image_id=entry.image_id,
            )
        return image

    def _masks(self, entry: _Entry) -> tuple[np.ndarray, list[_Instance]]:
        """uint8 [N, H0, W0] masks of the instances that cover at least one pixel."""
        masks, kept = [], []
        for inst in entry.instances:
            ann = {"image_id": entry.image_id, "segmentation": inst.segmentation}
            mask = self._coco.annToMask(ann)  # [H0, W0] uint8 0/1
            if not mask.any():
                error = errors.BadSampleError(
                    errors.EMPTY_MASK,
                    f"{self._annotation_file}: annotation id {inst.annotation_id} of image id "
                    f"{entry.image_id} ({entry.path}): the mask covers no pixel",
                    image_id=entry.image_id,
                    annotation_id=inst.annotation_id,
                )
                if self._policy == "error":
                    raise error
                self._skips.record(error)
                continue
            masks.append(mask)
            kept.append(inst)
        if not masks:
            return np.zeros([0, entry.height, entry.width], np.uint8), kept
        return np.stack(masks), kept


def _is_valid(example, valid):
    del example
    return valid


def _drop_valid(example, valid):
    del valid
    return example


def _load_json(path: str) -> dict:
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
