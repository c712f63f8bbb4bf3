"""Detector: a trained SOLO network and its post-processing, composed in one place.

Every inference caller goes through ``Detector.detect``: evaluation (``solo_tf.eval_lib``),
``solo_tf.predict``, the SavedModel signatures and the TFLite graph (``export.serving_module``)
and the benchmarks. So the detections you evaluate are the detections you ship.

Shape letters: B batch, H W padded model input, H0 W0 an image's own size, K
``PostprocessConfig.max_detections``, Ho Wo the output mask size.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import tensorflow as tf

from solo_tf import config as cfg
from solo_tf import model_dir as model_dir_lib
from solo_tf import postprocess
from solo_tf.data import geometry
from solo_tf.data.augment import preprocess_for_eval
from solo_tf.data.label_map import LabelMap
from solo_tf.modeling import factory

DETECTION_KEYS = (
    "num_detections",
    "detection_scores",
    "detection_classes",
    "detection_masks",
    "detection_boxes",
)


@dataclasses.dataclass
class Detector:
    """A restored ``SOLOModel`` with the config it was built from and its label map."""

    model: object  # solo_tf.modeling.solo_model.SOLOModel
    config: cfg.SOLOConfig
    label_map: LabelMap

    def __post_init__(self):
        if self.label_map.num_classes != self.config.model.num_classes:
            raise ValueError(
                f"the label map has {self.label_map.num_classes} categories but the model "
                f"predicts {self.config.model.num_classes} classes"
            )

    @classmethod
    def from_model_dir(
        cls,
        model_dir: str,
        checkpoint: str = "best",
        compute_dtype: str = "float32",
        config: cfg.SOLOConfig | None = None,
    ) -> Detector:
        """Restores ``model_dir`` (``checkpoint``: best, latest or a path).

        ``config`` replaces the saved one (e.g. other post-processing thresholds); it must
        describe the same network. ``compute_dtype="bfloat16"`` builds the network under
        Keras' ``mixed_bfloat16`` policy: float32 weights (the same checkpoint), bfloat16
        convolutions (fast on CPUs with AMX, GPUs and TPUs); post-processing stays float32.
        """
        saved = model_dir_lib.load_config(model_dir)
        config = config or saved
        differences = model_dir_lib.model_differences(saved.model, config.model)
        if differences:
            raise ValueError(f"{model_dir}: the config asked for differs: {differences}")
        label_map = model_dir_lib.load_label_map(model_dir)
        with factory.compute_dtype_scope(compute_dtype):
            model = factory.build_model(config.model)
        model_dir_lib.restore(model, model_dir, checkpoint)
        return cls(model=model, config=config, label_map=label_map)

    @property
    def pad_colour(self) -> tuple[float, float, float]:
        """RGB of the padding: 0 after the model's input normalisation."""
        return geometry.pad_colour(self.config.model.input_normalization)

    @property
    def names(self) -> dict[int, str]:
        """Dataset category id -> name."""
        return self.label_map.names_by_id()

    def config_json(self) -> str:
        return json.dumps(cfg.to_dict(self.config), indent=1)

    def label_map_json(self) -> str:
        return json.dumps(self.label_map.to_dict(), indent=1)

    def detect(
        self, images, image_info, output_size=None, per_image: bool = True, lazy_masks=True
    ) -> dict:
        """Network + post-processing: padded float32 images [B, H, W, 3] in [0, 255] and
        image_info [B, 4, 2] -> the detections dict (docs/architecture.md section 5).

        The network runs on the whole batch. ``per_image`` post-processes one image at a time
        (the same detections with the post-processing memory of one image); ``lazy_masks``
        computes mask logits for the candidates only. Both only change the cost: ``False,
        False`` is the plain path the tests compare them against. ``output_size``: static
        (Ho, Wo) of the masks, or None for the batch's largest original size.
        """
        outputs = self.model(images, training=False, lazy_masks=lazy_masks)
        run = postprocess.postprocess_each_image if per_image else postprocess.postprocess
        class_ids = tf.constant(self.label_map.class_ids, tf.int32)
        return run(
            outputs, image_info, self.config.model, self.config.postprocess, class_ids, output_size
        )

    def detect_fn(self, output_size=None, per_image: bool = True, lazy_masks: bool = True):
        """``detect`` as a ``tf.function`` of (images, image_info); with
        ``pad_mode="multiple"`` each padded size is a new input shape, so it generalises to
        any height and width after the first few instead of tracing every size."""
        return tf.function(
            lambda images, image_info: self.detect(
                images, image_info, output_size, per_image=per_image, lazy_masks=lazy_masks
            ),
            reduce_retracing=True,
        )

    def preprocess(self, image) -> tuple[tf.Tensor, tf.Tensor]:
        """One uint8 [H0, W0, 3] image -> (float32 [H, W, 3], image_info [4, 2]): the
        evaluation resize and padding of ``preprocess_for_eval``, with the mean colour of
        the model's normalisation."""
        inputs = preprocess_for_eval(
            {"image": image, "image_id": 0}, self.config.data, self.pad_colour
        )
        return inputs["image"], inputs["image_info"]

    def detect_image(
        self, image: np.ndarray, detect_fn=None, full_size: bool = True
    ) -> dict[str, np.ndarray]:
        """One uint8 [H0, W0, 3] image -> its detections as numpy, cut to the valid rows:
        ``detection_scores`` [n], ``detection_classes`` [n], ``detection_masks`` uint8
        [n, H0, W0], ``detection_boxes`` [n, 4].

        ``full_size=False``: masks and boxes at the resized image's size (the model's
        resolution), a uniform scaling of the original, so that
        a 24-megapixel photo costs the memory of a 1333-pixel one."""
        detect_fn = detect_fn or self.detect_fn()
        padded, image_info = self.preprocess(image)
        if not full_size:  # the scaled size stands in for the original
            image_info = tf.tensor_scatter_nd_update(image_info, [[0]], image_info[1:2])
        dets = detect_fn(padded[None], image_info[None])
        size = tf.cast(tf.round(image_info[0]), tf.int32).numpy()
        return one_image({k: v.numpy() for k, v in dets.items()}, 0, size)


def one_image(outputs: dict, index: int = 0, size=None) -> dict[str, np.ndarray]:
    """The valid rows of image ``index`` of padded detections; masks cut to ``size``."""
    count = int(outputs["num_detections"][index])
    dets = {
        k: np.asarray(v[index][:count]) for k, v in outputs.items() if k.startswith("detection_")
    }
    if size is not None:
        dets["detection_masks"] = dets["detection_masks"][:, : size[0], : size[1]]
    return dets
