"""The training style of the embedded shapes dataset: categories, backgrounds, outlines and
the canvas that paints shapes and keeps exact masks (``render_image``).

``shapes`` (splits, annotations, files, the command line) and ``shapes_heldout`` (the held-out
style, built from these parts) both import this module; see ``shapes`` for the description.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CATEGORIES = [
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 2, "name": "triangle", "supercategory": "shape"},
    {"id": 3, "name": "square", "supercategory": "shape"},
    {"id": 4, "name": "star", "supercategory": "shape"},
]
DISTRACTORS = ("ellipse", "cross", "line", "ring")
BACKGROUNDS = ("gradient", "stripes", "blotches", "noise")  # train and val only
# The training split's extra looks (``render_image(..., variety=p)``; ``shapes.generate``
# applies them to the train split only, never to val). No family here is one the held-out style
# uses: they widen what a category looks like in training without showing the held-out look.
VARIED_BACKGROUNDS = ("mosaic", "bars")  # hard-edged, unlike the smooth BACKGROUNDS
VARIED_FILLS = ("blotched", "dotted", "banded", "bordered")  # besides "shaded"
MAX_LOG_STRETCH = 0.25  # a varied polygon's aspect is exp(+-this), area kept
MAX_SHEAR = 0.25

MAX_OBJECTS = 12
MIN_VISIBLE_AREA = 16  # pixels; smaller visible parts are not annotated
# A placement is refused when it would leave an earlier object less than this fraction of
# its own pixels, or keep less than MIN_IN_IMAGE_FRACTION of itself inside the image.
MIN_VISIBLE_FRACTION = 0.35
MIN_IN_IMAGE_FRACTION = 0.6
PLACEMENT_TRIES = 12
DISTRACTOR_PROBABILITY = 0.3
# Nominal (unoccluded) object area ranges in pixels, around COCO's 32^2 and 96^2 limits,
# and how often each is drawn. Occlusion moves some instances down a range, hence the
# larger share of large objects.
AREA_RANGES = ((100.0, 1000.0), (1100.0, 9000.0), (9800.0, 70000.0))
AREA_RANGE_PROBS = (0.32, 0.34, 0.34)
MAX_OBJECT_FRACTION = 0.3  # of the image area
# Contrast: an object's base colour keeps this RGB distance from the mean background under
# it and from the colour of every object it covers.
MIN_BACKGROUND_DISTANCE = 110.0
MIN_OBJECT_DISTANCE = 80.0


@dataclasses.dataclass
class RenderedImage:
    """One generated image with its visible instance masks (N instances)."""

    image: np.ndarray  # uint8 [H, W, 3]
    masks: np.ndarray  # bool [N, H, W], visible part, pairwise disjoint
    category_ids: list[int]  # [N]
    full_areas: list[int]  # [N] in-image pixels of each shape before occlusion
    num_distractors: int  # unannotated shapes drawn


# ----------------------------------------------------------------------------------------
# Backgrounds


def _coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates normalised to [-1, 1]: (y [H, 1], x [1, W])."""
    y = np.linspace(-1, 1, h, dtype=np.float32)[:, None]
    return y, np.linspace(-1, 1, w, dtype=np.float32)[None, :]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Blotchy noise in about [-1, 1]: a coarse random grid upsampled bilinearly, [H, W, 3]."""
    coarse = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.uint8)
    big = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
    return np.asarray(big, dtype=np.float32) / 127.5 - 1.0


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A textured background, float32 [H, W, 3]: a base colour plus a mix of textures."""
    y, x = _coords(h, w)
    image = np.broadcast_to(rng.uniform(30, 225, size=3).astype(np.float32), (h, w, 3)).copy()
    # One or more smooth textures, sometimes pixel noise on top. Pixel noise is kept to a
    # minority of images: it is what makes PNGs big.
    smooth = BACKGROUNDS[:3]
    chosen = [k for k in smooth if rng.random() < 0.5] or [smooth[rng.integers(len(smooth))]]
    if rng.random() < 0.35:
        chosen.append("noise")
    for kind in chosen:
        amplitude = rng.uniform(-1, 1, size=3).astype(np.float32)
        amplitude *= rng.uniform(0.6, 1.0) / np.abs(amplitude).max()  # never near zero
        if kind == "gradient":
            angle = rng.uniform(0, 2 * math.pi)
            ramp = math.cos(angle) * x + math.sin(angle) * y  # [H, W]
            image += ramp[..., None] * amplitude * 35.0
        elif kind == "stripes":
            angle = rng.uniform(0, math.pi)
            freq = rng.uniform(4, 30)
            phase = rng.uniform(0, 2 * math.pi)
            wave = np.sin(freq * (math.cos(angle) * x + math.sin(angle) * y) + phase)
            image += wave[..., None] * amplitude * 20.0
        elif kind == "blotches":
            image += _smooth_noise(rng, h, w, int(rng.integers(3, 12))) * np.abs(amplitude) * 25.0
        else:
            image += rng.normal(0, rng.uniform(2, 8), size=(h, w, 1)).astype(np.float32)
    return image


def pixel_coords(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row and column indices, float32 (y [H, 1], x [1, W])."""
    return np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]


def far_colour(rng: np.random.Generator, colour: np.ndarray, low: float, high: float):
    """A colour at an RGB distance in [low, high] from colour, inside [0, 255]: the first of a
    few random directions that clipping leaves at least 95% of the distance, else the best."""
    distance = rng.uniform(low, high)
    best, best_distance = colour, -1.0
    for _ in range(8):
        direction = rng.normal(size=3)
        candidate = np.clip(colour + direction * (distance / np.linalg.norm(direction)), 0, 255)
        reached = float(np.linalg.norm(candidate - colour))
        if reached >= 0.95 * distance:
            return candidate
        if reached > best_distance:
            best, best_distance = candidate, reached
    return best


def _mosaic(rng: np.random.Generator, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """Hard-edged cells of a Voronoi tiling, each one of 2 to 4 colours near the base."""
    palette = np.stack([base] + [far_colour(rng, base, 25, 70) for _ in range(rng.integers(1, 4))])
    seeds = rng.uniform((0, 0), (h, w), size=(int(rng.integers(6, 40)), 2))
    cell_colours = palette[rng.integers(len(palette), size=len(seeds))]
    yy, xx = pixel_coords(h, w)
    nearest = np.zeros((h, w), np.int32)
    best = np.full((h, w), np.inf, np.float32)
    for k, (sy, sx) in enumerate(seeds):
        distance = (yy - sy) ** 2 + (xx - sx) ** 2
        closer = distance < best
        nearest[closer], best[closer] = k, distance[closer]
    return cell_colours[nearest].astype(np.float32)


def _bars(rng: np.random.Generator, h: int, w: int, base: np.ndarray) -> np.ndarray:
    """Hard-edged parallel bars of two colours at a random angle, period and duty cycle."""
    second = far_colour(rng, base, 25, 70)
    angle, period, duty = rng.uniform(0, math.pi), rng.uniform(8, 60), rng.uniform(0.3, 0.7)
    yy, xx = pixel_coords(h, w)
    on = (((math.cos(angle) * xx + math.sin(angle) * yy) / period) % 1.0 < duty)[..., None]
    return np.where(on, second, base).astype(np.float32)


def varied_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """One of VARIED_BACKGROUNDS with a little grain, float32 [H, W, 3]."""
    kind = VARIED_BACKGROUNDS[int(rng.integers(len(VARIED_BACKGROUNDS)))]
    base = rng.uniform(30, 225, size=3)
    image = _mosaic(rng, h, w, base) if kind == "mosaic" else _bars(rng, h, w, base)
    return image + rng.normal(0, rng.uniform(0, 3), size=(h, w, 1)).astype(np.float32)


# ----------------------------------------------------------------------------------------
# Shapes: each is a list of (vertices [V, 2] as (x, y) around the origin, fill 0/1) plus
# its nominal area.


def _regular(n: int, radius: float, start: float = 0.0) -> np.ndarray:
    angles = start + np.arange(n) * (2 * math.pi / n)
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _polygon_area(vertices: np.ndarray) -> float:
    x, y = vertices[:, 0], vertices[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _rotate(vertices: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return vertices @ np.array([[c, s], [-s, c]])


def _category_outline(rng: np.random.Generator, name: str) -> np.ndarray:
    """Unit-sized vertices [V, 2] of one category's shape, before scale and rotation."""
    if name == "circle":
        return _regular(64, 1.0)
    if name == "square":
        return np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    if name == "triangle":
        tri = _regular(3, 1.0, start=-math.pi / 2)
        return tri * np.array([rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15)])
    if name == "star":
        points = 5
        outer = _regular(points, 1.0, start=-math.pi / 2)
        inner = _regular(points, rng.uniform(0.38, 0.55), start=-math.pi / 2 + math.pi / points)
        return np.stack([outer, inner], axis=1).reshape(-1, 2)
    raise ValueError(f"unknown category {name!r}")


def stretch_and_shear(vertices: np.ndarray, log_stretch: float, shear: float) -> np.ndarray:
    """Vertices [V, 2] stretched along x by exp(log_stretch), squeezed along y by the same
    factor, then sheared (x += shear * y): an area-preserving affine map."""
    stretch = math.exp(log_stretch)
    return vertices @ np.array([[stretch, 0.0], [shear / stretch, 1.0 / stretch]])


def _distractor_parts(rng: np.random.Generator, kind: str) -> list[tuple[np.ndarray, int]]:
    """Unit-sized (vertices, fill) parts of one distractor, before scale and rotation."""
    if kind == "ellipse":  # elongated enough never to pass for a circle
        return [(_regular(48, 1.0) * np.array([1.0, rng.uniform(0.25, 0.6)]), 1)]
    if kind == "cross":
        a = rng.uniform(0.18, 0.35)
        arm = [[a, a], [1, a], [1, -a], [a, -a], [a, -1], [-a, -1]]
        arm += [[-a, -a], [-1, -a], [-1, a], [-a, a], [-a, 1], [a, 1]]
        return [(np.array(arm, dtype=np.float64), 1)]
    if kind == "line":
        half_width = rng.uniform(0.03, 0.08)
        bar = [[-1, -half_width], [1, -half_width], [1, half_width], [-1, half_width]]
        return [(np.array(bar, dtype=np.float64), 1)]
    if kind == "ring":
        return [(_regular(48, 1.0), 1), (_regular(48, rng.uniform(0.55, 0.8)), 0)]
    raise ValueError(f"unknown distractor {kind!r}")


def _scaled_parts(
    rng: np.random.Generator, parts: list[tuple[np.ndarray, int]], area: float
) -> tuple[list[tuple[np.ndarray, int]], float]:
    """Scales unit parts to a nominal area and rotates them at random."""
    unit_area = sum(_polygon_area(v) * (1 if fill else -1) for v, fill in parts)
    scale = math.sqrt(area / unit_area)
    angle = rng.uniform(0, 2 * math.pi)
    return [(_rotate(v * scale, angle), fill) for v, fill in parts], area


def _rasterize(
    parts: list[tuple[np.ndarray, int]], h: int, w: int
) -> tuple[int, int, np.ndarray] | None:
    """Aliased rasterisation of absolute parts inside the image: (y0, x0, bool [h', w'])."""
    points = np.concatenate([v for v, _ in parts])
    x0, y0 = (max(0, math.floor(points[:, i].min())) for i in (0, 1))
    x1, y1 = min(w, math.ceil(points[:, 0].max()) + 1), min(h, math.ceil(points[:, 1].max()) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    crop = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(crop)
    for vertices, fill in parts:
        draw.polygon([(float(px - x0), float(py - y0)) for px, py in vertices], fill=fill)
    return y0, x0, np.asarray(crop, dtype=bool)


def fill_pattern(rng: np.random.Generator, fill: str, mask: np.ndarray) -> np.ndarray:
    """Where a VARIED_FILLS fill takes its second colour: float32 [h', w'] in [0, 1] over the
    mask's window (0: the first colour). ``mask`` is the shape's bool [h', w'] window."""
    hh, ww = mask.shape
    yy, xx = pixel_coords(hh, ww)
    if fill == "blotched":  # soft two-colour camouflage
        noise = _smooth_noise(rng, hh, ww, int(rng.integers(2, 6)))[..., 0]
        return np.clip(noise * 1.5 + 0.5, 0.0, 1.0)
    if fill == "dotted":  # round dots on a turned square grid
        spacing = rng.uniform(5, 12)
        radius = rng.uniform(0.25, 0.42)
        angle = rng.uniform(0, math.pi / 2)
        u = (math.cos(angle) * xx + math.sin(angle) * yy) / spacing
        v = (math.cos(angle) * yy - math.sin(angle) * xx) / spacing
        return (((u - np.round(u)) ** 2 + (v - np.round(v)) ** 2) < radius**2).astype(np.float32)
    if fill == "banded":  # hard concentric bands around the shape's centre
        rows, cols = np.nonzero(mask)
        distance = np.sqrt((yy - rows.mean()) ** 2 + (xx - cols.mean()) ** 2)
        return (np.floor(distance / rng.uniform(3, 9)) % 2).astype(np.float32)
    if fill == "bordered":  # a solid shape with an inner rim of the second colour
        radius = math.sqrt(mask.sum() / math.pi)
        width = int(np.clip(round(rng.uniform(0.1, 0.25) * radius), 1, 8))
        padded = Image.fromarray(np.pad(mask, width).astype(np.uint8) * 255)
        inner = np.asarray(padded.filter(ImageFilter.MinFilter(2 * width + 1)))
        inner = inner[width:-width, width:-width] > 0
        return (mask & ~inner).astype(np.float32)
    raise ValueError(f"unknown fill {fill!r}")


# ----------------------------------------------------------------------------------------
# The canvas: the painted image and the instance-id map painted by the same masks.


class _Canvas:
    """Paints shapes in order and keeps a per-pixel id of the topmost annotated instance."""

    def __init__(self, background: np.ndarray, min_visible_fraction: float = MIN_VISIBLE_FRACTION):
        self.image = background  # float32 [H, W, 3]
        self.min_visible_fraction = min_visible_fraction
        self.h, self.w = background.shape[:2]
        self.ids = np.zeros((self.h, self.w), np.int32)  # 0: background or distractor
        self.full_areas = [0]  # index = instance id
        self.visible = [0]
        self.colours = [np.zeros(3)]
        self.categories = [0]
        self.num_distractors = 0

    def _fits(self, y0: int, x0: int, mask: np.ndarray) -> bool:
        """Whether painting the mask leaves every earlier instance visible enough."""
        covered = self.ids[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]][mask]
        counts = np.bincount(covered, minlength=len(self.full_areas))
        for k in np.flatnonzero(counts[1:]) + 1:
            left = self.visible[k] - counts[k]
            if left < max(MIN_VISIBLE_AREA, self.min_visible_fraction * self.full_areas[k]):
                return False
        return True

    def _pick_colour(self, rng: np.random.Generator, y0: int, x0: int, mask: np.ndarray):
        """A base colour far enough from the background and the objects it covers."""
        window = (slice(y0, y0 + mask.shape[0]), slice(x0, x0 + mask.shape[1]))
        under = self.image[window][mask].mean(axis=0)
        covered = [self.colours[k] for k in np.unique(self.ids[window][mask]) if k > 0]
        best, best_margin = None, -np.inf
        for _ in range(30):
            colour = rng.uniform(0, 255, size=3)
            margin = min(
                [np.linalg.norm(colour - under) - MIN_BACKGROUND_DISTANCE]
                + [np.linalg.norm(colour - c) - MIN_OBJECT_DISTANCE for c in covered]
            )
            if margin >= 0:
                return colour
            if margin > best_margin:
                best, best_margin = colour, margin
        return best

    def place(
        self, rng: np.random.Generator, parts, area: float, category_id: int, fill: str = "shaded"
    ) -> bool:
        """Tries random positions for one shape; paints it at the first that fits."""
        for _ in range(PLACEMENT_TRIES):
            centre = rng.uniform((0, 0), (self.w, self.h))
            drawn = _rasterize([(v + centre, fill) for v, fill in parts], self.h, self.w)
            if drawn is None:
                continue
            y0, x0, mask = drawn
            in_image = int(mask.sum())
            if in_image < max(MIN_VISIBLE_AREA, MIN_IN_IMAGE_FRACTION * area):
                continue
            if not self._fits(y0, x0, mask):
                continue
            self._paint(rng, y0, x0, mask, category_id, fill)
            return True
        return False

    def _second_colour(self, rng, y0: int, x0: int, mask: np.ndarray, first: np.ndarray):
        """A colour 50-110 away from the first that keeps the background contrast."""
        window = (slice(y0, y0 + mask.shape[0]), slice(x0, x0 + mask.shape[1]))
        under = self.image[window][mask].mean(axis=0)
        for _ in range(20):
            colour = far_colour(rng, first, 50, 110)
            if np.linalg.norm(colour - under) >= 0.8 * MIN_BACKGROUND_DISTANCE:
                return colour
        return first

    def _texture(self, rng, y0: int, x0: int, mask: np.ndarray, fill: str):
        """(base colour [3], float32 [h', w', 3] to paint under the mask) of one fill style."""
        if fill in VARIED_FILLS:
            first = self._pick_colour(rng, y0, x0, mask)
            second = self._second_colour(rng, y0, x0, mask, first)
            t = fill_pattern(rng, fill, mask)[..., None]  # [h', w', 1] in [0, 1]
            texture = first + t * (second - first)
            return first + t[mask].mean() * (second - first), texture.astype(np.float32)
        if fill != "shaded":
            raise ValueError(f"unknown fill {fill!r}")
        colour = self._pick_colour(rng, y0, x0, mask)
        hh, ww = mask.shape
        # A mild shading across the shape and a little grain, so colour is not all there is.
        y, x = _coords(hh, ww)
        angle = rng.uniform(0, 2 * math.pi)
        shade = (math.cos(angle) * x + math.sin(angle) * y) * rng.uniform(0, 20)  # [h', w']
        grain = rng.normal(0, rng.uniform(0, 4), size=(hh, ww, 1))
        return colour, (colour + shade[..., None] + grain).astype(np.float32)

    def _paint(self, rng, y0: int, x0: int, mask: np.ndarray, category_id: int, fill: str):
        colour, texture = self._texture(rng, y0, x0, mask, fill)
        window = (slice(y0, y0 + mask.shape[0]), slice(x0, x0 + mask.shape[1]))
        self.image[window][mask] = texture[mask]
        ids = self.ids[window]
        if category_id > 0:
            new_id = len(self.full_areas)
            self.full_areas.append(int(mask.sum()))
            self.visible.append(int(mask.sum()))
            self.colours.append(colour)
            self.categories.append(category_id)
        else:
            new_id = 0
            self.num_distractors += 1
        counts = np.bincount(ids[mask], minlength=len(self.visible))
        for k in np.flatnonzero(counts[1:]) + 1:
            self.visible[k] -= int(counts[k])
        ids[mask] = new_id

    def kept(self) -> list[int]:
        """Ids of the instances whose visible part is large enough to annotate."""
        return [k for k in range(1, len(self.full_areas)) if self.visible[k] >= MIN_VISIBLE_AREA]

    def result(self) -> RenderedImage:
        """The uint8 image and the instances whose visible part is large enough."""
        keep = self.kept()
        masks = (
            np.stack([self.ids == k for k in keep]) if keep else np.zeros((0, self.h, self.w), bool)
        )
        return RenderedImage(
            image=np.clip(np.rint(self.image), 0, 255).astype(np.uint8),
            masks=masks,
            category_ids=[self.categories[k] for k in keep],
            full_areas=[self.full_areas[k] for k in keep],
            num_distractors=self.num_distractors,
        )


# ----------------------------------------------------------------------------------------
# Images and COCO files


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(max(low, high)))))


def _object_area(rng: np.random.Generator, h: int, w: int) -> float:
    """A nominal object area: first one of the three ranges, then log-uniform inside it."""
    low, high = AREA_RANGES[rng.choice(len(AREA_RANGES), p=AREA_RANGE_PROBS)]
    high = min(high, MAX_OBJECT_FRACTION * h * w)
    return _log_uniform(rng, min(low, high), high)


def _random_shape(rng: np.random.Generator, item: int, h: int, w: int, variety: float = 0.0):
    """(parts, nominal area, category id or 0, fill) of item: a category index, or -1 -
    distractor. With probability `variety` each of the outline (polygons only: a stretched
    circle would be the ellipse distractor) and the fill takes a varied look."""
    fill = "shaded"
    if variety > 0 and rng.random() < variety:
        fill = VARIED_FILLS[int(rng.integers(len(VARIED_FILLS)))]
    if item >= 0:
        name = CATEGORIES[item]["name"]
        outline = _category_outline(rng, name)
        if variety > 0 and name != "circle" and rng.random() < variety:
            log_stretch, shear = rng.uniform(
                (-MAX_LOG_STRETCH, -MAX_SHEAR), (MAX_LOG_STRETCH, MAX_SHEAR)
            )
            outline = stretch_and_shear(outline, log_stretch, shear)
        parts, area = _scaled_parts(rng, [(outline, 1)], _object_area(rng, h, w))
        return parts, area, CATEGORIES[item]["id"], fill
    unit = _distractor_parts(rng, DISTRACTORS[-1 - item])
    area = _log_uniform(rng, 200.0, min(15000.0, MAX_OBJECT_FRACTION * h * w))
    return *_scaled_parts(rng, unit, area), 0, fill


def render_image(
    rng: np.random.Generator, min_size: int = 256, max_size: int = 512, variety: float = 0.0
):
    """Draws one image with 1 to MAX_OBJECTS annotated shapes; returns a RenderedImage.

    variety: the probability of each of the training split's extra looks (a VARIED_BACKGROUNDS
    background per image; a VARIED_FILLS fill and a stretched and sheared polygon per shape)
    and the extra chance of distractors (DISTRACTOR_PROBABILITY + 0.3 x variety). At 0 the
    random draws, hence the bytes, are the plain style's.
    """
    if not 0.0 <= variety <= 1.0:
        raise ValueError(f"variety must be in [0, 1], got {variety}")
    while True:
        h, w = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
        if h != w or min_size == max_size:
            break
    while True:  # in the rare case nothing visible was placed, draw the scene again
        if variety > 0 and rng.random() < variety:
            canvas = _Canvas(varied_background(rng, h, w))
        else:
            canvas = _Canvas(_background(rng, h, w))
        items = list(rng.integers(0, len(CATEGORIES), size=rng.integers(1, MAX_OBJECTS + 1)))
        if rng.random() < DISTRACTOR_PROBABILITY + 0.3 * variety:
            items += list(-1 - rng.integers(0, len(DISTRACTORS), size=rng.integers(1, 5)))
        for i in rng.permutation(len(items)):
            canvas.place(rng, *_random_shape(rng, int(items[i]), h, w, variety))
        rendered = canvas.result()
        if rendered.category_ids:
            return rendered
