"""Draws augmented training images with their SOLO targets into docs/images/targets.png.

    .venv/bin/python scripts/draw_targets.py [--output docs/images/targets.png] [--images 3]

One row per image: the augmented, padded input with its stride-4 instance masks
(``targets.instance_masks``, what the mask loss sees), then one panel per FPN level with the
S x S grid and the positive cells (``cate_targets >= 0``) filled in the colour of the instance
they predict (``mask_indices``). Data: a few images of the embedded shapes dataset
(``solo_tf.data.shapes``), resized with the shapes preset below and the default grids and
scale ranges. A few seconds on one CPU core.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from solo_tf.config import DataConfig, TargetConfig  # noqa: E402
from solo_tf.data import (
    inputs,  # noqa: E402
    shapes,  # noqa: E402
)

# The shapes preset (images 256-512 px a side): short side 320..448, padded to 512 x 512.
SHAPES_DATA = DataConfig(
    short_sides=(320, 352, 384, 416, 448),
    max_long_side=512,
    eval_short_side=448,
    output_size=(512, 512),
    deterministic=True,
    parallel_calls=1,
)


def load_batches(num_images: int, seed: int, work_dir: str) -> list[dict]:
    """``num_images`` training elements (batch 1) of freshly generated shapes images."""
    paths = shapes.generate(work_dir, num_train=num_images, num_val=0, seed=seed)
    config = DataConfig(
        **{
            **SHAPES_DATA.__dict__,
            "seed": seed,
            "train_annotations": paths["train_annotations"],
            "train_images": paths["train_images"],
        }
    )
    source = inputs.open_source(config, "train")
    dataset = inputs.train_dataset(
        source, config, TargetConfig(), batch_size=1, shuffle=False, repeat=False
    )
    return [{k: _numpy(v) for k, v in b.items()} for b in dataset.take(num_images)]


def _numpy(value):
    if isinstance(value, dict):
        return {k: v.numpy()[0] for k, v in value.items()}
    return value.numpy()[0]


def colour(index: int) -> np.ndarray:
    return np.array(plt.get_cmap("tab10")(index % 10)[:3])


def draw_row(axes, element: dict, target_config: TargetConfig) -> None:
    image = element["image"] / 255.0  # [H, W, 3]
    height, width = image.shape[:2]
    targets = element["targets"]
    stride = target_config.mask_stride
    # Grey image, so that the instance colours cannot be mistaken for the shapes' own colours.
    overlay = np.repeat(image.mean(axis=2, keepdims=True), 3, axis=2)
    for n in range(int(targets["num_instances"])):
        mask = targets["instance_masks"][n].repeat(stride, 0).repeat(stride, 1).astype(bool)
        overlay[mask] = 0.3 * overlay[mask] + 0.7 * colour(n)
    scaled_h, scaled_w = element["image_info"][1]
    axes[0].imshow(overlay)
    axes[0].set_title(f"image {element['image_id']}: {int(scaled_h)}x{int(scaled_w)} in 512x512")
    offset = 0
    for level, num_grid in enumerate(target_config.num_grids):
        cells = slice(offset, offset + num_grid * num_grid)
        index = targets["mask_indices"][cells].reshape(num_grid, num_grid)
        offset += num_grid * num_grid
        panel = 0.35 * image + 0.65
        cell_h, cell_w = height / num_grid, width / num_grid
        for i, j in zip(*np.nonzero(index >= 0), strict=True):
            rows = slice(int(round(i * cell_h)), int(round((i + 1) * cell_h)))
            cols = slice(int(round(j * cell_w)), int(round((j + 1) * cell_w)))
            panel[rows, cols] = colour(int(index[i, j]))
        ax = axes[level + 1]
        ax.imshow(panel)
        for k in range(num_grid + 1):
            ax.axhline(k * cell_h - 0.5, color="0.6", lw=0.3)
            ax.axvline(k * cell_w - 0.5, color="0.6", lw=0.3)
        low, high = target_config.scale_ranges[level]
        ax.set_title(f"level {level}: S={num_grid}, {low}-{high} px, {(index >= 0).sum()} pos")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="docs/images/targets.png")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    target_config = TargetConfig()
    with tempfile.TemporaryDirectory() as work_dir:
        elements = load_batches(args.images, args.seed, work_dir)
    columns = 1 + len(target_config.num_grids)
    fig, axes = plt.subplots(len(elements), columns, figsize=(3.2 * columns, 3.6 * len(elements)))
    axes = np.asarray(axes).reshape(len(elements), columns)
    for row, element in zip(axes, elements, strict=True):
        draw_row(row, element, target_config)
    fig.suptitle(
        "SOLO targets: stride-4 instance masks, then positive cells per level (colour = instance)"
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    fig.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
