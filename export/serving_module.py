"""The graph pieces shared by the SavedModel and the TFLite export.

Everything an exported model does runs inside its graph: decoding and checking the input,
the aspect-preserving resize and padding of ``solo_tf.data.augment.preprocess_for_eval``,
the network, ``solo_tf.postprocess.postprocess`` and the resize of the masks back to each
image's own size. The functions here build those graphs around a ``solo_tf.detector.Detector``
(its ``detect`` is the one place where network and post-processing meet); the
SavedModel and TFLite writers (``export.saved_model``, ``export.tflite``) hand them to
``keras.export.ExportArchive``, which saves the model's weights with them (a Keras 3 model
saved through a plain ``tf.Module`` loses its weights on the way to TFLite).

Shape letters: B batch, H0 W0 an input image's size, H W the padded model input
(``DataConfig.output_size`` with ``pad_mode="canvas"``; with ``"multiple"`` the batch's
largest image rounded up to 32, the rest padded with the mean colour: send one image per
request for the authors' test geometry, or a batch of one size as ``serving_default`` takes),
K ``PostprocessConfig.max_detections``, Ho Wo the output mask
size (the batch's largest H0 and W0).

Bad input fails with ``tf.errors.InvalidArgumentError`` and a message that says what was
wrong (empty bytes, not an image, a zero-sized image, an empty batch); a wrong dtype or rank
is refused by the signature itself before the graph runs.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from solo_tf.detector import DETECTION_KEYS, Detector
from solo_tf.images import decode_image_tensor

# Largest image the signatures take, in pixels. The masks come back at each image's own size:
# K of them, and the post-processing resamples them in float32, about K * H0 * W0 * 5 bytes
# (100 detections of an 8-megapixel photo: 4 GB). Larger photos are refused with a message.
MAX_IMAGE_PIXELS = 8_000_000


def preprocess_image(image: tf.Tensor, detector: Detector, max_pixels: int = MAX_IMAGE_PIXELS):
    """One uint8 [H0, W0, 3] image -> (float32 [H, W, 3] padded, image_info float32 [4, 2]):
    ``Detector.preprocess`` after checking that the image is neither empty nor larger than
    ``max_pixels``."""
    size = tf.shape(image)[:2]
    checks = [
        tf.debugging.assert_positive(
            size, message="image has a zero height or width: each image needs at least 1x1 pixels"
        ),
        tf.debugging.Assert(
            tf.cast(size[0], tf.int64) * tf.cast(size[1], tf.int64) <= max_pixels,
            [
                f"image larger than {max_pixels} pixels (height, width):",
                size,
                "; resize it on the client (the masks come back at the image's own size)",
            ],
        ),
    ]
    with tf.control_dependencies(checks):
        image = tf.identity(image)
    return detector.preprocess(image)


def _check_batch(batch_size: tf.Tensor, what: str):
    return tf.debugging.assert_positive(
        batch_size, message=f"{what}: the batch is empty, send at least one image"
    )


def _preprocess_batch(fn, elems, detector: Detector, what: str, max_pixels: int):
    """``tf.map_fn`` of ``fn(elem) -> uint8 image`` then ``preprocess_image`` over a batch,
    padded to its largest image with ``pad_mode="multiple"``."""
    with tf.control_dependencies([_check_batch(tf.shape(elems)[0], what)]):
        elems = tf.identity(elems)
    info_spec = tf.TensorSpec([4, 2], tf.float32)
    if detector.config.data.pad_mode == "canvas":
        height, width = detector.config.data.output_size
        return tf.map_fn(
            lambda elem: preprocess_image(fn(elem), detector, max_pixels),
            elems,
            fn_output_signature=(tf.TensorSpec([height, width, 3], tf.float32), info_spec),
        )

    def ragged(elem):  # each image at its own padded size: [H_b, (W_b), 3]
        image, image_info = preprocess_image(fn(elem), detector, max_pixels)
        return tf.RaggedTensor.from_tensor(image), image_info

    images, image_info = tf.map_fn(
        ragged,
        elems,
        fn_output_signature=(
            tf.RaggedTensorSpec([None, None, 3], tf.float32, ragged_rank=1),
            info_spec,
        ),
    )  # images: [B, (H_b), (W_b), 3]
    return images.to_tensor(default_value=detector.pad_colour), image_info


def _with_info(detections: dict, image_info: tf.Tensor) -> dict:
    return {**{k: detections[k] for k in DETECTION_KEYS}, "image_info": image_info}


def serve_fn(
    detector: Detector,
    decode,
    what: str,
    per_image: bool = True,
    max_pixels: int = MAX_IMAGE_PIXELS,
):
    """The one ``serve(inputs [B]) -> detections``: each input is turned into a uint8 image
    by ``decode``, resized and padded, and the batch goes through ``detector.detect``.

    Masks come back padded to the batch's largest height and width; ``image_info[:, 0]``
    holds each image's own (H0, W0) to crop them.
    """

    def serve(inputs):
        padded, image_info = _preprocess_batch(decode, inputs, detector, what, max_pixels)
        return _with_info(detector.detect(padded, image_info, per_image=per_image), image_info)

    return serve


_EXAMPLE_FEATURES = {"image/encoded": tf.io.FixedLenFeature([], tf.string, default_value="")}


def _decode_example(serialized: tf.Tensor) -> tf.Tensor:
    """A serialized tf.Example with ``image/encoded`` -> uint8 [H0, W0, 3]."""
    return decode_image_tensor(
        tf.io.parse_single_example(serialized, _EXAMPLE_FEATURES)["image/encoded"]
    )


# Signature name -> (its input, the decoder of one input element).
_DECODERS = {
    "serving_default": (
        tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),  # one size per batch
        tf.identity,  # the batch is split into images by the map
    ),
    "serve_image_bytes": (
        tf.TensorSpec([None], tf.string, name="image_bytes"),
        decode_image_tensor,
    ),
    "serve_examples": (tf.TensorSpec([None], tf.string, name="examples"), _decode_example),
}


def serve_images_fn(detector: Detector, per_image: bool = True):
    """``images uint8 [B, H0, W0, 3] -> detections`` (the ``serving_default`` signature)."""
    return serve_fn(detector, tf.identity, "serving_default", per_image)


def tflite_fn(detector: Detector, image_size: tuple[int, int]):
    """``image [1, H, W, 3] (uint8 or float32, already resized and padded) -> detections``.

    The input is the model input itself: the app resizes its image to fit H x W keeping the
    aspect ratio and pads bottom/right with 0. Masks and boxes are in input pixels, [H, W].
    """
    height, width = image_size
    info = tf.constant([[height, width], [height, width], [1, 1], [0, 0]], tf.float32)

    def serve(image):
        image = tf.cast(image, tf.float32)
        image_info = tf.tile(info[None], [tf.shape(image)[0], 1, 1])  # [1, 4, 2]
        return detector.detect(image, image_info, output_size=(height, width), per_image=False)

    return serve


def signature_specs() -> dict[str, list[tf.TensorSpec]]:
    """Input signature of each SavedModel endpoint (the first one is ``serving_default``)."""
    return {name: [spec] for name, (spec, _) in _DECODERS.items()}


def serving_functions(detector: Detector, max_pixels: int = MAX_IMAGE_PIXELS) -> dict:
    """Endpoint name -> Python function, in the order of ``signature_specs``."""
    return {
        name: serve_fn(detector, decode, name, max_pixels=max_pixels)
        for name, (_, decode) in _DECODERS.items()
    }


def as_numpy(outputs: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in outputs.items()}
