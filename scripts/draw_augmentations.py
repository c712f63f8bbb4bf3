"""Draws the training augmentations beyond the paper's into docs/images/augmentations.png.

    .venv/bin/python scripts/draw_augmentations.py [--output docs/images/augmentations.png]

One row per setting (none, then each of photometric jitter, shape jitter, scale jitter and
copy-paste alone, then the demo recipe's combination), the same few training images of the
embedded shapes dataset in every row, each with its instance masks outlined as the loss sees them
(``targets.instance_masks`` at stride 4). Deterministic (seeded); a few seconds on one core.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from solo_tf.config import DataConfig, TargetConfig  # noqa: E402
from solo_tf.data import inputs, shapes  # noqa: E402

BASE = DataConfig(
    short_sides=(320,),
    max_long_side=320,
    eval_short_side=320,
    output_size=(320, 320),
    flip_probability=0.0,
    deterministic=True,
    parallel_calls=1,
    shuffle_buffer=1,
)
ROWS = (
    ("none (the paper: resize, flip)", {}),
    ("photometric_jitter=0.5", {"photometric_jitter": 0.5}),
    ("shape_jitter=1.0", {"shape_jitter": 1.0}),
    ("scale_jitter=0.8,1.25", {"scale_jitter": (0.8, 1.25)}),
    ("copy_paste=1.0", {"copy_paste": 1.0}),
    (
        "photometric 0.5 + shape 1.0 + copy-paste 0.5",
        {"photometric_jitter": 0.5, "shape_jitter": 1.0, "copy_paste": 0.5},
    ),
)


def elements(config: DataConfig, count: int, seed: int) -> list[dict]:
    source = inputs.open_source(config, "train")
    dataset = inputs.train_dataset(
        source, config, TargetConfig(), 1, seed=seed, shuffle=False, repeat=True
    )
    return list(dataset.take(count))


def draw(ax, batch: dict, stride: int) -> None:
    image = np.clip(batch["image"][0].numpy() / 255.0, 0.0, 1.0)
    masks = batch["targets"]["instance_masks"][0].numpy()
    count = int(batch["targets"]["num_instances"][0])
    ax.imshow(image)
    for n in range(count):
        mask = masks[n].repeat(stride, 0).repeat(stride, 1)
        ax.contour(mask, levels=[0.5], colors=[plt.get_cmap("tab10")(n % 10)], linewidths=1.2)
    ax.set_xticks([])
    ax.set_yticks([])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="docs/images/augmentations.png")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=2)
    args = parser.parse_args()
    stride = TargetConfig().mask_stride
    with tempfile.TemporaryDirectory() as work_dir:
        paths = shapes.generate(work_dir, num_train=2 * args.images, num_val=0, seed=args.seed)
        base = dataclasses.replace(
            BASE,
            train_annotations=paths["train_annotations"],
            train_images=paths["train_images"],
        )
        fig, axes = plt.subplots(
            len(ROWS), args.images, figsize=(2.6 * args.images, 2.7 * len(ROWS))
        )
        for row, (title, changes) in zip(axes, ROWS, strict=True):
            config = dataclasses.replace(base, **changes)
            for ax, batch in zip(row, elements(config, args.images, args.seed), strict=True):
                draw(ax, batch, stride)
            row[0].set_ylabel(title, fontsize=8)
    fig.suptitle("Training augmentations (outlines: the instance masks the loss sees)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    fig.savefig(args.output, dpi=80)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
