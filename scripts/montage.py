"""Tiles PNG overlays (``solo_tf.predict`` output) into one picture for the docs.

Usage: ``python scripts/montage.py --inputs 'runs/demo/predictions/*.png' --output PNG``
"""

from __future__ import annotations

import argparse
import glob

from PIL import Image


def montage(files: list[str], columns: int, cell: int) -> Image.Image:
    rows = (len(files) + columns - 1) // columns
    canvas = Image.new("RGB", (columns * cell, rows * cell), (255, 255, 255))
    for index, path in enumerate(files):
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((cell, cell))
            row, col = divmod(index, columns)
            canvas.paste(image, (col * cell, row * cell))
    return canvas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inputs", required=True, help="glob of PNG files")
    parser.add_argument("--output", required=True)
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--columns", type=int, default=3)
    parser.add_argument("--cell", type=int, default=420)
    args = parser.parse_args()
    files = sorted(glob.glob(args.inputs))[: args.count]
    if not files:
        raise SystemExit(f"no file matches {args.inputs!r}")
    montage(files, args.columns, args.cell).save(args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
