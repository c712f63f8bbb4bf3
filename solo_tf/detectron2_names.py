"""AdelaiDet's SOLOv2 checkpoints (detectron2 names) for ``solo_tf.convert``.

aim-uofa/AdelaiDet's SOLOv2 (``adet/modeling/solov2/solov2.py``, ``configs/SOLOv2/*.yaml``)
computes WXinlong/SOLO's SOLOv2 under detectron2's module names:

WXinlong/SOLO (mmdet 1.x, torchvision ResNet) -> AdelaiDet (detectron2):
- ``backbone.conv1``, ``backbone.bn1`` -> ``backbone.bottom_up.stem.conv1``, ``...conv1.norm``
- ``backbone.layer{s}.{b}.conv{i}``, ``.bn{i}`` -> ``backbone.bottom_up.res{s+1}.{b}.conv{i}``,
  ``.conv{i}.norm``; ``.downsample.0``, ``.downsample.1`` -> ``.shortcut``, ``.shortcut.norm``
- ``neck.lateral_convs.{k}.conv``, ``neck.fpn_convs.{k}.conv`` -> ``backbone.fpn_lateral{k+2}``,
  ``backbone.fpn_output{k+2}``
- ``bbox_head.{kernel,cate}_convs.{i}.conv``, ``.gn`` -> ``ins_head.{kernel,cate}_tower.{3i}``,
  ``.{3i+1}`` (an nn.Sequential of conv, GroupNorm, ReLU per conv)
- ``bbox_head.solo_kernel``, ``bbox_head.solo_cate`` -> ``ins_head.kernel_pred``, ``.cate_pred``
- ``mask_feat_head.convs_all_levels.{l}.conv{j}.conv``, ``.gn`` ->
  ``mask_head.convs_all_levels.{l}.conv{j}.0``, ``.1``
- ``mask_feat_head.conv_pred.0.conv``, ``.gn`` -> ``mask_head.conv_pred.0``, ``.1``

The same graph otherwise: CoordConv (x then y, linspace(-1, 1)) on every level before the
bilinear resize to the grid, the category branch taking the features without the two
coordinate channels; coordinates on the mask branch's last level (P5) only; GroupNorm(32)
and no conv bias in the towers and the mask branch; P2 halved and P6 resized to P5's size
for the head; P6 = max-pool(1, stride 2) of the FPN's P5 output (detectron2's
``LastLevelMaxPool``, mmdetection's extra level alike); FrozenBatchNorm (epsilon 1e-5).

Two differences come from detectron2's defaults, which AdelaiDet's configs keep:
- ``MODEL.RESNETS.STRIDE_IN_1X1=True`` (the MSRA ResNet of ``R-50.pkl`` / ``R-101.pkl``):
  a bottleneck's stride 2 is on its first 1x1 conv, torchvision's on the 3x3. Same tensors,
  another function: the converted model gets ``ModelConfig.stride_in_1x1``
  (``model_config``; ``Detectron2Options.stride_in_1x1``). Basic blocks (R18/34) stride
  their first 3x3 in both.
- BGR input normalised by ``MODEL.PIXEL_MEAN`` (ImageNet's mean) and ``MODEL.PIXEL_STD``
  (1, 1, 1). It is linear, and 0 after it is the mean colour in both, so it folds exactly into
  the stem conv: solo-tf's kernel for RGB channel r is detectron2's for the same colour
  times IMAGENET_STD[r] / PIXEL_STD of that colour.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from solo_tf import config as cfg
from solo_tf.modeling.normalization import IMAGENET_STD

STEM_CONV = "backbone.bottom_up.stem.conv1.weight"
INPUT_FORMATS = ("BGR", "RGB")


@dataclasses.dataclass(frozen=True)
class Detectron2Options:
    """The detectron2 config values that change the computation but not the tensors."""

    stride_in_1x1: bool = True  # MODEL.RESNETS.STRIDE_IN_1X1
    input_format: str = "BGR"  # INPUT.FORMAT
    pixel_std: tuple = (1.0, 1.0, 1.0)  # MODEL.PIXEL_STD, in input_format's channel order


def _stage(m, s):
    return f"res{int(m.group(s)) + 1}"


# (pattern on a WXinlong/torchvision name, its AdelaiDet name from the match)
_RULES = (
    (r"backbone\.conv1\.weight", lambda m: STEM_CONV),
    (r"backbone\.bn1\.(\w+)", lambda m: f"backbone.bottom_up.stem.conv1.norm.{m[1]}"),
    (
        r"backbone\.layer(\d)\.(\d+)\.conv(\d)\.weight",
        lambda m: f"backbone.bottom_up.{_stage(m, 1)}.{m[2]}.conv{m[3]}.weight",
    ),
    (
        r"backbone\.layer(\d)\.(\d+)\.bn(\d)\.(\w+)",
        lambda m: f"backbone.bottom_up.{_stage(m, 1)}.{m[2]}.conv{m[3]}.norm.{m[4]}",
    ),
    (
        r"backbone\.layer(\d)\.(\d+)\.downsample\.0\.weight",
        lambda m: f"backbone.bottom_up.{_stage(m, 1)}.{m[2]}.shortcut.weight",
    ),
    (
        r"backbone\.layer(\d)\.(\d+)\.downsample\.1\.(\w+)",
        lambda m: f"backbone.bottom_up.{_stage(m, 1)}.{m[2]}.shortcut.norm.{m[3]}",
    ),
    (
        r"neck\.lateral_convs\.(\d)\.conv\.(\w+)",
        lambda m: f"backbone.fpn_lateral{int(m[1]) + 2}.{m[2]}",
    ),
    (r"neck\.fpn_convs\.(\d)\.conv\.(\w+)", lambda m: f"backbone.fpn_output{int(m[1]) + 2}.{m[2]}"),
    (
        r"bbox_head\.(kernel|cate)_convs\.(\d+)\.conv\.weight",
        lambda m: f"ins_head.{m[1]}_tower.{3 * int(m[2])}.weight",
    ),
    (
        r"bbox_head\.(kernel|cate)_convs\.(\d+)\.gn\.(\w+)",
        lambda m: f"ins_head.{m[1]}_tower.{3 * int(m[2]) + 1}.{m[3]}",
    ),
    (r"bbox_head\.solo_(kernel|cate)\.(\w+)", lambda m: f"ins_head.{m[1]}_pred.{m[2]}"),
    (
        r"mask_feat_head\.convs_all_levels\.(\d)\.conv(\d)\.conv\.weight",
        lambda m: f"mask_head.convs_all_levels.{m[1]}.conv{m[2]}.0.weight",
    ),
    (
        r"mask_feat_head\.convs_all_levels\.(\d)\.conv(\d)\.gn\.(\w+)",
        lambda m: f"mask_head.convs_all_levels.{m[1]}.conv{m[2]}.1.{m[3]}",
    ),
    (r"mask_feat_head\.conv_pred\.0\.conv\.weight", lambda m: "mask_head.conv_pred.0.weight"),
    (r"mask_feat_head\.conv_pred\.0\.gn\.(\w+)", lambda m: f"mask_head.conv_pred.1.{m[1]}"),
)


def adelaidet_name(name: str) -> str:
    """A WXinlong/SOLO SOLOv2 tensor name -> AdelaiDet's (ValueError if it has none)."""
    for pattern, rename in _RULES:
        match = re.fullmatch(pattern, name)
        if match:
            return rename(match)
    raise ValueError(f"no AdelaiDet name for the SOLOv2 tensor {name!r}")


def _stem_factors(options: Detectron2Options):
    """(detectron2 input channel of each RGB channel, IMAGENET_STD[r] / PIXEL_STD)."""
    if options.input_format not in INPUT_FORMATS:
        raise ValueError(
            f"INPUT.FORMAT must be one of {INPUT_FORMATS}, got {options.input_format!r}"
        )
    if len(options.pixel_std) != 3 or min(options.pixel_std) <= 0:
        raise ValueError(f"PIXEL_STD needs 3 positive values, got {options.pixel_std}")
    channel = [2, 1, 0] if options.input_format == "BGR" else [0, 1, 2]
    factors = [IMAGENET_STD[r] / options.pixel_std[channel[r]] for r in range(3)]
    return channel, np.asarray(factors, np.float64)


def fold_input_normalization(weight: np.ndarray, options: Detectron2Options) -> np.ndarray:
    """detectron2's stem kernel [O, 3, 7, 7] (input_format order, pixel_std) -> the kernel
    of the same conv on solo-tf's input, RGB normalised by IMAGENET_MEAN / IMAGENET_STD."""
    channel, factors = _stem_factors(options)
    folded = weight[:, channel].astype(np.float64) * factors[None, :, None, None]
    return folded.astype(weight.dtype)


def unfold_input_normalization(weight: np.ndarray, options: Detectron2Options) -> np.ndarray:
    """The inverse of fold_input_normalization (solo-tf's stem kernel -> detectron2's)."""
    channel, factors = _stem_factors(options)
    unfolded = np.empty_like(weight)
    unfolded[:, channel] = (weight.astype(np.float64) / factors[None, :, None, None]).astype(
        weight.dtype
    )
    return unfolded


def model_config(config: cfg.ModelConfig, options: Detectron2Options) -> cfg.ModelConfig:
    """``config`` computing the checkpoint's ResNet: ``stride_in_1x1`` from
    ``options`` for bottlenecks (depth >= 50), False for basic blocks (no 1x1 conv)."""
    stride_in_1x1 = options.stride_in_1x1 and config.backbone_depth >= 50
    return dataclasses.replace(config, stride_in_1x1=stride_in_1x1)


def prepare_state(state: dict, options: Detectron2Options) -> dict:
    """AdelaiDet's state dict with its stem conv folded for solo-tf's input."""
    state = dict(state)
    stem = state.get(STEM_CONV)
    if stem is not None and stem.ndim == 4 and stem.shape[1] == 3:
        state[STEM_CONV] = fold_input_normalization(stem, options)
    return state
