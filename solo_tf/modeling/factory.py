"""build_model: a ModelConfig -> a SOLOModel."""

from __future__ import annotations

import contextlib

import keras
import numpy as np

from solo_tf.config import ModelConfig
from solo_tf.modeling.backbone import ResNetPyramidBackbone, load_backbone_weights
from solo_tf.modeling.decoupled_head import DecoupledSOLOHead
from solo_tf.modeling.fpn import FPN
from solo_tf.modeling.resnet import TorchvisionResNet, load_torchvision_weights
from solo_tf.modeling.solo_head import SOLOHead
from solo_tf.modeling.solo_model import SOLOModel
from solo_tf.modeling.solov2_head import SOLOv2Head

HEADS = {"vanilla": SOLOHead, "decoupled": DecoupledSOLOHead, "solov2": SOLOv2Head}
BACKBONES = {"torchvision": TorchvisionResNet, "keras_cv": ResNetPyramidBackbone}
# Compute dtype (``export.saved_model --compute_dtype``) -> the Keras dtype policy.
COMPUTE_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16"}


@contextlib.contextmanager
def compute_dtype_scope(compute_dtype: str):
    """Models built inside compute in ``compute_dtype`` (bfloat16: float32 weights, bfloat16
    convolutions and activations); the global Keras policy is restored on the way out."""
    if compute_dtype not in COMPUTE_POLICIES:
        raise ValueError(
            f"compute_dtype must be one of {sorted(COMPUTE_POLICIES)}, got {compute_dtype!r}"
        )
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(COMPUTE_POLICIES[compute_dtype])
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def build_model(config: ModelConfig, build: bool = True) -> SOLOModel:
    """The SOLO network of ``config``, under the current Keras dtype policy.

    With ``build`` the weights are created by one call on a 64 x 64 zero image (weights do
    not depend on the input size), so checkpoints and pretrained weights can be loaded.
    """
    if config.head_type not in HEADS:
        raise ValueError(f"head_type must be one of {sorted(HEADS)}, got {config.head_type!r}")
    if config.backbone_type not in BACKBONES:
        raise ValueError(
            f"backbone_type must be one of {sorted(BACKBONES)}, got {config.backbone_type!r}"
        )
    options = {}
    if config.stride_in_1x1:  # torchvision only (depth 50/101, checked by TorchvisionResNet)
        if config.backbone_type != "torchvision":
            raise ValueError("--stride_in_1x1 needs --backbone_type=torchvision")
        options["stride_in_1x1"] = True
    if config.backbone_stem_filters:
        if config.backbone_type != "torchvision":
            raise ValueError("--backbone_stem_filters needs --backbone_type=torchvision")
        options["stem_filters"] = config.backbone_stem_filters
    backbone = BACKBONES[config.backbone_type](
        depth=config.backbone_depth,
        freeze_stem_and_stage1=config.freeze_stem_and_stage1,
        freeze_batchnorm=config.freeze_batchnorm,
        filters=config.backbone_filters,
        input_normalization=config.input_normalization,
        name="backbone",
        **options,
    )
    fpn = FPN(channels=config.fpn_channels, name="fpn")
    head_options = {}
    if config.head_type == "decoupled":
        head_options = {"shared_tower": config.decoupled_shared_tower}
    extra = {}
    if config.head_type == "solov2":
        extra = {
            "mask_feature_channels": config.mask_feature_channels,
            "mask_feature_mid": config.mask_feature_mid,
        }
    head = HEADS[config.head_type](
        config.num_classes,
        num_grids=config.num_grids,
        strides=config.strides,
        head_channels=config.head_channels,
        stacked_convs=config.stacked_convs,
        norm_groups=config.norm_groups,
        prior_prob=config.prior_prob,
        mask_prior_prob=config.mask_prior_prob,
        coord_conv=config.coord_conv,
        name="head",
        **head_options,
        **extra,
    )
    model = SOLOModel(backbone, fpn, head, name=f"solo_{config.head_type}")
    if build:
        model(np.zeros((1, 64, 64, 3), np.float32))
    return model


def load_pretrained_backbone(model: SOLOModel, source: str) -> None:
    """Loads pretrained ResNet weights into ``model.backbone``: for the torchvision backbone see
    ``resnet.load_torchvision_weights``, for keras-cv's ``backbone.load_backbone_weights``."""
    if isinstance(model.backbone, TorchvisionResNet):
        load_torchvision_weights(model.backbone, source)
    else:
        load_backbone_weights(model.backbone, source)
