"""The embedded synthetic dataset: coloured shapes on textured backgrounds, in COCO format.

Run it as ``python -m solo_tf.data.shapes --output_dir DIR`` or call ``generate``. It writes

  DIR/train/000001.png ...          DIR/annotations/instances_train.json
  DIR/val/000001.png ...            DIR/annotations/instances_val.json
  DIR/heldout/000001.png ...        DIR/annotations/instances_heldout.json

The held-out split has the same categories drawn in another style (other backgrounds,
outlines, fills, distractors and heavier occlusion; see ``shapes_heldout``), so that a model
can be scored on shapes its training split never showed in that style.

Four categories (``CATEGORIES``): circle, triangle, square, star. Each image (256 to 512 px a
side by default, never square) holds 1 to 12 of them with random colours, rotations and
scales; the scale is drawn per object from COCO's small / medium / large area ranges so each
range holds a fair share of instances. Later shapes occlude earlier ones and about 30% of the
images also carry distractors (ellipses, crosses, lines, rings) that are drawn, never
annotated, and may occlude real objects too.

With ``train_variety=p`` (``--train_variety``; off by default and in ``make demo``; README:
the run with 0.5) the train split, and
only it, also takes other looks, each with probability p (``shapes_render.VARIED_*``):
hard-edged mosaic or bar backgrounds, blotched, dotted, banded or bordered two-colour fills,
polygons stretched and sheared at constant area, and more distractors. None of these is a
family of the held-out style; val stays in the plain style, so val AP means the same with or
without them.

Labels are exact: every shape is rasterised once, without anti-aliasing, into a mask, and that
same mask is what gets painted and what updates a per-pixel instance-id map. An annotation is
the instance's visible pixels in that map (compressed RLE), so occlusion, truncation at the
border and the box ``[x, y, w, h]`` all follow from one array. Images are PNG so the painted
pixels stay exactly where the labels say (JPEG would smear colour across mask borders).

Determinism: image ``i`` of split ``s`` uses its own ``numpy.random.Generator`` seeded with
``(seed, split_code, i)``, and PNGs are written with fixed settings: same seed, same bytes.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from solo_tf.data import shapes_heldout
from solo_tf.data.shapes_render import (  # noqa: F401  (re-exported: the dataset's description)
    BACKGROUNDS,
    CATEGORIES,
    DISTRACTORS,
    MAX_OBJECTS,
    MIN_VISIBLE_AREA,
    MIN_VISIBLE_FRACTION,
    RenderedImage,
    render_image,
)

SPLIT_CODES = {"train": 0, "val": 1, "heldout": 2}
PNG_COMPRESS_LEVEL = 1  # fast; the noise textures barely compress at higher levels anyway


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: independent of every other image, split and seed."""
    return np.random.default_rng([seed, SPLIT_CODES[split], index])


def _annotations(rendered: RenderedImage, image_id: int) -> list[dict]:
    """COCO annotations of one image's instances, without ids (numbered per split)."""
    annotations = []
    for mask, category_id in zip(rendered.masks, rendered.category_ids, strict=True):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        x, y = int(cols[0]), int(rows[0])
        annotations.append(
            {
                "image_id": image_id,
                "category_id": int(category_id),
                "segmentation": {
                    "size": [int(v) for v in rle["size"]],
                    "counts": rle["counts"].decode("ascii"),
                },
                "area": int(mask.sum()),
                "bbox": [x, y, int(cols[-1]) - x + 1, int(rows[-1]) - y + 1],
                "iscrowd": 0,
            }
        )
    return annotations


def _renderer(split: str, train_variety: float):
    """The render function of a split: rng, min_size, max_size -> a RenderedImage."""
    if split == "heldout":
        return shapes_heldout.render_heldout_image
    variety = train_variety if split == "train" else 0.0
    return lambda rng, low, high: render_image(rng, low, high, variety)


def _render_and_save(job: tuple) -> tuple[dict, list[dict]]:
    """Renders image `index` of a split and writes its PNG: (image entry, annotations without
    ids; the caller numbers them across the split). A module-level function of plain
    arguments, so that worker processes run it."""
    image_dir, split, index, seed, min_size, max_size, train_variety = job
    rendered = _renderer(split, train_variety)(image_rng(seed, split, index), min_size, max_size)
    image_id = index + 1
    file_name = f"{image_id:06d}.png"
    Image.fromarray(rendered.image).save(
        os.path.join(image_dir, file_name), format="PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    h, w = rendered.image.shape[:2]
    image = {"id": image_id, "file_name": file_name, "height": h, "width": w, "license": 1}
    return image, _annotations(rendered, image_id)


def _write_split(
    output_dir, split, num_images, seed, min_size, max_size, train_variety=0.0, workers=1
) -> tuple[str, str, int]:
    """Renders and writes one split; returns (annotation file, image folder, instances).
    With workers > 1 the images are drawn by that many processes; every image has its own
    generator, so the bytes do not depend on the number of workers."""
    image_dir = os.path.join(output_dir, split)
    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    jobs = [
        (image_dir, split, i, seed, min_size, max_size, train_variety) for i in range(num_images)
    ]
    progress = {"desc": f"shapes {split}", "unit": "img", "total": num_images}
    with contextlib.ExitStack() as stack:
        if workers > 1 and num_images > 1:
            # spawn, not fork: the caller may hold TensorFlow's threads, which fork can deadlock.
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(workers))
            results = pool.imap(_render_and_save, jobs, chunksize=8)
        else:
            results = map(_render_and_save, jobs)
        for image, image_annotations in tqdm(results, **progress):
            images.append(image)
            for annotation in image_annotations:
                annotations.append({"id": len(annotations) + 1, **annotation})
    coco = {
        "info": {
            "description": f"solo-tf synthetic shapes, {split} split",
            "version": "1.0",
            "seed": seed,
            "min_size": min_size,
            "max_size": max_size,
            "variety": train_variety if split == "train" else 0.0,
        },
        "licenses": [{"id": 1, "name": "Generated by solo_tf.data.shapes", "url": ""}],
        "images": images,
        "annotations": annotations,
        "categories": CATEGORIES,
    }
    annotation_file = os.path.join(output_dir, "annotations", f"instances_{split}.json")
    os.makedirs(os.path.dirname(annotation_file), exist_ok=True)
    with open(annotation_file, "w") as f:
        json.dump(coco, f, separators=(",", ":"))
    return annotation_file, image_dir, len(annotations)


def generate(
    output_dir: str,
    num_train: int = 600,
    num_val: int = 100,
    seed: int = 0,
    min_size: int = 256,
    max_size: int = 512,
    num_heldout: int = 0,
    train_variety: float = 0.0,
    workers: int = 1,
) -> dict:
    """Writes the train, val and held-out splits under output_dir; returns paths and counts.

    Keys: ``train_annotations``, ``train_images``, ``val_annotations``, ``val_images`` (as in
    ``DataConfig``), ``num_train``, ``num_val`` (images), ``num_train_instances``,
    ``num_val_instances``, and with ``num_heldout > 0`` the same four ``heldout_`` /
    ``_heldout`` keys. The train and val bytes do not depend on ``num_heldout``. The command line
    writes 100 held-out images by default; this function none unless asked (tests stay fast).
    ``train_variety`` draws the train split with ``shapes_render``'s extra looks (VARIED_*)
    at that probability; val stays in the plain style, so its AP stays comparable.
    ``workers`` processes draw the images (same bytes for any number).
    """
    if min(seed, num_train, num_val, num_heldout) < 0:
        raise ValueError("seed, num_train, num_val and num_heldout must be >= 0")
    if not 0.0 <= train_variety <= 1.0:
        raise ValueError(f"train_variety must be in [0, 1], got {train_variety}")
    if not 32 <= min_size <= max_size:
        raise ValueError(f"need 32 <= min_size <= max_size, got {min_size}, {max_size}")
    result = {}
    splits = [("train", num_train), ("val", num_val)]
    if num_heldout > 0:
        splits.append(("heldout", num_heldout))
    for split, count in splits:
        annotations, images, instances = _write_split(
            output_dir, split, count, seed, min_size, max_size, train_variety, workers
        )
        result[f"{split}_annotations"] = annotations
        result[f"{split}_images"] = images
        result[f"num_{split}"] = count
        result[f"num_{split}_instances"] = instances
    return result


def main(argv):
    """Command line: flags -> generate(); prints the returned paths and counts."""
    del argv
    from absl import flags

    f = flags.FLAGS
    result = generate(
        f.output_dir,
        f.num_train,
        f.num_val,
        f.seed,
        f.min_size,
        f.max_size,
        f.num_heldout,
        f.train_variety,
        f.workers or os.cpu_count() or 1,
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    # Flags are defined here only, so importing this module from another entry point adds none.
    from absl import app, flags

    flags.DEFINE_string("output_dir", None, "Where to write the image folders and annotations/.")
    flags.DEFINE_integer("num_train", 600, "Training images.")
    flags.DEFINE_integer("num_val", 100, "Validation images.")
    flags.DEFINE_integer("num_heldout", 100, "Held-out style validation images (0: none).")
    flags.DEFINE_integer("seed", 0, "Dataset seed: same seed, same bytes.")
    flags.DEFINE_integer("min_size", 256, "Smallest image side in pixels.")
    flags.DEFINE_integer("max_size", 512, "Largest image side in pixels.")
    flags.DEFINE_float(
        "train_variety",
        0.0,
        "Probability of each of the train split's extra looks (hard-edged backgrounds, "
        "textured fills, stretched polygons; shapes_render.VARIED_*). 0: the plain style.",
    )
    flags.DEFINE_integer("workers", 0, "Processes drawing images (0: one per CPU core).")
    flags.mark_flag_as_required("output_dir")
    app.run(main)
