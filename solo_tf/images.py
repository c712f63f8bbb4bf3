"""Images in and out, one place for every caller: decoding and checking encoded files (in
Python and inside a graph), image file names, the app-side letterbox of a fixed-size model,
and boxes from masks.

Decoding: JPEG and PNG go through ``tf.io.decode_image``, the op Model Garden's
``TfExampleDecoder`` uses, so an image read from a file and one read back from our TFRecords
are identical to the bit. Other formats (BMP, GIF, TIFF, WebP...) go through PIL. Every mode
ends as RGB uint8: grey is replicated, alpha dropped, palettes expanded, CMYK converted,
16-bit samples keep their high byte. EXIF orientation is ignored on purpose: COCO
annotations refer to the stored pixels.
"""

from __future__ import annotations

import glob
import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from solo_tf.data.augment import resize_and_pad

# File suffixes read as images when a folder is given.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# Magic numbers of the formats ``tf.io.decode_image`` reads (the graph decoder takes these).
IMAGE_MAGIC = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n", "GIF": b"GIF8", "BMP": b"BM"}


def is_tf_decodable(data: bytes) -> bool:
    """Whether the bytes are JPEG or PNG, the formats decoded with TensorFlow's own op."""
    return data.startswith(IMAGE_MAGIC["JPEG"]) or data.startswith(IMAGE_MAGIC["PNG"])


def decode_image_bytes(data: bytes) -> np.ndarray:
    """Decodes an encoded image of any mode to RGB uint8 [H, W, 3] (see the module doc)."""
    if is_tf_decodable(data):
        return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode.startswith("I"):  # 16/32-bit integer samples: keep the high byte
            grey = np.right_shift(np.asarray(image).astype(np.uint32), 8)
            grey = np.minimum(grey, 255).astype(np.uint8)
            return np.repeat(grey[..., None], 3, axis=-1)
        if image.mode == "F":
            raise ValueError("floating-point images are not supported")
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def decode_image_tensor(data: tf.Tensor) -> tf.Tensor:
    """Graph decoder of encoded JPEG/PNG/GIF/BMP bytes (string []) -> uint8 [H0, W0, 3].

    Empty bytes and bytes of no known format fail with an ``InvalidArgumentError`` that
    says so (the first bytes are shown hex-escaped, never raw, so the message is text).
    """
    check_empty = tf.debugging.assert_greater(
        tf.strings.length(data),
        0,
        message="image bytes are empty: send the encoded JPEG or PNG file",
    )
    with tf.control_dependencies([check_empty]):
        known = [tf.strings.substr(data, 0, len(m)) == m for m in IMAGE_MAGIC.values()]
        head = tf.io.decode_raw(tf.strings.substr(data, 0, 8), tf.uint8)  # byte values
        check_format = tf.debugging.Assert(
            tf.reduce_any(tf.stack(known)),
            ["image bytes are not a JPEG, PNG, GIF or BMP image; their first bytes are", head],
        )
    with tf.control_dependencies([check_format]):
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def list_images(spec: str) -> list[str]:
    """Files named by a path, a folder (its images, sorted) or a glob."""
    if os.path.isdir(spec):
        names = sorted(os.listdir(spec))
        return [os.path.join(spec, n) for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
    if os.path.isfile(spec):
        return [spec]
    files = sorted(glob.glob(spec))
    if not files:
        raise FileNotFoundError(f"{spec!r} names no file, folder or glob match")
    return files


def read_image(path: str) -> np.ndarray:
    """RGB uint8 [H, W, 3] of an image file; errors name the file."""
    try:
        with open(path, "rb") as f:
            return decode_image_bytes(f.read())
    except (OSError, ValueError, SyntaxError, tf.errors.OpError, Image.DecompressionBombError) as e:
        message = getattr(e, "message", None) or str(e)
        raise ValueError(f"{path}: cannot read the image ({type(e).__name__}: {message})") from e


def letterbox_size(image_size_hw, input_size) -> tf.Tensor:
    """float32 [2]: (height, width) of an image resized to fit ``input_size`` keeping its
    aspect ratio (the largest such size, rounded)."""
    size = tf.cast(image_size_hw, tf.float32)
    scale = tf.reduce_min(tf.constant(input_size, tf.float32) / size)
    return tf.clip_by_value(tf.round(size * scale), 1.0, tf.constant(input_size, tf.float32))


def letterbox(
    image: np.ndarray, input_size, dtype=np.float32, colour=(0.0, 0.0, 0.0)
) -> tuple[np.ndarray, np.ndarray]:
    """The preprocessing an app does for a fixed-size model: fit inside ``input_size``
    keeping the aspect ratio (bilinear), pad with ``colour`` (RGB in [0, 255]) at the
    bottom/right. An exported model's ``model_info.json`` names its ``pad_colour``: the
    mean colour of its normalisation, which it saw as padding in training.

    Returns ``dtype`` [H, W, 3] (integer dtypes: rounded, clipped) and image_info float32
    [4, 2] (original size, scaled size, scale, 0).
    """
    height, width = (int(s) for s in input_size)
    image = tf.convert_to_tensor(image)
    size = letterbox_size(tf.shape(image)[:2], (height, width))
    padded, _, image_info = resize_and_pad(image, None, size, (height, width), colour)
    return to_input_dtype(padded.numpy(), dtype), image_info.numpy()


def to_input_dtype(pixels: np.ndarray, dtype) -> np.ndarray:
    """Float pixels in [0, 255] as ``dtype``: integer types are rounded and clipped."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        return np.clip(np.round(pixels), 0, 255).astype(dtype)
    return pixels.astype(dtype)


def nearest_indices(out_size: int, in_size: int) -> np.ndarray:
    """Half-pixel nearest-neighbour source index of each output index (tf.image.resize)."""
    index = np.floor((np.arange(out_size) + 0.5) * in_size / out_size).astype(np.int64)
    return np.minimum(index, in_size - 1)


def resize_masks_nearest(masks: np.ndarray, size) -> np.ndarray:
    """uint8 masks [n, h, w] -> [n, H, W] (nearest neighbour, as ``tf.image.resize``)."""
    rows, cols = (
        nearest_indices(int(size[0]), masks.shape[1]),
        nearest_indices(int(size[1]), masks.shape[2]),
    )
    return masks[:, rows][:, :, cols]


class ResizedMasks:
    """A read-only sequence of masks [n, h, w] seen at another size, each resized (nearest)
    only when it is read: the masks of a large photo never exist at full size all at once."""

    def __init__(self, masks: np.ndarray, size):
        self._masks, self.size = masks, (int(size[0]), int(size[1]))

    def __len__(self) -> int:
        return len(self._masks)

    def __getitem__(self, index: int) -> np.ndarray:
        return resize_masks_nearest(self._masks[index : index + 1], self.size)[0]

    def __iter__(self):
        return (self[k] for k in range(len(self)))


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """float32 [n, 4] tight boxes (ymin, xmin, ymax, xmax; max exclusive) of masks [n, H, W];
    an empty mask gets a zero box."""
    boxes = np.zeros([len(masks), 4], np.float32)
    for k, mask in enumerate(masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        if rows.size:
            boxes[k] = [rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]
    return boxes
