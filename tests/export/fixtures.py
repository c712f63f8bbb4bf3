"""A tiny SOLO model_dir that detects a few instances, test images, and detection matching.

The model (ResNet-18 with narrow stages, 32-channel FPN and head, grids 8/8/6/4/4, inputs
padded to 128 x 128) has random weights, but its last category and mask convs are rescaled
from one probe image so that a handful of cells score high and masks cover about half of
the image with sharp edges: parity tests then compare real detections, not empty outputs.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import tensorflow as tf
from PIL import Image

from solo_tf import config as cfg
from solo_tf import model_dir as model_dir_lib
from solo_tf.data import geometry
from solo_tf.data.label_map import LabelMap
from solo_tf.detector import Detector, one_image
from solo_tf.modeling import factory

GRIDS = (8, 8, 6, 4, 4)
LABEL_MAP = LabelMap(ids=(1, 5, 9), names=("circle", "square", "triangle"))
# Category logits: this spread, with this quantile of the probe's cells at logit 0.
CATE_SPREAD, CATE_QUANTILE = 4.0, 0.99
MASK_SPREAD = 8.0  # std of the mask logits around a zero median
SOLOV2_E = 16  # SOLOv2 mask feature (= kernel) channels
# Original sizes of the test images: wider, taller, square, larger than the input.
IMAGE_SIZES = ((96, 128), (120, 80), (64, 64), (200, 150))


def tiny_config(head_type: str = "vanilla") -> cfg.SOLOConfig:
    return cfg.SOLOConfig(
        model=cfg.ModelConfig(
            num_classes=3,
            backbone_depth=18,
            backbone_filters=(64, 32, 32, 32),
            fpn_channels=32,
            head_type=head_type,
            head_channels=32,
            stacked_convs=1,
            norm_groups=8,
            num_grids=GRIDS,
            mask_feature_channels=SOLOV2_E,  # SOLOv2 only
            mask_feature_mid=16,
        ),
        targets=cfg.TargetConfig(num_grids=GRIDS),
        postprocess=cfg.PostprocessConfig(nms_pre=100, update_threshold=0.3, max_detections=20),
        data=cfg.DataConfig(output_size=(128, 128), eval_short_side=96, max_long_side=128),
    )


# The app-side letterbox padding of the tiny model's TFLite / ONNX files (model_info.json's
# pad_colour): its mean colour.
PAD_COLOUR = geometry.pad_colour(tiny_config().model.input_normalization)


def _mask_convs(model, head_type: str) -> dict:
    """Output name -> the last conv that produces it."""
    head, levels = model.head, range(len(GRIDS))
    if head_type == "vanilla":
        return {f"mask_logits_{level}": head.mask_convs[level] for level in levels}
    if head_type == "solov2":  # no per-cell mask conv: see _sharpen_kernels
        return {}
    return {
        f"mask_{axis}_logits_{level}": head.mask_conv(axis, level)
        for axis in ("x", "y")
        for level in levels
    }


def _rescale(conv, logits: np.ndarray, spread: float, center: np.ndarray) -> None:
    """Makes ``conv``'s outputs ``(logits - center) * spread / std(logits)`` per channel."""
    scale = spread / (logits.std(axis=0) + 1e-6)
    conv.kernel.assign(conv.kernel.numpy() * scale)
    conv.bias.assign((conv.bias.numpy() - center) * scale)


def build_model(config: cfg.SOLOConfig, seed: int = 0):
    """The tiny model, its last category and mask convs rescaled (see the module doc)."""
    tf.keras.utils.set_random_seed(seed)
    model = factory.build_model(config.model)
    rng = np.random.default_rng(seed)
    probe = rng.integers(0, 256, (1, 128, 128, 3)).astype(np.float32)
    outputs = model(probe)
    num_classes = config.model.num_classes
    cate = np.concatenate(
        [
            outputs[f"cate_logits_{level}"].numpy().reshape(-1, num_classes)
            for level in range(len(GRIDS))
        ]
    )
    _rescale(model.head.cate_conv, cate, CATE_SPREAD, np.quantile(cate, CATE_QUANTILE, axis=0))
    for name, conv in _mask_convs(model, config.model.head_type).items():
        logits = outputs[name].numpy().reshape(-1, conv.filters)
        _rescale(conv, logits, MASK_SPREAD, np.median(logits, axis=0))
    if config.model.head_type == "solov2":
        _sharpen_kernels(model, outputs)
    return model


def _sharpen_kernels(model, outputs) -> None:
    """SOLOv2: scales the kernel conv so that the mask logits (kernel . features, no bias)
    of the probe have std ``MASK_SPREAD``."""
    features = outputs["mask_features"].numpy().reshape(-1, SOLOV2_E)
    kernels = np.concatenate(
        [
            outputs[f"kernel_preds_{level}"].numpy().reshape(-1, SOLOV2_E)
            for level in range(len(GRIDS))
        ]
    )
    scale = MASK_SPREAD / ((features @ kernels.T).std() + 1e-6)
    conv = model.head.kernel_conv
    conv.kernel.assign(conv.kernel.numpy() * scale)
    conv.bias.assign(conv.bias.numpy() * scale)


def write_model_dir(model_dir: str, seed: int = 0, head_type: str = "vanilla"):
    """config.json, label_map.json and a checkpoint of the tiny model; returns the model."""
    config = tiny_config(head_type)
    model = build_model(config, seed)
    model_dir_lib.write_metadata(model_dir, config, LABEL_MAP)
    model_dir_lib.save_model(model, model_dir)
    return model


def sample_images(seed: int = 1) -> list[np.ndarray]:
    """uint8 RGB images of ``IMAGE_SIZES``: smooth noise (blocky, then bilinear-resized)."""
    rng = np.random.default_rng(seed)
    images = []
    for height, width in IMAGE_SIZES:
        coarse = rng.integers(0, 256, (height // 8, width // 8, 3)).astype(np.float32)
        smooth = tf.image.resize(coarse, (height, width), "bilinear").numpy()
        images.append(np.clip(smooth, 0, 255).astype(np.uint8))
    return images


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt)
    return buffer.getvalue()


def keras_detector(detector: Detector):
    """``detect(image uint8 [H0, W0, 3]) -> one-image numpy detections`` through
    ``Detector.detect_image`` on the plain path: all mask logits, batched post-processing
    (evaluation and the exports compute only the candidates' masks and post-process image by
    image, which must give the same detections). Masks come back at the padded output size,
    as the exports give them before cropping."""
    detect = detector.detect_fn(per_image=False, lazy_masks=False)

    def run(image):
        padded, image_info = detector.preprocess(image)
        dets = detect(padded[None], image_info[None])
        return one_image({k: v.numpy() for k, v in dets.items()})

    return run


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def assert_same_detections(got: dict, want: dict, score_tol=1e-3, min_iou=0.99, box_tol=1.0):
    """Same count; each wanted detection matched (same class, score within ``score_tol``,
    best mask IoU) to a distinct detection of ``got`` with IoU >= ``min_iou``.

    Matching rather than comparing row by row: tied scores may come out in either order.
    """
    assert len(got["detection_scores"]) == len(want["detection_scores"]), (
        got["detection_scores"],
        want["detection_scores"],
    )
    assert got["detection_masks"].shape[1:] == want["detection_masks"].shape[1:]
    free = set(range(len(got["detection_scores"])))
    for k, score in enumerate(want["detection_scores"]):
        candidates = [
            j
            for j in free
            if got["detection_classes"][j] == want["detection_classes"][k]
            and abs(got["detection_scores"][j] - score) <= score_tol
        ]
        assert candidates, f"no match for detection {k} (score {score:.4f})"
        ious = [mask_iou(got["detection_masks"][j], want["detection_masks"][k]) for j in candidates]
        best = candidates[int(np.argmax(ious))]
        assert max(ious) >= min_iou, f"detection {k}: mask IoU {max(ious):.4f}"
        np.testing.assert_allclose(
            got["detection_boxes"][best], want["detection_boxes"][k], atol=box_tol
        )
        free.remove(best)


# Opens every script run by ``run_without_solo_tf``: the repository (and any editable
# install of it) out of reach, as on a serving machine that has only the exported files.
_ISOLATION = """
import json, os, sys
sys.path = [p for p in sys.path if p and not os.path.isdir(os.path.join(p, "solo_tf"))]
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
try:
    import solo_tf  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("solo_tf is importable in the fresh process")
"""


def run_without_solo_tf(body: str, variables: dict, folder, timeout: int = 300) -> dict:
    """Runs ``body`` (Python source, after ``NAME = value`` lines for ``variables``) in a
    fresh isolated interpreter that cannot import solo_tf; returns the JSON that it prints
    after ``RESULT``."""
    header = "".join(f"{name} = {value!r}\n" for name, value in variables.items())
    script = os.path.join(str(folder), "fresh.py")
    with open(script, "w") as f:
        f.write(header + textwrap.dedent(_ISOLATION) + textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-I", script],
        cwd=str(folder),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])
