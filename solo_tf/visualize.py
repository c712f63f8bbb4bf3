"""Drawing detections on images: one colour per instance, class name and score."""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def instance_colours(count: int) -> np.ndarray:
    """``count`` well-separated RGB colours (golden-ratio hues), uint8 [count, 3]."""
    hues = (np.arange(count) * 0.618033988749895) % 1.0
    return np.array(
        [[int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 0.95)] for h in hues], np.uint8
    ).reshape(count, 3)


def draw_detections(
    image: np.ndarray,
    masks: np.ndarray,
    classes: np.ndarray,
    scores: np.ndarray,
    names: dict[int, str],
    alpha: float = 0.5,
) -> Image.Image:
    """Overlays masks [N, H, W] (0/1) with labels ``name score`` on an RGB uint8 image."""
    canvas = image.astype(np.float32).copy()
    colours = instance_colours(len(masks))
    for mask, colour in zip(masks, colours, strict=True):
        on = mask.astype(bool)
        canvas[on] = (1 - alpha) * canvas[on] + alpha * colour
        canvas[_outline(on)] = colour
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for mask, colour, cls, score in zip(masks, colours, classes, scores, strict=True):
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            continue
        text = f"{names.get(int(cls), str(int(cls)))} {float(score):.2f}"
        x, y = int(xs.min()), max(int(ys.min()) - 11, 0)
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        draw.rectangle(
            (left - 1, top - 1, right + 1, bottom + 1), fill=tuple(int(c) for c in colour)
        )
        draw.text((x, y), text, fill=(0, 0, 0), font=font)
    return picture


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner
