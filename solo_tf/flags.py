"""absl flags for every config field, and their conversion to ``SOLOConfig``.

Only entry points import this module. Each dataclass field of ``solo_tf.config`` becomes one
flag of the same name; fields that mean the same thing in two sections (``num_grids`` of the
model and of the targets, ``seed`` of the data and of the loop) share one flag.
"""

from __future__ import annotations

import dataclasses
import typing

from absl import flags

from solo_tf import config as cfg

SECTIONS = {
    "model": cfg.ModelConfig,
    "targets": cfg.TargetConfig,
    "loss": cfg.LossConfig,
    "postprocess": cfg.PostprocessConfig,
    "data": cfg.DataConfig,
    "train": cfg.TrainConfig,
}

HELP = {
    "num_classes": "Number of object categories (contiguous indices 0..C-1).",
    "backbone_depth": "ResNet depth: 18, 34, 50 or 101.",
    "backbone_type": "torchvision (the authors' ResNet; default) or keras_cv (keras-cv presets).",
    "backbone_filters": "ResNet stage widths; empty for the standard 64,128,256,512.",
    "backbone_stem_filters": "ResNet stem conv channels (torchvision); 0 for the standard 64.",
    "input_normalization": "imagenet (mean/std) or unit (x/255): must match the backbone weights.",
    "stride_in_1x1": "torchvision ResNet-50/101: bottleneck stride on the 1x1 (detectron2 MSRA).",
    "freeze_stem_and_stage1": "Freeze the ResNet stem and first stage (reference: true).",
    "freeze_batchnorm": "Run backbone BatchNorm in inference mode (reference: true).",
    "fpn_channels": "FPN channels.",
    "head_type": "vanilla (S^2 mask channels), decoupled (S + S) or solov2 (dynamic kernels).",
    "head_channels": "Channels of the head's stacked convs (solov2: kernel and category towers).",
    "stacked_convs": "Number of 3x3 convs in each head tower.",
    "norm_groups": "GroupNorm groups in the head.",
    "num_grids": "Grid size S of each level.",
    "strides": "Stride at which each level's head runs.",
    "prior_prob": "Focal-loss prior of the category bias.",
    "mask_prior_prob": "Initial mask probability of the last mask convs (decoupled: product).",
    "coord_conv": "Concatenate coordinate channels to the mask branch input.",
    "mask_feature_channels": "solov2: channels E of the stride-4 mask features and kernels.",
    "mask_feature_mid": "solov2: channels of the mask feature branch's per-level convs.",
    "decoupled_shared_tower": "Decoupled head: one mask tower for X and Y (Decoupled SOLO Light).",
    "scale_ranges": "Scale range of each level on sqrt(w*h), as lo:hi pairs.",
    "center_epsilon": "Centre region: mass centre +- epsilon * half box size.",
    "max_instances": "Instances kept per image for the targets.",
    "mask_stride": "Stride of the instance masks kept for the loss.",
    "contested_cells": "Cell claimed by two instances: later (the authors) or smaller wins.",
    "focal_alpha": "Focal loss alpha.",
    "focal_gamma": "Focal loss gamma.",
    "cate_weight": "Weight of the category loss.",
    "mask_weight": "Weight of the Dice mask loss (lambda).",
    "nms_pre": "Candidates kept before NMS.",
    "score_threshold": "Minimum category score of a candidate.",
    "mask_threshold": "Threshold that binarises mask probabilities.",
    "update_threshold": "Minimum score after Matrix NMS.",
    "nms_type": "matrix (Matrix NMS) or mask (greedy mask NMS).",
    "kernel": "Matrix NMS kernel: gaussian or linear.",
    "sigma": "Gaussian kernel sigma of Matrix NMS.",
    "mask_nms_iou": "IoU threshold of greedy mask NMS.",
    "max_detections": "Detections kept per image (K).",
    "train_annotations": "COCO instances JSON of the training split.",
    "train_images": "Image folder of the training split.",
    "val_annotations": "COCO instances JSON of the validation split.",
    "val_images": "Image folder of the validation split.",
    "train_tfrecords": "Glob of Model Garden TFRecords for training (instead of JSON).",
    "val_tfrecords": "Glob of Model Garden TFRecords for validation (instead of JSON).",
    "short_sides": "Training short sides, one drawn per image.",
    "max_long_side": "Cap on the resized long side.",
    "eval_short_side": "Short side at evaluation.",
    "pad_mode": "multiple (the authors: each image padded to a multiple of 32, a batch to its "
    "largest image) or canvas (every image padded to --output_size: XLA, TPU, TFLite).",
    "output_size": "Fixed padded input height,width (multiples of 32) of --pad_mode=canvas, "
    "and the default size of TFLite/ONNX exports.",
    "flip_probability": "Probability of a horizontal flip in training.",
    "photometric_jitter": "Training colour jitter strength 0..1 (brightness, contrast, "
    "saturation, hue, channel order); 0 is off, as in the paper.",
    "scale_jitter": "Training scale jitter lo,hi: the drawn size times a log-uniform factor, "
    "randomly cropped to output_size; empty is off, as in the paper.",
    "shape_jitter": "Training shape jitter strength 0..1: image and masks stretched (aspect up "
    "to exp(+-0.3 s)) and sheared (up to +-0.3 s) together; 0 is off, as in the paper.",
    "copy_paste": "Training copy-paste probability 0..1: an image receives a random half of "
    "the next image's objects (Ghiasi et al. 2021); 0 is off, as in the paper.",
    "skip_empty": "Drop training images without usable instances.",
    "bad_sample_policy": "error: stop on a bad sample; skip: count, log and skip it.",
    "deterministic": "Deterministic input order and augmentation (seeded).",
    "seed": "Random seed of the input pipeline and initialisation.",
    "shuffle_buffer": "Training shuffle buffer: image indices (COCO JSON) or decoded examples "
    "(TFRecords).",
    "max_skip_fraction": "With --bad_sample_policy=skip: stop once more than this fraction of "
    "the images could not be read.",
    "decoded_cache_mb": "Training from a COCO JSON: keep decoded images and masks in memory "
    "up to this many MiB, so that a small dataset is decoded once (0: off).",
    "early_steps": "Progressive resizing: the first this many training steps use smaller "
    "images (--early_size); 0 is off, as in the paper.",
    "early_size": "Progressive resizing: the long-side cap of the first --early_steps steps; "
    "the short sides and the canvas scale by early_size / max_long_side.",
    "early_copy_paste": "Progressive resizing: --copy_paste of the first --early_steps steps "
    "(weaker augmentation on smaller images, as EfficientNetV2's progressive learning).",
    "parallel_calls": "Parallel decode/augment calls; -1 for AUTOTUNE.",
    "model_dir": "Checkpoints, summaries and logs; a run resumes from here.",
    "global_batch_size": "Images per step over all replicas.",
    "optimizer": "sgd (reference: momentum + L2) or adamw (decoupled decay; from scratch).",
    "learning_rate": "Base learning rate (reference: 0.01 for batch 16).",
    "momentum": "SGD momentum.",
    "weight_decay": "L2 weight decay added to the gradients.",
    "warmup_steps": "Linear warm-up steps.",
    "warmup_factor": "Warm-up starts at learning_rate * warmup_factor.",
    "epochs": "Training length in epochs (unless total_steps > 0).",
    "decay_epochs": "Epochs at which the learning rate decays.",
    "decay_rate": "Learning rate factor at each decay.",
    "lr_decay": "step: times decay_rate at each decay step (the reference); linear: down to 0 "
    "at the last step (decay steps unused).",
    "total_steps": "Training length in steps; overrides epochs when > 0.",
    "decay_steps": "Steps at which the learning rate decays (with total_steps).",
    "clip_norm": "Gradient clipping by global norm; 0 disables.",
    "steps_per_loop": "Training steps per tf.function call.",
    "checkpoint_every": "Steps between checkpoints.",
    "keep_checkpoints": "Checkpoints kept.",
    "eval_every": "Steps between evaluations; 0 disables.",
    "mixed_precision": "'' (float32), bfloat16, float16 (with loss scaling), or auto: bfloat16 "
    "on a GPU/TPU or a CPU with AVX-512 BF16 or AMX, float32 elsewhere (solo_tf.hardware).",
    "jit_compile": "XLA-compile the model's forward and backward pass (on CPU: float32 only).",
    "strategy": "mirrored, one_device, multi_worker (TF_CONFIG) or tpu.",
    "pretrained_backbone": "torchvision backbone: a torchvision .pth or the .weights.h5 of "
    "solo_tf.convert --backbone_only; keras_cv: a preset handle, preset dir or .weights.h5.",
}


def _is_pairs(field) -> bool:
    return "tuple[tuple" in str(field.type)


def _literal_choices(cls, field):
    hint = typing.get_type_hints(cls)[field.name]
    if typing.get_origin(hint) is typing.Literal:
        return list(typing.get_args(hint))
    return None


def define_flags(flag_values=flags.FLAGS) -> None:
    """Defines one flag per config field (idempotent)."""
    if "num_classes" in flag_values:
        return
    seen = set()
    for cls in SECTIONS.values():
        for field in dataclasses.fields(cls):
            if field.name in seen:
                continue
            seen.add(field.name)
            _define(cls, field, flag_values)


def _default(cls, field):
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()


def _define(cls, field, flag_values):
    default = _default(cls, field)
    name, text = field.name, HELP.get(field.name, field.name)
    choices = _literal_choices(cls, field)
    if choices is not None:
        flags.DEFINE_enum(name, default, choices, text, flag_values=flag_values)
    elif isinstance(default, bool):
        flags.DEFINE_bool(name, default, text, flag_values=flag_values)
    elif isinstance(default, int):
        flags.DEFINE_integer(name, default, text, flag_values=flag_values)
    elif isinstance(default, float):
        flags.DEFINE_float(name, default, text, flag_values=flag_values)
    elif isinstance(default, str):
        flags.DEFINE_string(name, default, text, flag_values=flag_values)
    elif _is_pairs(field):
        flags.DEFINE_list(
            name, [f"{lo:g}:{hi:g}" for lo, hi in default], text, flag_values=flag_values
        )
    else:
        flags.DEFINE_list(name, [str(v) for v in default], text, flag_values=flag_values)


def _parse(field, value):
    if _is_pairs(field):
        pairs = [v.split(":") for v in value]
        bad = [v for v in pairs if len(v) != 2]
        if bad:
            raise flags.ValidationError(f"--{field.name} wants lo:hi pairs, got {value}")
        return tuple((float(lo), float(hi)) for lo, hi in pairs)
    if isinstance(value, list):
        kind = float if "float" in str(field.type) else int
        return tuple(kind(v) for v in value if v != "")
    return value


def config_from_flags(flag_values=flags.FLAGS, base: cfg.SOLOConfig | None = None):
    """Builds the full config from parsed flags.

    With ``base`` (say, the config a model was trained with), only flags given on the
    command line or in a flagfile override it.
    """
    sections = {}
    for key, cls in SECTIONS.items():
        kwargs = {}
        for field in dataclasses.fields(cls):
            flag = flag_values[field.name]
            if base is not None and not flag.present:
                kwargs[field.name] = getattr(getattr(base, key), field.name)
            else:
                kwargs[field.name] = _parse(field, flag.value)
        sections[key] = cls(**kwargs)
    return cfg.SOLOConfig(**sections)


def config_from_args(args, prog: str = "solo_tf") -> cfg.SOLOConfig:
    """The config that command-line ``args`` (flags and ``--flagfile=``s) give, parsed into a
    fresh ``FlagValues`` so that the process's own ``flags.FLAGS`` is left alone."""
    values = flags.FlagValues()
    define_flags(values)
    values([prog, *args])
    return config_from_flags(values)
