"""CocoReader: decoded examples, image modes, segmentation kinds and every bad-input case."""

import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from solo_tf.data import errors
from solo_tf.data.coco import CocoReader
from solo_tf.images import decode_image_bytes
from tests.data import fixtures


@pytest.fixture
def tiny(tmp_path):
    return fixtures.write_tiny_coco(str(tmp_path))


def collect(dataset) -> dict[int, dict]:
    return {int(ex["image_id"]): {k: v.numpy() for k, v in ex.items()} for ex in dataset}


def edit_json(tiny, edit):
    """Applies ``edit(data)`` to the tiny dataset's JSON in place."""
    data = fixtures.read_json(tiny.annotation_file)
    edit(data)
    fixtures.write_json(tiny.annotation_file, data)


def annotation(data, ann_id):
    return next(a for a in data["annotations"] if a["id"] == ann_id)


def image(data, image_id):
    return next(i for i in data["images"] if i["id"] == image_id)


# The decoded example.


def test_dataset_yields_the_expected_examples(tiny):
    reader = CocoReader(tiny.annotation_file, tiny.image_dir)
    assert reader.image_ids == [1, 2, 3, 4] and reader.num_images == 4
    got = collect(reader.dataset(deterministic=True))
    assert sorted(got) == [1, 2, 3, 4]
    for image_id, expected in tiny.expected.items():
        for key, value in expected.items():
            if value is None:
                continue
            assert got[image_id][key].dtype == np.asarray(value).dtype, (image_id, key)
            np.testing.assert_array_equal(got[image_id][key], value, err_msg=f"{image_id} {key}")
    grey = got[2]["image"]  # greyscale JPEG: lossy, but grey on every channel
    assert grey.shape == (20, 24, 3)
    assert (grey == grey[..., :1]).all() and np.abs(grey.astype(int) - 128).max() <= 2


def test_square_polygon_covers_exactly_its_100_pixels(tiny):
    example = CocoReader(tiny.annotation_file, tiny.image_dir).load(0)
    square = example["masks"][0]  # annotation 101: polygon (5,5)-(15,15) in a 30x40 image
    assert square.sum() == 100
    rows, cols = np.nonzero(square)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (5, 14, 5, 14)


def test_classes_are_contiguous_indices_and_crowds_are_kept(tiny):
    reader = CocoReader(tiny.annotation_file, tiny.image_dir)
    assert reader.label_map.ids == (3, 7, 90)
    got = collect(reader.dataset())
    np.testing.assert_array_equal(got[1]["classes"], [0, 2])  # car, zebra
    np.testing.assert_array_equal(got[2]["classes"], [1, 0])  # train (crowd), car
    np.testing.assert_array_equal(got[2]["is_crowd"], [True, False])
    assert got[2]["masks"][0].sum() == 4 * 7  # the uncompressed-RLE crowd box
    assert got[1]["masks"][1].sum() == 5 * 8  # the compressed-RLE box
    assert got[3]["masks"].shape == (0, 16, 16)  # the empty image is kept by default


def test_element_spec_matches_the_contract(tiny):
    spec = CocoReader(tiny.annotation_file, tiny.image_dir).dataset().element_spec
    assert {k: (v.dtype, v.shape.as_list()) for k, v in spec.items()} == {
        "image": (tf.uint8, [None, None, 3]),
        "masks": (tf.uint8, [None, None, None]),
        "classes": (tf.int32, [None]),
        "is_crowd": (tf.bool, [None]),
        "image_id": (tf.int64, []),
        "original_size": (tf.int32, [2]),
    }


def test_multi_part_polygon_is_the_union_of_its_parts(tiny):
    edit_json(
        tiny,
        lambda d: annotation(d, 202).update(
            segmentation=[fixtures.square_polygon(1, 10, 4), fixtures.square_polygon(10, 10, 4)]
        ),
    )
    masks = CocoReader(tiny.annotation_file, tiny.image_dir).load(1)["masks"]
    expected = fixtures.box_mask(20, 24, 10, 1, 14, 5) | fixtures.box_mask(20, 24, 10, 10, 14, 14)
    np.testing.assert_array_equal(masks[1], expected)


def test_shuffle_with_a_seed_is_reproducible_and_complete(tiny):
    reader = CocoReader(tiny.annotation_file, tiny.image_dir)
    orders = [
        [int(ex["image_id"]) for ex in reader.dataset(shuffle=True, seed=3, deterministic=True)]
        for _ in range(2)
    ]
    assert orders[0] == orders[1] and sorted(orders[0]) == [1, 2, 3, 4]


def test_skip_empty_drops_images_without_non_crowd_objects(tiny):
    edit_json(tiny, lambda d: d["annotations"].remove(annotation(d, 202)))  # 2: crowd only
    reader = CocoReader(tiny.annotation_file, tiny.image_dir, skip_empty=True)
    assert reader.image_ids == [1, 4]
    assert sorted(collect(reader.dataset())) == [1, 4]
    assert not reader.skipped  # an option, not bad input


def test_coco_object_and_paths_for_evaluation(tiny):
    reader = CocoReader(tiny.annotation_file, tiny.image_dir, skip_empty=True)
    assert reader.annotation_file == tiny.annotation_file
    assert reader.coco.getAnnIds(imgIds=[1]) == [101, 102]
    assert sorted(reader.coco.getImgIds()) == [1, 2, 3, 4]  # the whole file, unfiltered


def test_compressed_rle_runs_match_the_uncompressed_runs():
    rng = np.random.default_rng(0)
    for shape in [(1, 1), (7, 5), (40, 31)]:
        mask = (rng.random(shape) < 0.3).astype(np.uint8)
        compressed = fixtures.compressed_rle(mask)["counts"]
        assert errors.rle_counts(compressed) == fixtures.uncompressed_rle(mask)["counts"]
        assert sum(errors.rle_counts(compressed)) == mask.size


def test_polygon_checks():
    assert errors.polygon_area(fixtures.square_polygon(5, 5, 10)) == 100.0
    assert errors.polygon_area([0, 0, 0, 4, 3, 0]) == -6.0  # the sign follows the winding
    polygons = [[0, 0, 4, 0, 4, 4], [1, 1, 2, 2], [0, 0, 1, 1, 3, 3]]
    assert errors.degenerate_polygons(polygons) == {1: "2 points", 2: "zero area"}


# Image modes: all become RGB uint8.


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _palette_image() -> tuple[Image.Image, np.ndarray]:
    indices = np.array([[0, 1, 2], [3, 2, 1]], np.uint8)
    colors = np.array([[10, 20, 30], [40, 50, 60], [200, 0, 100], [255, 255, 0]], np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(colors.flatten().tolist())
    return image, colors[indices]


PIXELS = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 13
GREY = np.array([[0, 1, 127], [128, 254, 255]], np.uint8)
GREY16 = np.array([[0, 255, 256], [25700, 65280, 65535]], np.uint16)
GREY16_AS_8 = np.array([[0, 0, 1], [100, 255, 255]], np.uint8)  # the high byte
# CMYK JPEG: 16x16 blocks of red, green, blue, white, black; block centres are exact.
BLOCK_COLORS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0]])
BLOCKS = np.repeat(np.repeat(BLOCK_COLORS[None].astype(np.uint8), 16, 0), 16, 1)


@pytest.mark.parametrize(
    "make, expected",
    [
        ("L png", np.repeat(GREY[..., None], 3, -1)),
        ("LA png", np.repeat(GREY[..., None], 3, -1)),
        ("RGB png", PIXELS),
        ("RGBA png", PIXELS),
        ("P png", _palette_image()[1]),
        ("I;16 png", np.repeat(GREY16_AS_8[..., None], 3, -1)),
        ("RGB bmp", PIXELS),
        ("P gif", _palette_image()[1]),
        ("I;16 tiff", np.repeat(GREY16_AS_8[..., None], 3, -1)),
    ],
)
def test_lossless_modes_decode_to_exact_rgb(make, expected):
    mode, fmt = make.split()
    if mode == "L":
        image = Image.fromarray(GREY)
    elif mode == "LA":
        image = Image.fromarray(np.dstack([GREY, np.full_like(GREY, 9)]), mode="LA")
    elif mode == "RGBA":
        image = Image.fromarray(np.dstack([PIXELS, np.full(PIXELS.shape[:2], 3, np.uint8)]))
    elif mode == "P":
        image = _palette_image()[0]
    elif mode == "I;16":
        image = Image.fromarray(GREY16)
        assert image.mode == "I;16"
    else:
        image = Image.fromarray(PIXELS)
    decoded = decode_image_bytes(_encode(image, fmt.upper()))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, expected)


def test_cmyk_jpeg_decodes_to_rgb():
    data = _encode(Image.fromarray(BLOCKS).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    decoded = decode_image_bytes(data)
    assert decoded.shape == (16, 80, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded[8, 8::16], BLOCK_COLORS)


def test_greyscale_jpeg_is_replicated_on_three_channels():
    grey = np.full([16, 16], 200, np.uint8)
    decoded = decode_image_bytes(_encode(Image.fromarray(grey), "JPEG", quality=95))
    assert decoded.shape == (16, 16, 3)
    assert (decoded == decoded[..., :1]).all() and np.abs(decoded.astype(int) - 200).max() <= 1


# Bad input. Structure and ids: always a ValueError naming the file (and the annotation).


@pytest.mark.parametrize("policy", ["error", "skip"])
@pytest.mark.parametrize(
    "contents, words",
    [
        ("[1, 2]", ["top level must be a JSON object"]),
        ('{"images": [], "categories": []}', ["missing key 'annotations'"]),
        ('{"images": [], "annotations": [], "categories": {}}', ["'categories' must be a list"]),
        ("{not json", ["not valid JSON"]),
    ],
)
def test_malformed_json_names_the_file_and_key(tmp_path, policy, contents, words):
    path = tmp_path / "instances.json"
    path.write_text(contents)
    with pytest.raises(ValueError) as error:
        CocoReader(str(path), str(tmp_path), bad_sample_policy=policy)
    for word in [str(path)] + words:
        assert word in str(error.value)


@pytest.mark.parametrize("policy", ["error", "skip"])
@pytest.mark.parametrize(
    "key, value, words",
    [
        ("image_id", 77, ["annotation id 102", "image id 77"]),
        ("category_id", 5, ["annotation id 102", "category id 5"]),
    ],
)
def test_annotation_with_unknown_ids_names_the_file_and_annotation(tiny, policy, key, value, words):
    edit_json(tiny, lambda d: annotation(d, 102).update({key: value}))
    with pytest.raises(ValueError) as error:
        CocoReader(tiny.annotation_file, tiny.image_dir, bad_sample_policy=policy)
    for word in [tiny.annotation_file] + words:
        assert word in str(error.value)


def test_duplicate_ids_and_unknown_policy_are_rejected(tiny):
    edit_json(tiny, lambda d: annotation(d, 102).update(id=101))
    with pytest.raises(ValueError, match="annotations holds id 101 twice"):
        CocoReader(tiny.annotation_file, tiny.image_dir)
    with pytest.raises(ValueError, match="bad_sample_policy"):
        CocoReader(tiny.annotation_file, tiny.image_dir, bad_sample_policy="ignore")


# Segmentations, checked in __init__: BadSampleError, or skipped and counted.

EMPTY_RLE = fixtures.compressed_rle(np.zeros([30, 40], np.uint8))
SEGMENTATION_CASES = {
    # name: (annotation id, new segmentation, reason, words in the message)
    "two points": (101, [[5, 5, 15, 5]], "degenerate_polygon", ["polygon #0", "2 points"]),
    "zero area": (101, [[0, 0, 5, 5, 10, 10]], "degenerate_polygon", ["zero area"]),
    "RLE size": (
        102,
        fixtures.compressed_rle(np.ones([31, 40], np.uint8)),
        "mask_size_mismatch",
        ["RLE size [31, 40]", "[30, 40]"],
    ),
    "RLE length": (
        102,
        {"size": [30, 40], "counts": [600, 700]},
        "mask_size_mismatch",
        ["cover 1300 pixels", "1200"],
    ),
    "bad RLE string": (
        102,
        {"size": [30, 40], "counts": "0~~"},
        "bad_segmentation",
        ["invalid RLE counts"],
    ),
    "not a segmentation": (102, "a string", "bad_segmentation", ["unsupported segmentation"]),
}


@pytest.mark.parametrize("case", sorted(SEGMENTATION_CASES))
def test_bad_segmentation_error_names_file_and_ids(tiny, case):
    ann_id, segmentation, reason, words = SEGMENTATION_CASES[case]
    edit_json(tiny, lambda d: annotation(d, ann_id).update(segmentation=segmentation))
    with pytest.raises(errors.BadSampleError) as error:
        CocoReader(tiny.annotation_file, tiny.image_dir)
    assert error.value.reason == reason
    message = str(error.value)
    for word in [tiny.annotation_file, f"annotation id {ann_id}", "image id 1", "rgb.png"] + words:
        assert word in message


@pytest.mark.parametrize("case", sorted(SEGMENTATION_CASES))
def test_bad_segmentation_is_skipped_and_counted(tiny, case):
    ann_id, segmentation, reason, _ = SEGMENTATION_CASES[case]
    edit_json(tiny, lambda d: annotation(d, ann_id).update(segmentation=segmentation))
    reader = CocoReader(tiny.annotation_file, tiny.image_dir, bad_sample_policy="skip")
    assert reader.skipped == {reason: 1}
    got = collect(reader.dataset())
    if reason == "degenerate_polygon":  # that annotation goes, the image stays
        np.testing.assert_array_equal(got[1]["classes"], [2])
        np.testing.assert_array_equal(got[1]["masks"], tiny.expected[1]["masks"][1:])
    else:  # the image could hold unlabelled pixels: it goes
        assert sorted(got) == [2, 3, 4]


def test_degenerate_part_of_a_polygon_is_dropped_alone(tiny):
    parts = [fixtures.square_polygon(12, 10, 8), [1, 1, 2, 2]]
    edit_json(tiny, lambda d: annotation(d, 202).update(segmentation=parts))
    with pytest.raises(errors.BadSampleError, match="annotation id 202.*polygon #1"):
        CocoReader(tiny.annotation_file, tiny.image_dir)
    reader = CocoReader(tiny.annotation_file, tiny.image_dir, bad_sample_policy="skip")
    np.testing.assert_array_equal(reader.load(1)["masks"], tiny.expected[2]["masks"])
    assert reader.skipped == {"degenerate_polygon": 1}


# Image files and masks, checked while decoding.


def _remove(path):
    os.remove(path)


def _truncate(path):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def _not_an_image(path):
    with open(path, "w") as f:
        f.write("this is not an image\n")


DECODE_CASES = {
    # name: (image id, file, file edit, json edit, reason, words)
    "missing file": (4, "rgba.png", _remove, None, "missing_file", ["not found"]),
    "truncated png": (1, "rgb.png", _truncate, None, "undecodable_image", ["cannot decode"]),
    "truncated jpeg": (2, "grey.jpg", _truncate, None, "undecodable_image", ["cannot decode"]),
    "not an image": (3, "palette.png", _not_an_image, None, "undecodable_image", ["not an image"]),
    "size mismatch": (
        4,
        "rgba.png",
        None,
        lambda d: image(d, 4).update(width=21),
        "image_size_mismatch",
        ["12x20", "12x21"],
    ),
    "empty mask": (
        1,
        "rgb.png",
        None,
        lambda d: annotation(d, 102).update(segmentation=EMPTY_RLE),
        "empty_mask",
        ["annotation id 102", "covers no pixel"],
    ),
}


def _apply_decode_case(tiny, case):
    image_id, file_name, file_edit, json_edit, reason, words = DECODE_CASES[case]
    if file_edit:
        file_edit(os.path.join(tiny.image_dir, file_name))
    if json_edit:
        edit_json(tiny, json_edit)
    return image_id, file_name, reason, words


@pytest.mark.parametrize("case", sorted(DECODE_CASES))
def test_bad_file_or_mask_error_names_file_and_id(tiny, case):
    image_id, file_name, reason, words = _apply_decode_case(tiny, case)
    reader = CocoReader(tiny.annotation_file, tiny.image_dir)
    expected = [os.path.join(tiny.image_dir, file_name), f"image id {image_id}"] + words
    with pytest.raises(errors.BadSampleError) as error:  # direct call
        reader.load(reader.image_ids.index(image_id))
    assert error.value.reason == reason
    for word in expected:
        assert word in str(error.value)
    with pytest.raises(tf.errors.OpError) as error:  # through tf.data
        list(reader.dataset())
    for word in expected:
        assert word in str(error.value)


@pytest.mark.parametrize("case", sorted(DECODE_CASES))
def test_bad_file_or_mask_is_skipped_and_counted(tiny, case):
    image_id, _, reason, _ = _apply_decode_case(tiny, case)
    reader = CocoReader(tiny.annotation_file, tiny.image_dir, bad_sample_policy="skip")
    for _ in range(2):  # counted once however often it is decoded
        got = collect(reader.dataset())
    assert reader.skipped == {reason: 1}
    if reason == "empty_mask":  # only the annotation goes
        np.testing.assert_array_equal(got[image_id]["classes"], [0])
        np.testing.assert_array_equal(got[image_id]["masks"], tiny.expected[1]["masks"][:1])
    else:
        assert sorted(got) == sorted({1, 2, 3, 4} - {image_id})


# The decoded-example cache.


def test_cache_decodes_each_image_once_and_returns_the_same_read_only_arrays(tiny):
    reader = CocoReader(tiny.annotation_file, tiny.image_dir, cache_bytes=2**20)
    first = [reader.load(i) for i in range(reader.num_images)]
    assert reader.cached_images == 4
    for name in os.listdir(tiny.image_dir):  # a second epoch no longer reads the files
        os.remove(os.path.join(tiny.image_dir, name))
    for i, example in enumerate(first):
        again = reader.load(i)
        assert again is example
        assert not again["image"].flags.writeable and not again["masks"].flags.writeable
    got = collect(reader.dataset(deterministic=True))  # and tf.data takes them from memory
    for image_id, expected in tiny.expected.items():
        np.testing.assert_array_equal(got[image_id]["masks"], expected["masks"])
    with pytest.raises(errors.BadSampleError, match="image file not found"):
        reader.load(0, with_source=True)  # conversion always reads the file


def test_cache_off_or_full_reads_the_files_again(tiny):
    uncached = CocoReader(tiny.annotation_file, tiny.image_dir)  # cache_bytes=0: off
    size = sum(v.nbytes for v in uncached.load(0).values())
    short = CocoReader(tiny.annotation_file, tiny.image_dir, cache_bytes=size - 1)
    fits = CocoReader(tiny.annotation_file, tiny.image_dir, cache_bytes=size)
    for reader in (short, fits):
        reader.load(0)
    assert (uncached.cached_images, short.cached_images, fits.cached_images) == (0, 0, 1)
    for name in os.listdir(tiny.image_dir):
        os.remove(os.path.join(tiny.image_dir, name))
    for reader in (uncached, short):
        with pytest.raises(errors.BadSampleError, match="image file not found"):
            reader.load(0)
    np.testing.assert_array_equal(fits.load(0)["masks"], tiny.expected[fits.image_ids[0]]["masks"])
