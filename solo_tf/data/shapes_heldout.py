"""The held-out style of the embedded dataset: the same four categories, drawn by another hand.

``shapes.generate`` writes it as the ``heldout`` split with ``render_heldout_image``. Every
family below is one the train and val splits never show, so a model scored here is scored on
the shapes, not on the generator's style:

- backgrounds (``HELDOUT_BACKGROUNDS``, one per image): a hard-edged checkerboard at a random
  angle, a strong two-colour gradient (linear or radial), a blurred collage of coloured blobs;
- outlines: wobbly or low-poly circles, squares with chamfered, rounded or jittered corners and
  other aspect ratios, triangles of any shape (every angle >= 40 degrees), 5- to 7-pointed
  stars, some with rounded tips;
- fills (``FILLS``): the training look (``shaded``), a two-colour gradient, hard stripes, or
  a thick hollow outline (``stroke``; never for circles, which would be the training ring
  distractor);
- heavier occlusion (an earlier object may keep only ``MIN_VISIBLE_FRACTION`` of itself) and
  more objects per image (up to ``MAX_OBJECTS``);
- distractors of no category: the training ones plus ``HELDOUT_DISTRACTORS`` (arrows,
  crescents, scribbles, text-like glyph rows).

The annotation rules are the training split's: one aliased mask per shape is both what is
painted and what updates the instance-id map, and an annotation is an instance's visible
pixels (a hollow outline's annotation is its stroke), kept when at least
``shapes_render.MIN_VISIBLE_AREA`` pixels.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from solo_tf.data import shapes_render

HELDOUT_BACKGROUNDS = ("checker", "duotone", "collage")
HELDOUT_DISTRACTORS = ("arrow", "crescent", "scribble", "glyphs")
# All distractor kinds of this split and how often each is drawn: new kinds more often.
DISTRACTOR_KINDS = shapes_render.DISTRACTORS + HELDOUT_DISTRACTORS
DISTRACTOR_KIND_PROBS = (0.1,) * len(shapes_render.DISTRACTORS) + (0.15,) * len(HELDOUT_DISTRACTORS)
FILLS = ("shaded", "gradient", "stripes", "stroke")
FILL_PROBS = (0.25, 0.25, 0.2, 0.3)  # "stroke" falls back to "gradient" where not allowed
MIN_VISIBLE_FRACTION = 0.2  # shapes_render.MIN_VISIBLE_FRACTION is 0.35
MIN_OBJECTS, MAX_OBJECTS = 2, 14
DISTRACTOR_PROBABILITY = 0.6
MIN_STROKE_AREA = 2000.0  # nominal pixels; smaller objects are never hollow
MIN_STROKE_PIXELS = 3.5  # thinnest stroke of a hollow outline


@dataclasses.dataclass
class HeldoutImage(shapes_render.RenderedImage):
    """A held-out style image: a RenderedImage plus the families it was drawn with."""

    background: str  # one of HELDOUT_BACKGROUNDS
    fills: list[str]  # [N] the fill of each annotated instance, one of FILLS


# ----------------------------------------------------------------------------------------
# Backgrounds: float32 [H, W, 3].


def _checker(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Two colours in hard-edged cells (often oblong) on a grid turned by a random angle."""
    first = rng.uniform(30, 225, size=3)
    second = shapes_render.far_colour(rng, first, 40, 90)
    angle = rng.uniform(0, math.pi / 2)
    cell_u, cell_v = rng.uniform(8, 48, size=2)
    yy, xx = shapes_render.pixel_coords(h, w)
    u = (math.cos(angle) * xx + math.sin(angle) * yy) / cell_u  # [H, W]
    v = (math.cos(angle) * yy - math.sin(angle) * xx) / cell_v
    odd = ((np.floor(u) + np.floor(v)) % 2)[..., None]  # [H, W, 1]
    return (first + odd * (second - first)).astype(np.float32)


def _duotone(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A strong gradient between two distant colours, linear or radial, full image."""
    first = rng.uniform(0, 255, size=3)
    second = shapes_render.far_colour(rng, first, 150, 250)
    y, x = shapes_render._coords(h, w)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * math.pi)
        ramp = math.cos(angle) * x + math.sin(angle) * y  # [H, W]
    else:
        cy, cx = rng.uniform(-1, 1, size=2)
        ramp = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    t = (ramp - ramp.min()) / (ramp.max() - ramp.min())
    t = t ** rng.uniform(0.5, 2.0)
    return (first + t[..., None] * (second - first)).astype(np.float32)


def _collage(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Out-of-focus blobs: random ellipses and irregular polygons, blurred like a photo."""
    image = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(30, 226, size=3)))
    draw = ImageDraw.Draw(image)
    side = min(h, w)
    for _ in range(int(rng.integers(10, 25))):
        radius = rng.uniform(0.05, 0.35) * side
        if rng.random() < 0.5:
            unit = shapes_render._regular(24, 1.0) * np.array([1.0, rng.uniform(0.3, 1.0)])
        else:
            angles = np.sort(rng.uniform(0, 2 * math.pi, size=int(rng.integers(5, 10))))
            unit = rng.uniform(0.4, 1.0, size=(len(angles), 1)) * np.stack(
                [np.cos(angles), np.sin(angles)], axis=1
            )
        points = shapes_render._rotate(unit * radius, rng.uniform(0, math.pi))
        points = points + rng.uniform((0, 0), (w, h))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.polygon([(float(px), float(py)) for px, py in points], fill=colour)
    blurred = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.015, 0.03) * side))
    return np.asarray(blurred, dtype=np.float32).copy()


_BACKGROUND_FUNCTIONS = {"checker": _checker, "duotone": _duotone, "collage": _collage}


def heldout_background(rng: np.random.Generator, h: int, w: int) -> tuple[str, np.ndarray]:
    """(family, float32 [H, W, 3]) of one held-out background, one family per image."""
    family = HELDOUT_BACKGROUNDS[int(rng.integers(len(HELDOUT_BACKGROUNDS)))]
    return family, _BACKGROUND_FUNCTIONS[family](rng, h, w)


# ----------------------------------------------------------------------------------------
# Outlines: unit-sized vertices [V, 2] as (x, y), centred on the origin.


def round_corners(vertices: np.ndarray, fraction: float, steps: int) -> np.ndarray:
    """Cuts every corner: the `fraction` of both edges next to a vertex becomes a quadratic
    Bezier curve of `steps` segments through that corner's control point (1: a chamfer).

    vertices [V, 2] -> [V * (steps + 1), 2]; fraction in (0, 0.5].
    """
    before = vertices + (np.roll(vertices, 1, axis=0) - vertices) * fraction  # [V, 2]
    after = vertices + (np.roll(vertices, -1, axis=0) - vertices) * fraction
    t = np.linspace(0.0, 1.0, steps + 1)[:, None, None]  # [T, 1, 1]
    curve = (1 - t) ** 2 * before + 2 * (1 - t) * t * vertices + t**2 * after  # [T, V, 2]
    return curve.transpose(1, 0, 2).reshape(-1, 2)


def _corners(rng: np.random.Generator, vertices: np.ndarray, max_round: float):
    """Chamfers or rounds the corners, or leaves them sharp, with equal odds."""
    style = int(rng.integers(3))
    if style == 0:
        return vertices
    if style == 1:  # a small cut: larger ones turn a square into an octagon
        return round_corners(vertices, rng.uniform(0.05, 0.1), 1)
    return round_corners(vertices, rng.uniform(0.08, max_round), 6)


def _circle(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:  # drawn by hand: a radius that wobbles a little
        angles = np.arange(64) * (2 * math.pi / 64)
        radius = np.ones(64)
        for k in (2, 3, 4):
            radius += rng.uniform(0, 0.03) * np.cos(k * angles + rng.uniform(0, 2 * math.pi))
        circle = radius[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    else:  # low-poly
        circle = shapes_render._regular(int(rng.integers(16, 25)), 1.0, start=rng.uniform(0, 1))
    return circle * np.array([1.0, rng.uniform(0.85, 1.0)])


def _square(rng: np.random.Generator) -> np.ndarray:
    square = np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    square *= np.array([1.0, rng.uniform(0.8, 1.0)])
    square += rng.normal(0, rng.uniform(0, 0.06), size=square.shape)
    return _corners(rng, square, 0.35)


def _triangle(rng: np.random.Generator) -> np.ndarray:
    """Any triangle whose angles are all at least 40 degrees."""
    a = rng.uniform(40, 100) * math.pi / 180
    b = rng.uniform(40, 140 - a * 180 / math.pi) * math.pi / 180
    side = math.sin(b) / math.sin(math.pi - a - b)  # from the first corner, law of sines
    triangle = np.array([[0.0, 0.0], [1.0, 0.0], [side * math.cos(a), side * math.sin(a)]])
    return _corners(rng, triangle - triangle.mean(axis=0), 0.25)


def _star(rng: np.random.Generator) -> np.ndarray:
    points = int(rng.choice([5, 6, 7], p=[0.5, 0.3, 0.2]))
    outer = shapes_render._regular(points, 1.0)
    inner = shapes_render._regular(points, rng.uniform(0.35, 0.55), start=math.pi / points)
    star = np.stack([outer, inner], axis=1).reshape(-1, 2)
    star *= rng.uniform(0.92, 1.08, size=(len(star), 1))
    star *= np.array([1.0, rng.uniform(0.8, 1.0)])
    return round_corners(star, rng.uniform(0.08, 0.2), 3) if rng.random() < 0.4 else star


_OUTLINES = {"circle": _circle, "triangle": _triangle, "square": _square, "star": _star}


def _polygon_centroid(vertices: np.ndarray) -> np.ndarray:
    x, y = vertices[:, 0], vertices[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y  # [V]
    cx = np.sum((x + np.roll(x, -1)) * cross) / (3 * cross.sum())
    return np.array([cx, np.sum((y + np.roll(y, -1)) * cross) / (3 * cross.sum())])


def heldout_outline(rng: np.random.Generator, name: str) -> np.ndarray:
    """Unit-sized vertices [V, 2] of one category in the held-out style, centred."""
    vertices = _OUTLINES[name](rng)
    return vertices - _polygon_centroid(vertices)


# ----------------------------------------------------------------------------------------
# Distractors: unit-sized (vertices, fill) parts.


def _arrow(rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    shaft, head = rng.uniform(0.05, 0.1), rng.uniform(0.25, 0.4)
    neck = 1.0 - rng.uniform(0.3, 0.45)
    arrow = [[-1, -shaft], [neck, -shaft], [neck, -head], [1, 0], [neck, head], [neck, shaft]]
    return [(np.array(arrow + [[-1, shaft]], dtype=np.float64), 1)]


def _crescent(rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    angles = np.linspace(-math.pi / 2, math.pi / 2, 33)
    outer = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    inner = outer[::-1] * np.array([rng.uniform(0.2, 0.6), 1.0])
    return [(np.concatenate([outer, inner[1:-1]]), 1)]


def _scribble(rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """A thick random-walk stroke: one quadrilateral per segment, an octagon per joint."""
    turns = np.cumsum(rng.uniform(-1.6, 1.6, size=int(rng.integers(5, 11))))
    steps = rng.uniform(0.3, 0.6, size=(len(turns), 1)) * np.stack(
        [np.cos(turns), np.sin(turns)], axis=1
    )
    path = np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])
    path = (path - path.mean(axis=0)) / np.abs(path - path.mean(axis=0)).max()
    half = rng.uniform(0.03, 0.06)
    parts = []
    for start, end in zip(path[:-1], path[1:], strict=True):
        along = (end - start) / max(np.linalg.norm(end - start), 1e-6)
        side = np.array([-along[1], along[0]]) * half
        parts.append((np.stack([start + side, end + side, end - side, start - side]), 1))
    parts += [(shapes_render._regular(8, half) + point, 1) for point in path[1:-1]]
    return parts


def _glyphs(rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """A row of 3 to 7 blocky letters, each two or three bars of a 0.8 x 1.2 cell."""
    bar = 0.18
    bars = {  # (x0, y0, x1, y1) in the cell
        "left": (0, 0, bar, 1.2),
        "right": (0.8 - bar, 0, 0.8, 1.2),
        "centre": (0.4 - bar / 2, 0, 0.4 + bar / 2, 1.2),
        "top": (0, 0, 0.8, bar),
        "middle": (0, 0.6 - bar / 2, 0.8, 0.6 + bar / 2),
        "bottom": (0, 1.2 - bar, 0.8, 1.2),
    }
    names = list(bars)
    count = int(rng.integers(3, 8))
    parts = []
    for i in range(count):
        for name in rng.choice(names, size=int(rng.integers(2, 4)), replace=False):
            x0, y0, x1, y1 = bars[name]
            x0, x1 = x0 + 1.1 * i, x1 + 1.1 * i
            parts.append((np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]), 1))
    width = 1.1 * count - 0.3
    return [((v - [width / 2, 0.6]) * (2 / width), fill) for v, fill in parts]


_NEW_DISTRACTORS = {"arrow": _arrow, "crescent": _crescent, "scribble": _scribble}
_NEW_DISTRACTORS["glyphs"] = _glyphs


def distractor_parts(rng: np.random.Generator, kind: str) -> list[tuple[np.ndarray, int]]:
    """Unit-sized (vertices, fill) parts of one distractor of DISTRACTOR_KINDS."""
    if kind in _NEW_DISTRACTORS:
        return _NEW_DISTRACTORS[kind](rng)
    return shapes_render._distractor_parts(rng, kind)


# ----------------------------------------------------------------------------------------
# Fills and the image


class _HeldoutCanvas(shapes_render._Canvas):
    """The training canvas with heavier occlusion, more fills, and each instance's fill."""

    def __init__(self, background: np.ndarray, family: str):
        super().__init__(background, min_visible_fraction=MIN_VISIBLE_FRACTION)
        self.family = family
        self.fills = [""]  # index = instance id

    def _texture(self, rng, y0: int, x0: int, mask: np.ndarray, fill: str):
        if fill in ("shaded", "stroke"):  # a hollow outline is painted like a solid shape
            return super()._texture(rng, y0, x0, mask, "shaded")
        first = self._pick_colour(rng, y0, x0, mask)
        second = self._second_colour(rng, y0, x0, mask, first)
        angle = rng.uniform(0, math.pi)
        yy, xx = shapes_render.pixel_coords(*mask.shape)
        ramp = math.cos(angle) * xx + math.sin(angle) * yy  # [h', w'] in pixels
        if fill == "gradient":
            t = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1.0)
        elif fill == "stripes":
            t = np.floor(ramp / rng.uniform(3, 9)) % 2
        else:
            raise ValueError(f"unknown fill {fill!r}")
        texture = first.astype(np.float32) + t[..., None] * (second - first).astype(np.float32)
        return first + t[mask].mean() * (second - first), texture

    def _paint(self, rng, y0: int, x0: int, mask: np.ndarray, category_id: int, fill: str):
        super()._paint(rng, y0, x0, mask, category_id, fill)
        if category_id > 0:
            self.fills.append(fill)

    def result(self) -> HeldoutImage:
        base = super().result()
        fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
        fills = [self.fills[k] for k in self.kept()]
        return HeldoutImage(**fields, background=self.family, fills=fills)


def _scaled_outline(rng: np.random.Generator, unit: np.ndarray, area: float, fill: str):
    """(parts, in-image area) of an outline scaled to cover `area`, hollow for "stroke"."""
    scale = math.sqrt(area / shapes_render._polygon_area(unit))
    vertices = shapes_render._rotate(unit * scale, rng.uniform(0, 2 * math.pi))
    if fill != "stroke":
        return [(vertices, 1)], area
    # Shrinking towards the centroid leaves a stroke about `thickness` of the radius wide.
    thickness = max(rng.uniform(0.15, 0.3), MIN_STROKE_PIXELS / math.sqrt(area / math.pi))
    return [(vertices, 1), (vertices * (1 - thickness), 0)], area * (1 - (1 - thickness) ** 2)


def _random_heldout_shape(rng: np.random.Generator, item: int, h: int, w: int):
    """(parts, area, category id or 0, fill) of item: a category index, or -1 - distractor."""
    if item >= 0:
        name = shapes_render.CATEGORIES[item]["name"]
        unit = heldout_outline(rng, name)
        area = shapes_render._object_area(rng, h, w)
        fill = str(rng.choice(FILLS, p=FILL_PROBS))
        if fill == "stroke" and (name == "circle" or area < MIN_STROKE_AREA):
            fill = "gradient"
        return *_scaled_outline(rng, unit, area, fill), shapes_render.CATEGORIES[item]["id"], fill
    unit = distractor_parts(rng, DISTRACTOR_KINDS[-1 - item])
    area = shapes_render._log_uniform(
        rng, 300.0, min(15000.0, shapes_render.MAX_OBJECT_FRACTION * h * w)
    )
    fill = FILLS[int(rng.integers(3))]  # never hollow
    return *shapes_render._scaled_parts(rng, unit, area), 0, fill


def render_heldout_image(
    rng: np.random.Generator, min_size: int = 256, max_size: int = 512
) -> HeldoutImage:
    """Draws one held-out style image with MIN_OBJECTS to MAX_OBJECTS shapes attempted."""
    while True:
        h, w = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
        if h != w or min_size == max_size:
            break
    while True:  # in the rare case nothing visible was placed, draw the scene again
        family, background = heldout_background(rng, h, w)
        canvas = _HeldoutCanvas(background, family)
        count = rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1)
        items = list(rng.integers(0, len(shapes_render.CATEGORIES), size=count))
        if rng.random() < DISTRACTOR_PROBABILITY:
            kinds = rng.choice(
                len(DISTRACTOR_KINDS), size=rng.integers(1, 5), p=DISTRACTOR_KIND_PROBS
            )
            items += list(-1 - kinds)
        for i in rng.permutation(len(items)):
            canvas.place(rng, *_random_heldout_shape(rng, int(items[i]), h, w))
        rendered = canvas.result()
        if rendered.category_ids:
            return rendered
