"""The graph pieces shared by the SavedModel and the TFLite export.

Everything an exported model does runs inside its graph: decoding and checking the input,
the aspect-preserving resize and padding of ``solo_tf.data.augment.preprocess_for_eval``,
the network, ``solo_tf.postprocess.postprocess`` and the resize of the masks back to each
image's own size. The functions here build those graphs from a Keras ``SOLOModel``; the
SavedModel and TFLite writers (``export.saved_model``, ``export.tflite``) hand them to
``keras.export.ExportArchive``, which saves the model's weights with them (a Keras 3 model
saved through a plain ``tf.Module`` loses its weights on the way to TFLite).

Shape letters: B batch, H0 W0 an input image's size, H W the padded model input
(``DataConfig.output_size``), K ``PostprocessConfig.max_detections``, Ho Wo the output mask
size (the batch's largest H0 and W0).

Bad input fails with ``tf.errors.InvalidArgumentError`` and a message that says what was
wrong (empty bytes, not an image, a zero-sized image, an empty batch); a wrong dtype or rank
is refused by the signature itself before the graph runs.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import tensorflow as tf

from solo_tf import config as cfg
from solo_tf import inference, postprocess
from solo_tf.data.augment import resize_and_pad, scaled_size
from solo_tf.data.label_map import LabelMap
from solo_tf.modeling import factory

DETECTION_KEYS = (
    "num_detections",
    "detection_scores",
    "detection_classes",
    "detection_masks",
    "detection_boxes",
)

# Magic numbers of the formats tf.io.decode_image reads.
_IMAGE_MAGIC = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG", "GIF": b"GIF8", "BMP": b"BM"}


@dataclasses.dataclass
class ExportSource:
    """A restored model with what travels with it: its config and label map."""

    model: object  # solo_tf.modeling.solo_model.SOLOModel
    config: cfg.SOLOConfig
    label_map: LabelMap

    @classmethod
    def from_model_dir(
        cls, model_dir: str, checkpoint: str = "best", compute_dtype: str = "float32"
    ) -> ExportSource:
        """Restores ``model_dir``. ``compute_dtype="bfloat16"`` builds the network under
        Keras' ``mixed_bfloat16`` policy: float32 weights (the same checkpoint), bfloat16
        convolutions and activations (fast on CPUs with AMX and on GPUs/TPUs); the
        post-processing casts the logits to float32 and runs in float32 either way."""
        config = inference.load_config(model_dir)
        label_map = inference.load_label_map(model_dir)
        if label_map.num_classes != config.model.num_classes:
            raise ValueError(
                f"{model_dir}: label_map.json has {label_map.num_classes} categories but the "
                f"model predicts {config.model.num_classes} classes"
            )
        with factory.compute_dtype_scope(compute_dtype):
            model = inference.load_model(model_dir, checkpoint, config)
        return cls(model=model, config=config, label_map=label_map)

    def config_json(self) -> str:
        return json.dumps(cfg.to_dict(self.config), indent=1)

    def label_map_json(self) -> str:
        return json.dumps(self.label_map.to_dict(), indent=1)


def detect(source: ExportSource, images, image_info, output_size=None, per_image=False) -> dict:
    """Model + post-processing of padded float32 images [B, H, W, 3] -> detections dict.

    The network always runs on the whole batch. ``per_image=True`` post-processes one image
    at a time (``postprocess.postprocess_each_image``): the same detections, with the
    post-processing's memory of one image instead of the batch. The SavedModel signatures use
    it; the TFLite graph (batch 1) does not need it. The vanilla head computes the mask
    logits of the candidates only (``lazy_masks``, see ``SOLOHead.lazy_mask_outputs``).
    """
    outputs = source.model(images, training=False, lazy_masks=True)
    class_ids = tf.constant(source.label_map.class_ids, tf.int32)
    run = postprocess.postprocess_each_image if per_image else postprocess.postprocess
    return run(
        outputs,
        image_info,
        source.config.model,
        source.config.postprocess,
        class_ids,
        output_size,
    )


def preprocess_image(image: tf.Tensor, data_config: cfg.DataConfig):
    """One uint8 [H0, W0, 3] image -> (float32 [H, W, 3] padded, image_info float32 [4, 2]).

    The eval resize of ``preprocess_for_eval`` (``eval_short_side``, ``max_long_side``,
    ``output_size``), after checking that the image is not empty.
    """
    shape = tf.shape(image)
    check = tf.debugging.assert_positive(
        shape[:2],
        message="image has a zero height or width: each image needs at least 1x1 pixels",
    )
    with tf.control_dependencies([check]):
        size = scaled_size(
            shape[:2],
            data_config.eval_short_side,
            data_config.max_long_side,
            data_config.output_size,
        )
    padded, _, image_info = resize_and_pad(image, None, size, data_config.output_size)
    return padded, image_info


def decode_image(data: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG (also GIF, BMP) string [] -> uint8 [H0, W0, 3], with clear errors."""
    check_empty = tf.debugging.assert_greater(
        tf.strings.length(data),
        0,
        message="image bytes are empty: send the encoded JPEG or PNG file",
    )
    with tf.control_dependencies([check_empty]):
        known = [tf.equal(tf.strings.substr(data, 0, len(m)), m) for m in _IMAGE_MAGIC.values()]
        check_format = tf.Assert(
            tf.reduce_any(tf.stack(known)),
            [
                "image bytes are not a JPEG, PNG, GIF or BMP image; they start with:",
                tf.strings.substr(data, 0, 16),
            ],
        )
    with tf.control_dependencies([check_format]):
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3])


def _check_batch(batch_size: tf.Tensor, what: str):
    return tf.debugging.assert_positive(
        batch_size, message=f"{what}: the batch is empty, send at least one image"
    )


def _preprocess_batch(fn, elems, data_config, what: str):
    """``tf.map_fn`` of ``fn(elem) -> uint8 image`` then ``preprocess_image`` over a batch."""
    height, width = data_config.output_size
    with tf.control_dependencies([_check_batch(tf.shape(elems)[0], what)]):
        elems = tf.identity(elems)
    images, image_info = tf.map_fn(
        lambda elem: preprocess_image(fn(elem), data_config),
        elems,
        fn_output_signature=(
            tf.TensorSpec([height, width, 3], tf.float32),
            tf.TensorSpec([4, 2], tf.float32),
        ),
    )
    return images, image_info


def _with_info(detections: dict, image_info: tf.Tensor) -> dict:
    return {**{k: detections[k] for k in DETECTION_KEYS}, "image_info": image_info}


def serve_images_fn(source: ExportSource, per_image: bool = True):
    """``images uint8 [B, H0, W0, 3] -> detections`` (the ``serving_default`` signature)."""

    def serve(images):
        images = tf.convert_to_tensor(images)
        padded, image_info = _preprocess_batch(
            lambda image: image, images, source.config.data, "serving_default"
        )
        return _with_info(detect(source, padded, image_info, per_image=per_image), image_info)

    return serve


def serve_image_bytes_fn(source: ExportSource, per_image: bool = True):
    """``image_bytes string [B] -> detections``; images may differ in size.

    Masks come back padded to the batch's largest height and width; ``image_info[:, 0]``
    holds each image's own (H0, W0) to crop them.
    """

    def serve(image_bytes):
        padded, image_info = _preprocess_batch(
            decode_image, image_bytes, source.config.data, "serve_image_bytes"
        )
        return _with_info(detect(source, padded, image_info, per_image=per_image), image_info)

    return serve


def serve_examples_fn(source: ExportSource, per_image: bool = True):
    """``serialized tf.Example string [B]`` (``image/encoded``) -> detections."""
    features = {"image/encoded": tf.io.FixedLenFeature([], tf.string, default_value="")}

    def serve(examples):
        parsed = tf.io.parse_example(examples, features)
        padded, image_info = _preprocess_batch(
            decode_image, parsed["image/encoded"], source.config.data, "serve_examples"
        )
        return _with_info(detect(source, padded, image_info, per_image=per_image), image_info)

    return serve


def tflite_fn(source: ExportSource, image_size: tuple[int, int]):
    """``image [1, H, W, 3] (uint8 or float32, already resized and padded) -> detections``.

    The input is the model input itself: the app resizes its image to fit H x W keeping the
    aspect ratio and pads bottom/right with 0. Masks and boxes are in input pixels, [H, W].
    """
    height, width = image_size
    info = tf.constant([[height, width], [height, width], [1, 1], [0, 0]], tf.float32)

    def serve(image):
        image = tf.cast(image, tf.float32)
        image_info = tf.tile(info[None], [tf.shape(image)[0], 1, 1])  # [1, 4, 2]
        return detect(source, image, image_info, output_size=(height, width))

    return serve


def signature_specs() -> dict[str, list[tf.TensorSpec]]:
    """Input signature of each SavedModel endpoint (the first one is ``serving_default``)."""
    return {
        "serving_default": [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")],
        "serve_image_bytes": [tf.TensorSpec([None], tf.string, name="image_bytes")],
        "serve_examples": [tf.TensorSpec([None], tf.string, name="examples")],
    }


def serving_functions(source: ExportSource) -> dict:
    """Endpoint name -> Python function, in the order of ``signature_specs``."""
    return {
        "serving_default": serve_images_fn(source),
        "serve_image_bytes": serve_image_bytes_fn(source),
        "serve_examples": serve_examples_fn(source),
    }


def as_numpy(outputs: dict) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in outputs.items()}
