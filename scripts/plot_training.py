"""Plots a run's TensorBoard scalars (losses, lr, throughput) into a PNG.

Usage: ``python scripts/plot_training.py --model_dir runs/demo/model --output PNG``
"""

from __future__ import annotations

import argparse
import collections
import glob
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import tensorflow as tf  # noqa: E402

PANELS = (
    ("losses", ("losses/loss", "losses/loss_cate", "losses/loss_mask")),
    ("learning rate", ("learning_rate",)),
    ("images / s", ("throughput/images_per_s",)),
    ("positive cells per level", tuple(f"positives/level_{i}" for i in range(5))),
)


def read_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from every event file under ``log_dir``."""
    series = collections.defaultdict(list)
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                number = (
                    float(tf.make_ndarray(value.tensor))
                    if value.HasField("tensor")
                    else value.simple_value
                )
                series[value.tag].append((event.step, number))
    return {tag: sorted(points) for tag, points in series.items()}


def plot(series, output: str, title: str) -> None:
    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    for ax, (name, tags) in zip(axes, PANELS, strict=True):
        for tag in tags:
            if tag in series:
                steps, values = zip(*series[tag], strict=True)
                ax.plot(steps, values, label=tag.split("/")[-1])
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    fig.savefig(output, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--title", default="solo-tf training")
    args = parser.parse_args()
    series = read_scalars(os.path.join(args.model_dir, "train"))
    if not series:
        raise SystemExit(f"no TensorBoard scalars under {args.model_dir}/train")
    plot(series, args.output, args.title)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
