"""Frozen configuration dataclasses shared by every part of solo-tf.

The library takes these as explicit arguments; only entry points (``solo_tf.train`` and
friends) turn absl flags into them. Defaults are the reference hyperparameters of the
authors' public SOLO configs (see ``shared/DESIGN.md``) unless a field says otherwise.

Shape letters used across the package:
  B batch, H W padded input height/width, S grid size of one level, C classes,
  N instances (padded to ``max_instances``), G total grid cells over levels (sum S_l^2),
  K detections kept after post-processing.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

HeadType = Literal["vanilla", "decoupled", "solov2"]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network: backbone, FPN and SOLO head."""

    num_classes: int = 80
    backbone_depth: int = 50  # 18, 34, 50 or 101
    # torchvision: the authors' ResNet (stride on the 3x3, symmetric padding, BatchNorm eps
    # 1e-5; ``solo_tf.modeling.resnet``), which the converted checkpoints need; keras_cv:
    # keras-cv's ResNetBackbone (v1), for keras-cv presets.
    backbone_type: Literal["torchvision", "keras_cv"] = "torchvision"
    # Stage widths; () means the standard (64, 128, 256, 512). Narrow ResNets train the
    # embedded dataset from scratch on a CPU.
    backbone_filters: tuple[int, ...] = ()
    # Channels of the 7x7 stem conv (torchvision backbone only); 0 means torchvision's 64.
    # The stem runs at stride 2, the largest activations of the network: with narrow stages
    # (the demo's 32, 32, 64, 128) a 64-wide stem is 27% of the backbone's arithmetic.
    backbone_stem_filters: int = 0
    # How images in [0, 255] are normalised inside the model: "imagenet" (mean/std, the
    # authors' torchvision backbones) or "unit" (x / 255, keras-cv presets built with
    # include_rescaling=True). Must match the pretrained weights.
    input_normalization: Literal["imagenet", "unit"] = "imagenet"
    # torchvision backbone, depth 50/101: a bottleneck's stride 2 on its first 1x1 conv
    # instead of the 3x3 (detectron2's default STRIDE_IN_1X1=True: AdelaiDet's checkpoints).
    # Refused with depth 18/34 (basic blocks have no 1x1 conv) and with keras_cv.
    stride_in_1x1: bool = False
    freeze_stem_and_stage1: bool = True
    freeze_batchnorm: bool = True  # BatchNorm in inference mode, as in the reference
    fpn_channels: int = 256
    head_type: HeadType = "vanilla"
    # Width and depth of each head tower (SOLOv2: the kernel and category towers, the authors'
    # seg_feat_channels and stacked_convs: 512 x 4, Light 256 x 2).
    head_channels: int = 256
    stacked_convs: int = 7
    norm_groups: int = 32
    num_grids: tuple[int, ...] = (40, 36, 24, 16, 12)
    # Stride at which each level's head runs (P2 resized down to 8, P6 up to 32).
    strides: tuple[int, ...] = (8, 8, 16, 32, 32)
    prior_prob: float = 0.01
    # Initial mask probability of the last mask convs (the authors: 0.01). For the decoupled
    # head it is the initial value of the product sigmoid(X) * sigmoid(Y).
    mask_prior_prob: float = 0.01
    coord_conv: bool = True
    # Decoupled head only: one mask tower (both coordinate channels) feeding the X and Y
    # convs, as in the authors' Decoupled SOLO Light, instead of an X and a Y tower.
    decoupled_shared_tower: bool = False
    # SOLOv2 only: E, the channels of the stride-4 mask features and of each cell's dynamic
    # kernel (the authors' ins_out_channels: 256, Light 128), and the width of the mask
    # feature branch's per-level convs (the authors: 128).
    mask_feature_channels: int = 256
    mask_feature_mid: int = 128

    @property
    def num_levels(self) -> int:
        return len(self.num_grids)

    @property
    def mask_strides(self) -> tuple[int, ...]:
        """Stride of each level's mask prediction.

        SOLO heads upsample each level's features by 2 (strides / 2: 4, 4, 8, 16, 16);
        SOLOv2 predicts every level's masks on the one stride-4 mask feature map.
        """
        if self.head_type == "solov2":
            return tuple(4 for _ in self.strides)
        return tuple(s // 2 for s in self.strides)


@dataclasses.dataclass(frozen=True)
class TargetConfig:
    """Label assignment (``solo_tf.targets``)."""

    num_grids: tuple[int, ...] = (40, 36, 24, 16, 12)
    # Inclusive ranges on sqrt(w * h) of an instance's box, one per level, in input pixels.
    scale_ranges: tuple[tuple[float, float], ...] = (
        (1, 96),
        (48, 192),
        (96, 384),
        (192, 768),
        (384, 2048),
    )
    # Centre region: mass centre +- epsilon * half the box size.
    center_epsilon: float = 0.2
    max_instances: int = 100
    # Instance masks for the loss are stored at this stride of the padded input (the finest
    # mask stride of the head); coarser levels pool them.
    mask_stride: int = 4
    # Who gets a cell two instances claim: "later" (the authors: instances are written in
    # annotation order, the later overwrites) or "smaller" (the smaller mask area wins).
    contested_cells: Literal["later", "smaller"] = "later"


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Focal + Dice loss (``solo_tf.losses``)."""

    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    cate_weight: float = 1.0
    mask_weight: float = 3.0  # lambda of the paper


@dataclasses.dataclass(frozen=True)
class PostprocessConfig:
    """Inference (``solo_tf.postprocess``): the authors' test config."""

    nms_pre: int = 500
    score_threshold: float = 0.1
    mask_threshold: float = 0.5
    update_threshold: float = 0.05
    nms_type: Literal["matrix", "mask"] = "matrix"
    kernel: Literal["gaussian", "linear"] = "gaussian"
    sigma: float = 2.0
    mask_nms_iou: float = 0.5  # only for nms_type="mask"
    max_detections: int = 100


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Input pipeline (``solo_tf.data``)."""

    train_annotations: str = ""
    train_images: str = ""
    val_annotations: str = ""
    val_images: str = ""
    train_tfrecords: str = ""  # glob; used instead of the JSON when set
    val_tfrecords: str = ""
    # Aspect-preserving resize: short side drawn from this list, long side capped.
    short_sides: tuple[int, ...] = (640, 672, 704, 736, 768, 800)
    max_long_side: int = 1333
    eval_short_side: int = 800
    # How a resized image is padded (bottom/right, with the mean colour; solo_tf.data.geometry):
    # "multiple" (the authors): to the next multiple of 32, a training batch to its largest
    # image; "canvas": to the fixed output_size (XLA, TPU, TFLite), which never shrinks an
    # image (one that does not fit is an error).
    pad_mode: Literal["canvas", "multiple"] = "canvas"
    # The fixed canvas (pad_mode="canvas"), and the default input size of TFLite/ONNX exports.
    output_size: tuple[int, int] = (1344, 1344)
    flip_probability: float = 0.5
    # Beyond the paper (off in its flagfiles; data/jitter.py): photometric jitter strength
    # 0..1, and a scale jitter factor range (lo, hi) applied after the short-side draw, with a
    # random crop to output_size when the image outgrows it. () is off.
    photometric_jitter: float = 0.0
    scale_jitter: tuple[float, ...] = ()
    # Shape jitter strength 0..1: an area-preserving stretch and a shear of image and masks.
    shape_jitter: float = 0.0
    # Beyond the paper (off in its flagfiles; data/copy_paste.py): the probability that a
    # training image receives objects cut out of the next image of the stream.
    copy_paste: float = 0.0
    skip_empty: bool = True  # training: drop images without usable instances
    bad_sample_policy: Literal["error", "skip"] = "error"
    # Under "skip": stop with an error once more than this fraction of the images is skipped.
    max_skip_fraction: float = 0.25
    deterministic: bool = False
    seed: int = 0
    # Training shuffle buffer: image indices for COCO JSON (free: images are decoded after the
    # shuffle; the paper flagfiles shuffle all of COCO), decoded examples for TFRecords.
    shuffle_buffer: int = 1000
    # Training with a COCO JSON: keep decoded images (and masks) in memory up to this many MiB
    # so that each is decoded once, not once per epoch (0: off; small datasets, coco.CocoReader).
    decoded_cache_mb: int = 0
    # Progressive resizing (beyond the paper, off in its flagfiles; inputs.data_at_step): the
    # first early_steps training steps cap the long side at early_size instead of
    # max_long_side and scale the short sides and the canvas (rounded up to multiples of 32)
    # by the same factor, so that they cost about that factor squared; the rest train at full
    # size. 0: off. The early steps use early_copy_paste instead of copy_paste: weaker
    # augmentation on the smaller images (Tan & Le, EfficientNetV2, ICML 2021: "progressive
    # learning"), and half the decoding and augmentation on a CPU, where the input pipeline
    # shares the cores with a step that small images make short.
    early_steps: int = 0
    early_size: int = 0
    early_copy_paste: float = 0.0
    parallel_calls: int = -1  # -1: tf.data.AUTOTUNE

    def __post_init__(self):
        size = tuple(self.output_size)
        if len(size) != 2 or any(s <= 0 or s % 32 for s in size):
            raise ValueError(
                f"--output_size={','.join(map(str, size))}: need height,width, both positive "
                "multiples of 32 (the backbone's largest stride)"
            )
        if not 0.0 <= self.photometric_jitter <= 1.0:
            raise ValueError(f"--photometric_jitter={self.photometric_jitter}: need 0 to 1")
        if not 0.0 <= self.shape_jitter <= 1.0:
            raise ValueError(f"--shape_jitter={self.shape_jitter}: need 0 to 1")
        if not 0.0 <= self.copy_paste <= 1.0:
            raise ValueError(f"--copy_paste={self.copy_paste}: need a probability 0 to 1")
        jitter = tuple(self.scale_jitter)
        if jitter and not (len(jitter) == 2 and 0 < jitter[0] <= jitter[1]):
            raise ValueError(
                f"--scale_jitter={','.join(map(str, jitter))}: need lo,hi with 0 < lo <= hi"
            )
        if self.early_steps < 0:
            raise ValueError(f"--early_steps={self.early_steps}: need 0 (off) or more steps")
        if self.early_steps and not 0 < self.early_size < self.max_long_side:
            raise ValueError(
                f"--early_steps={self.early_steps} needs an --early_size between 0 and "
                f"--max_long_side={self.max_long_side} (exclusive), not {self.early_size}"
            )
        if not 0.0 <= self.early_copy_paste <= 1.0:
            raise ValueError(
                f"--early_copy_paste={self.early_copy_paste}: need a probability 0 to 1"
            )
        if self.decoded_cache_mb < 0:
            raise ValueError(f"--decoded_cache_mb={self.decoded_cache_mb}: need 0 or more MiB")
        if not 0.0 <= self.max_skip_fraction <= 1.0:
            raise ValueError(f"--max_skip_fraction={self.max_skip_fraction}: need 0 to 1")
        if self.pad_mode not in ("canvas", "multiple"):
            raise ValueError(f"--pad_mode={self.pad_mode}: need canvas or multiple")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The custom training loop (``solo_tf.train_lib``)."""

    model_dir: str = ""
    global_batch_size: int = 16
    # sgd: the reference (momentum, L2 weight decay added to the gradients); adamw:
    # decoupled weight decay, for training from scratch (the CPU demo).
    optimizer: Literal["sgd", "adamw"] = "sgd"
    learning_rate: float = 0.01  # for global batch 16; not rescaled automatically
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    warmup_factor: float = 1.0 / 3.0
    epochs: float = 36.0
    decay_epochs: tuple[float, ...] = (27.0, 33.0)
    decay_rate: float = 0.1
    # step: times decay_rate at each decay step (the reference); linear: from learning_rate at
    # the end of the warm-up down to 0 at the last step (decay steps unused; for short budgets).
    lr_decay: Literal["step", "linear"] = "step"
    total_steps: int = 0  # when > 0 overrides epochs, and decay_steps replaces decay_epochs
    decay_steps: tuple[int, ...] = ()
    clip_norm: float = 35.0
    steps_per_loop: int = 20
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    eval_every: int = 0  # steps; 0 disables periodic evaluation
    mixed_precision: Literal["", "auto", "bfloat16", "float16"] = ""
    jit_compile: bool = False
    strategy: Literal["mirrored", "one_device", "multi_worker", "tpu"] = "mirrored"
    # torchvision backbone: a torchvision ImageNet .pth or a .weights.h5 of ``solo_tf.convert
    # --backbone_only``; keras_cv: a preset handle, preset directory or .weights.h5.
    pretrained_backbone: str = ""
    seed: int = 0

    def __post_init__(self):
        if self.global_batch_size < 1:
            raise ValueError(
                f"--global_batch_size={self.global_batch_size}: need at least 1 image per step"
            )


@dataclasses.dataclass(frozen=True)
class SOLOConfig:
    """Everything one experiment needs."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    targets: TargetConfig = dataclasses.field(default_factory=TargetConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    postprocess: PostprocessConfig = dataclasses.field(default_factory=PostprocessConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self):
        if tuple(self.model.num_grids) != tuple(self.targets.num_grids):
            raise ValueError(
                f"model.num_grids {self.model.num_grids} != targets.num_grids "
                f"{self.targets.num_grids}"
            )
        if len(self.targets.scale_ranges) != len(self.targets.num_grids):
            raise ValueError("targets.scale_ranges needs one (low, high) pair per level")
        if self.data.pad_mode == "multiple" and (
            self.train.jit_compile or self.train.strategy == "tpu"
        ):
            raise ValueError(
                "--jit_compile and --strategy=tpu need one input shape, but "
                "--pad_mode=multiple pads each batch to its largest image: use "
                "--pad_mode=canvas with an --output_size that holds the largest resized image"
            )
        if self.targets.mask_stride != min(self.model.mask_strides):
            raise ValueError(
                f"targets.mask_stride {self.targets.mask_stride} must equal the finest mask "
                f"stride of the head {min(self.model.mask_strides)}"
            )


def to_dict(config) -> dict:
    """A JSON-friendly dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(config)


def from_dict(data: dict) -> SOLOConfig:
    """Inverse of ``to_dict`` for ``SOLOConfig``; unknown keys raise a KeyError naming them.

    A model section without ``backbone_type`` was written when keras-cv's ResNet was the only
    backbone, a targets section without ``contested_cells`` when the smaller instance won, a
    data section without ``pad_mode`` when every image was padded to ``output_size``: they
    keep that meaning (the model_dir's checkpoints need it).
    """

    def build(cls, values):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(fields)
        if unknown:
            raise KeyError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        kwargs = {}
        for name, value in values.items():
            if isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            kwargs[name] = value
        return cls(**kwargs)

    # config.json files written before these fields existed describe the behaviour of then.
    model = {"backbone_type": "keras_cv", **data.get("model", {})}
    targets = {"contested_cells": "smaller", **data.get("targets", {})}
    data_section = {"pad_mode": "canvas", **data.get("data", {})}
    return SOLOConfig(
        model=build(ModelConfig, model),
        targets=build(TargetConfig, targets),
        loss=build(LossConfig, data.get("loss", {})),
        postprocess=build(PostprocessConfig, data.get("postprocess", {})),
        data=build(DataConfig, data_section),
        train=build(TrainConfig, data.get("train", {})),
    )
