"""The keras-cv ResNet backbone (v1 blocks, ``backbone_type="keras_cv"``): pyramid levels P2-P5.

The default backbone is the torchvision-faithful one of ``solo_tf.modeling.resnet``.

Shape letters: B batch, H W input height/width (multiples of 32).
"""

from __future__ import annotations

import os

import keras
import keras_cv

from solo_tf.modeling.normalization import (  # noqa: F401  (IMAGENET_* re-exported)
    IMAGENET_MEAN,
    IMAGENET_STD,
    NORMALIZATIONS,
    ImageNormalization,
    check_normalization,
)

# depth -> (blocks per stage, block type) of keras-cv's ResNetBackbone (v1).
RESNET_SPECS = {
    18: ((2, 2, 2, 2), "basic_block"),
    34: ((3, 4, 6, 3), "basic_block"),
    50: ((3, 4, 6, 3), "block"),
    101: ((3, 4, 23, 3), "block"),
}
STAGE_FILTERS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)
# Layer-name prefixes of the stem and the first stage in keras-cv's ResNetBackbone.
STEM_AND_STAGE1_PREFIXES = ("conv1_", "pool1_", "v2_stack_0_")
RESNET_FEATURES_NAME = "resnet_features"


def build_keras_cv_resnet(depth: int, input_shape=(None, None, 3), filters=()) -> keras.Model:
    """A randomly initialised keras-cv ``ResNetBackbone`` (v1) of the given depth.

    ``filters``: the four stage widths; empty for the standard (64, 128, 256, 512).
    """
    if depth not in RESNET_SPECS:
        raise ValueError(f"backbone depth must be one of {sorted(RESNET_SPECS)}, got {depth}")
    blocks, block_type = RESNET_SPECS[depth]
    return keras_cv.models.ResNetBackbone(
        stackwise_filters=list(filters or STAGE_FILTERS),
        stackwise_blocks=list(blocks),
        stackwise_strides=list(STAGE_STRIDES),
        include_rescaling=False,  # it only divides by 255; ImageNormalization does mean/std
        input_shape=tuple(input_shape),
        block_type=block_type,
    )


@keras.saving.register_keras_serializable(package="solo_tf")
class ResNetPyramidBackbone(keras.Model):
    """Functional model: float32 RGB in [0, 255] [B, H, W, 3] -> {"P2".."P5"}.

    P_k has stride 2^k: [B, H/4, W/4, c], ..., [B, H/32, W/32, 8c] with c = 64 (basic
    blocks, depth 18/34) or 256 (bottlenecks, depth 50/101). The keras-cv network sits
    inside as the sub-model ``resnet_features`` (its layer names are keras-cv's, so preset
    weights copy over by name).

    Freezing follows the reference: with ``freeze_stem_and_stage1`` the stem and stage 1
    have no trainable weights; with ``freeze_batchnorm`` every BatchNormalization layer is
    non-trainable, which in Keras 3 also makes it run in inference mode (moving
    statistics) even when the model is called with ``training=True``. Setting
    ``trainable = True`` on an enclosing model undoes both (Keras sets it recursively).
    """

    def __init__(
        self,
        depth: int = 50,
        freeze_stem_and_stage1: bool = True,
        freeze_batchnorm: bool = True,
        input_shape=(None, None, 3),
        filters=(),
        input_normalization: str = "imagenet",
        **kwargs,
    ):
        check_normalization(input_normalization)
        if filters and len(filters) != len(STAGE_FILTERS):
            raise ValueError(f"backbone filters need 4 stage widths, got {filters}")
        resnet = build_keras_cv_resnet(depth, input_shape, tuple(filters))
        features = keras.Model(
            resnet.inputs,
            {
                level: resnet.get_layer(name).output
                for level, name in resnet.pyramid_level_inputs.items()
            },
            name=RESNET_FEATURES_NAME,
        )
        images = keras.Input(shape=tuple(input_shape), name="images")
        mean, std = NORMALIZATIONS[input_normalization]
        normalize = ImageNormalization(mean, std, name="image_normalization")
        outputs = features(normalize(images))
        super().__init__(inputs=images, outputs=outputs, **kwargs)
        self.depth = depth
        self.freeze_stem_and_stage1 = freeze_stem_and_stage1
        self.freeze_batchnorm = freeze_batchnorm
        self.image_shape = tuple(input_shape)
        self.filters = tuple(filters)
        self.input_normalization = input_normalization
        _apply_freezing(features, freeze_stem_and_stage1, freeze_batchnorm)

    @property
    def resnet_features(self) -> keras.Model:
        """The keras-cv layers (stem + 4 stages) as a functional model."""
        return self.get_layer(RESNET_FEATURES_NAME)

    def get_config(self):
        return {
            "name": self.name,
            "depth": self.depth,
            "freeze_stem_and_stage1": self.freeze_stem_and_stage1,
            "freeze_batchnorm": self.freeze_batchnorm,
            "input_shape": self.image_shape,
            "filters": self.filters,
            "input_normalization": self.input_normalization,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _apply_freezing(features: keras.Model, stem_and_stage1: bool, batchnorm: bool) -> None:
    for layer in features.layers:
        if stem_and_stage1 and layer.name.startswith(STEM_AND_STAGE1_PREFIXES):
            layer.trainable = False
        if batchnorm and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def load_backbone_weights(backbone: ResNetPyramidBackbone, source: str) -> None:
    """Copies pretrained ResNet weights into ``backbone`` (in place).

    ``source`` is one of:
      * a local keras-cv preset directory (``config.json`` + ``model.weights.h5``, as written
        by ``keras_cv``'s ``save_to_preset``) of a ``ResNetBackbone``;
      * a Keras ``.weights.h5`` file saved from a keras-cv ``ResNetBackbone`` of the same
        depth (for instance a preset's ``model.weights.h5``);
      * a keras-cv preset name or ``kaggle://`` / ``gs://`` handle (downloads: needs internet).

    Raises FileNotFoundError naming ``source`` when a local path does not exist, and
    ValueError naming it when its architecture does not match ``backbone``.
    """
    source = os.fspath(source)
    if os.path.isdir(source):
        config_path = os.path.join(source, "config.json")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"backbone preset directory {source!r} has no config.json")
        pretrained = _load_preset(source)
        _check_preset_scaling(pretrained, backbone, source)
    elif source.endswith(".h5"):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"backbone weights file {source!r} does not exist")
        pretrained = build_keras_cv_resnet(backbone.depth)
        try:
            pretrained.load_weights(source)
        except Exception as err:  # Keras raises several types for a mismatched file
            raise ValueError(
                f"backbone weights file {source!r} does not fit a ResNet-{backbone.depth} "
                f"keras-cv ResNetBackbone: {err}"
            ) from err
    elif source in keras_cv.models.ResNetBackbone.presets or source.startswith(
        ("kaggle://", "gs://")
    ):
        pretrained = _load_preset(source)
        _check_preset_scaling(pretrained, backbone, source)
    else:
        raise FileNotFoundError(
            f"backbone weights {source!r}: no such preset directory, .weights.h5 file or "
            "keras-cv preset name"
        )
    _copy_weights_by_name(pretrained, backbone.resnet_features, source)


def _check_preset_scaling(pretrained, backbone, source) -> None:
    """A preset trained on x / 255 inputs needs input_normalization="unit", and vice versa."""
    wants = "unit" if getattr(pretrained, "include_rescaling", False) else "imagenet"
    if wants != backbone.input_normalization:
        raise ValueError(
            f"backbone preset {source!r} was built with include_rescaling="
            f"{wants == 'unit'}: train with --input_normalization={wants} so that its "
            f"weights see the inputs they were trained on (now {backbone.input_normalization})"
        )


def _load_preset(source: str) -> keras.Model:
    try:
        return keras_cv.models.ResNetBackbone.from_preset(source)
    except Exception as err:
        raise ValueError(f"cannot load keras-cv ResNetBackbone preset {source!r}: {err}") from err


def _copy_weights_by_name(src: keras.Model, dst: keras.Model, source: str) -> None:
    """Copies every weighted layer of ``dst`` from the layer of the same name in ``src``."""
    src_layers = {layer.name: layer for layer in src.layers if layer.weights}
    dst_names = {layer.name for layer in dst.layers if layer.weights}
    extra = sorted(set(src_layers) - dst_names)
    if extra:
        raise ValueError(
            f"backbone weights {source!r} hold layers the backbone lacks (another depth?): "
            f"{extra[:5]}{' ...' if len(extra) > 5 else ''}"
        )
    for layer in dst.layers:
        if not layer.weights:
            continue
        other = src_layers.get(layer.name)
        if other is None:
            raise ValueError(f"backbone weights {source!r} have no layer {layer.name!r}")
        values = other.get_weights()
        expected = [tuple(w.shape) for w in layer.weights]
        if [tuple(v.shape) for v in values] != expected:
            raise ValueError(
                f"backbone weights {source!r}: layer {layer.name!r} has shapes "
                f"{[tuple(v.shape) for v in values]}, the backbone expects {expected}"
            )
        layer.set_weights(values)
