"""Tests for solo_tf.data.geometry: the authors' padded sizes, the mean-colour padding,
training batches padded to their largest image with targets on that size, evaluation and
serving batches, and the canvas that never shrinks an image."""

import dataclasses
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from export import serving_module
from solo_tf import config as cfg
from solo_tf import flags as solo_flags
from solo_tf import optimization, train_lib
from solo_tf.data import geometry
from solo_tf.data.augment import pad_masks, preprocess_for_eval, resize_masks
from solo_tf.data.inputs import from_examples, train_dataset
from solo_tf.data.label_map import LabelMap
from solo_tf.data.pipeline import build_eval_dataset, make_train_map_fn
from solo_tf.detector import Detector
from solo_tf.images import decode_image_tensor, letterbox
from solo_tf.modeling import factory
from solo_tf.modeling.normalization import ImageNormalization
from solo_tf.targets import build_targets
from tests.data.test_pipeline import as_dataset, make_example, take
from tests.export import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER_FLAGFILES = ("r50", "r101", "decoupled_r50", "solov2_r50", "solov2_r101")
MEAN = np.array(geometry.IMAGENET_MEAN, np.float32)
MULTIPLE = cfg.DataConfig(
    pad_mode="multiple",
    short_sides=(64,),
    max_long_side=128,
    eval_short_side=64,
    output_size=(128, 128),
    flip_probability=0.0,
    deterministic=True,
    parallel_calls=1,
)
# Level 0: S = 8, level 1: S = 4; G = 80.
TARGETS = cfg.TargetConfig(
    num_grids=(8, 4), scale_ranges=((1, 48), (24, 128)), max_instances=4, mask_stride=4
)


def paper_config(name: str) -> cfg.SOLOConfig:
    return solo_flags.config_from_args(
        [f"--flagfile={os.path.join(ROOT, 'experiments', name + '.flags')}"]
    )


def coco_like_example(height: int, width: int) -> dict:
    return {
        "image": tf.zeros([height, width, 3], tf.uint8),
        "masks": tf.ones([1, height, width], tf.uint8),
        "classes": tf.constant([0], tf.int32),
        "is_crowd": tf.constant([False]),
        "image_id": tf.constant(1, tf.int64),
        "original_size": tf.constant([height, width], tf.int32),
    }


@pytest.mark.parametrize(
    "original, scaled, padded",
    [((640, 427), (1199, 800), (1216, 800)), ((427, 640), (800, 1199), (800, 1216))],
)
def test_paper_flagfiles_give_the_authors_sizes(original, scaled, padded):
    example = coco_like_example(*original)
    label_map = LabelMap(ids=tuple(range(1, 81)), names=tuple(map(str, range(80))))
    geometry_fields = set()
    for name in PAPER_FLAGFILES:
        config = paper_config(name)
        data = config.data
        geometry_fields.add((data.pad_mode, data.short_sides, data.max_long_side))
        assert (data.pad_mode, data.eval_short_side) == ("multiple", 800), name
        # Evaluation and every inference caller (Detector.preprocess): short side 800.
        image, info = Detector(None, config, label_map).preprocess(example["image"])
        assert image.shape == (*padded, 3), name
        np.testing.assert_array_equal(info[1].numpy(), scaled)
    assert len(geometry_fields) == 1  # one training geometry: check it once
    # Training: a short side drawn from 640..800 (data seed 0: position 8 draws 800).
    map_fn = make_train_map_fn(config.data, config.targets, base_seed=0)
    drawn = set()
    for position in range(9):
        element = map_fn(tf.constant(position, tf.int64), example)
        size = tuple(int(v) for v in element["image_info"][1].numpy())
        drawn.add(min(size))
        expected = tuple(-(-v // 32) * 32 for v in size)
        assert element["image"].shape == (*expected, 3)
        assert element["masks"].shape == (1, *expected)
        if min(size) == 800:
            assert size == scaled and expected == padded
    assert drawn == {640, 672, 704, 736, 800}


def test_padding_is_the_mean_colour_and_zero_after_normalisation():
    example = {"image": tf.fill([30, 50, 3], tf.constant(7, tf.uint8)), "image_id": 3}
    out = preprocess_for_eval(example, MULTIPLE)  # 30 x 50 -> 64 x 107 -> padded 64 x 128
    image = out["image"].numpy()
    assert image.shape == (64, 128, 3)
    np.testing.assert_array_equal(out["image_info"][1].numpy(), [64, 107])
    np.testing.assert_array_equal(image[:, 107:], np.broadcast_to(MEAN, [64, 21, 3]))
    np.testing.assert_allclose(image[:, :107], 7.0)
    normalised = ImageNormalization()(image[None]).numpy()[0]
    assert (normalised[:, 107:] == 0.0).all()  # exactly: the authors pad after Normalize
    assert geometry.pad_colour("unit") == (0.0, 0.0, 0.0)


def test_app_letterbox_pads_with_the_given_colour_rounded_for_uint8():
    """What an app does for a TFLite / ONNX file: model_info.json's pad_colour, here the mean."""
    image = np.full([30, 60, 3], 7, np.uint8)  # fits 64 x 64 as 32 x 64, padded below
    padded, info = letterbox(image, (64, 64), np.uint8, geometry.pad_colour("imagenet"))
    assert padded.dtype == np.uint8 and padded.shape == (64, 64, 3)
    np.testing.assert_array_equal(info[1], [32, 64])
    np.testing.assert_array_equal(padded[:32], 7)
    np.testing.assert_array_equal(padded[32:], np.broadcast_to([124, 116, 104], [32, 64, 3]))
    as_float, _ = letterbox(image, (64, 64), np.float32, geometry.pad_colour("imagenet"))
    np.testing.assert_allclose(as_float[40, 10], MEAN, rtol=1e-6)
    zero_padded, _ = letterbox(image, (64, 64), np.uint8)  # the default: 0
    assert (zero_padded[32:] == 0).all()


def test_training_batch_is_padded_to_its_larger_image_and_targets_use_that_size():
    # 32 x 48 -> 64 x 96 (padded 64 x 96); 64 x 32 -> 128 x 64 (padded 128 x 64). Batch: 128 x 96.
    examples = [
        make_example(1, 32, 48, [(0, 15, 0, 23)]),
        make_example(2, 64, 32, [(8, 39, 4, 19)]),
    ]
    dataset = train_dataset(
        from_examples(as_dataset(examples)), MULTIPLE, TARGETS, 2, shuffle=False, repeat=False
    )
    assert dataset.element_spec["image"].shape.as_list() == [2, None, None, 3]
    (batch,) = take(dataset, 5)
    images, targets = batch["image"], batch["targets"]
    assert images.shape == (2, 128, 96, 3)
    np.testing.assert_array_equal(batch["image_info"][:, 1], [[64, 96], [128, 64]])
    np.testing.assert_array_equal(images[0, 64:], np.broadcast_to(MEAN, [64, 96, 3]))
    np.testing.assert_array_equal(images[1, :, 64:], np.broadcast_to(MEAN, [128, 32, 3]))
    assert targets["instance_masks"].shape == (2, 4, 32, 24)
    # Image 0, rows 0..31 and cols 0..47 at 64 x 96 (cy 15.5, cx 23.5, h 32, w 48): on the
    # batch's 128 x 96 grid of S = 8, rows floor(12.3 / 16) = 0 .. floor(18.7 / 16) = 1 and
    # cols floor(18.7 / 12) = 1 .. floor(28.3 / 12) = 2. (Its own 64 x 96 would give rows 1..2.)
    level0 = targets["cate_targets"][0, :64].reshape(8, 8)
    rows, cols = np.nonzero(level0 >= 0)
    assert set(rows) == {0, 1} and set(cols) == {1, 2}
    for index, example in enumerate(examples):  # exactly build_targets on the batch's size
        size = batch["image_info"][index, 1]
        masks = pad_masks(resize_masks(tf.constant(example["masks"]), size), (128, 96))
        want = build_targets(masks, example["classes"], example["is_crowd"], TARGETS, (128, 96))
        for key, value in want.items():
            np.testing.assert_array_equal(targets[key][index], value.numpy(), err_msg=key)


def test_canvas_pads_to_output_size_and_never_shrinks():
    canvas = dataclasses.replace(MULTIPLE, pad_mode="canvas", output_size=(64, 96))
    fits = preprocess_for_eval({"image": tf.zeros([32, 40, 3], tf.uint8), "image_id": 1}, canvas)
    assert fits["image"].shape == (64, 96, 3)  # 32 x 40 -> 64 x 80, padded to the canvas
    np.testing.assert_array_equal(fits["image"][:, 80:], np.broadcast_to(MEAN, [64, 16, 3]))
    too_wide = {"image": tf.zeros([32, 64, 3], tf.uint8), "image_id": 2}  # -> 64 x 128
    with pytest.raises(tf.errors.InvalidArgumentError, match="does not fit the canvas"):
        preprocess_for_eval(too_wide, canvas)
    dataset = build_eval_dataset(as_dataset([make_example(2, 32, 64, [])]), canvas, 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="--output_size=64,96"):
        take(dataset, 1)


def test_eval_batches_hold_one_padded_size_each():
    sizes = [(32, 48), (40, 40), (33, 48), (64, 32), (48, 48)]
    examples = [make_example(k, h, w, []) for k, (h, w) in enumerate(sizes)]
    batches = take(build_eval_dataset(as_dataset(examples), MULTIPLE, batch_size=2), 10)
    ids = sorted(int(i) for b in batches for i in b["image_id"])
    assert ids == [0, 1, 2, 3, 4]
    for batch in batches:  # no image is padded beyond its own multiple of 32
        for info in batch["image_info"]:
            assert batch["image"].shape[1:3] == tuple(-(-int(v) // 32) * 32 for v in info[1])
    # 32 x 48 -> 64 x 96 and 33 x 48 -> 64 x 93 share 64 x 96; 40 x 40 and 48 x 48 -> 64 x 64.
    assert sorted(len(b["image_id"]) for b in batches) == [1, 2, 2]
    first = take(build_eval_dataset(as_dataset(examples), MULTIPLE, 2, max_images=3), 10)
    assert sorted(int(i) for b in first for i in b["image_id"]) == [0, 1, 2]


def test_grouping_looks_ahead_a_bounded_run_of_images():
    heights = [32, 64, 32, 64, 32, 32]
    dataset = tf.data.Dataset.from_generator(
        lambda: (
            {"image": np.zeros([h, 32, 3], np.float32), "id": k} for k, h in enumerate(heights)
        ),
        output_signature={"image": tf.TensorSpec([None, 32, 3]), "id": tf.TensorSpec([], tf.int32)},
    )
    ids = [b["id"].tolist() for b in take(geometry.group_by_padded_size(dataset, 2, 1), 10)]
    assert ids == [[0], [1], [2], [3], [4, 5]]  # runs of 2: only the last holds one size
    ids = [b["id"].tolist() for b in take(geometry.group_by_padded_size(dataset, 2, 3), 10)]
    assert ids == [[0, 2], [1, 3], [4, 5]]  # each batch as soon as it is full


def test_fixed_shape_options_refuse_the_multiple_geometry():
    for train in (cfg.TrainConfig(jit_compile=True), cfg.TrainConfig(strategy="tpu")):
        with pytest.raises(ValueError, match="--pad_mode=canvas"):
            cfg.SOLOConfig(data=cfg.DataConfig(pad_mode="multiple"), train=train)
    # config.json files from before pad_mode existed padded to output_size.
    assert cfg.from_dict({"data": {}}).data.pad_mode == "canvas"


def png(height: int, width: int, value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full([height, width, 3], value, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_serving_batch_of_two_sizes_is_padded_to_the_larger_with_the_mean_colour():
    config = cfg.SOLOConfig(model=cfg.ModelConfig(num_classes=1), data=MULTIPLE)
    detector = Detector(None, config, LabelMap(ids=(1,), names=("a",)))
    encoded = tf.constant([png(32, 48, 10), png(64, 32, 20)])
    images, info = serving_module._preprocess_batch(
        decode_image_tensor, encoded, detector, "serve_image_bytes", 10_000
    )
    assert images.shape == (2, 128, 96, 3)
    for index in range(2):
        alone, alone_info = detector.preprocess(decode_image_tensor(encoded[index]))
        h, w = alone.shape[:2]
        np.testing.assert_array_equal(images[index, :h, :w], alone)
        np.testing.assert_array_equal(info[index], alone_info)
        outside = np.ones([128, 96], bool)
        outside[: int(alone_info[1, 0]), : int(alone_info[1, 1])] = False
        np.testing.assert_array_equal(
            images[index].numpy()[outside], np.tile(MEAN, [outside.sum(), 1])
        )


def tiny_model_config() -> cfg.SOLOConfig:
    """The export tests' tiny model (grids 8/8/6/4/4) with the authors' geometry."""
    config = fixtures.tiny_config("decoupled")
    train = cfg.TrainConfig(global_batch_size=2, warmup_steps=1, total_steps=2)
    return dataclasses.replace(config, data=MULTIPLE, train=train)


@pytest.mark.slow  # trains two steps
def test_one_training_call_takes_batches_of_two_sizes_and_detects_any_size():
    config = tiny_model_config()
    examples = [
        make_example(1, 32, 48, [(0, 15, 0, 23)]),
        make_example(2, 64, 32, [(8, 39, 4, 19)]),
        make_example(3, 40, 40, [(5, 30, 5, 30)]),
        make_example(4, 48, 32, [(10, 40, 2, 30)]),
    ]
    dataset = train_dataset(
        from_examples(as_dataset(examples)), config.data, config.targets, 2, shuffle=False
    )
    sizes = [tuple(b["image"].shape[1:3]) for b in take(dataset, 2)]
    assert sizes == [(128, 96), (96, 64)]  # 64 x 64 and 96 x 64 -> 96 x 64
    strategy = tf.distribute.get_strategy()
    model = factory.build_model(config.model)
    model(tf.zeros([1, 64, 64, 3]))
    optimizer = optimization.build_optimizer(config.train, steps_per_epoch=2)
    optimizer.build(model.trainable_variables)
    step = train_lib.make_replica_step(model, optimizer, config)
    loop = train_lib.make_train_loop(strategy, step)
    metrics = loop(iter(dataset), tf.constant(2))  # one tf.function call, two shapes
    assert np.isfinite(metrics["loss"].numpy()) and metrics["finite"].numpy() == 1.0
    label_map = LabelMap(ids=(1, 2, 3), names=("a", "b", "c"))
    detector = Detector(model, config, label_map)
    detect = detector.detect_fn()
    for height, width in [(30, 50), (50, 30), (64, 64)]:
        dets = detector.detect_image(np.zeros([height, width, 3], np.uint8), detect)
        assert dets["detection_masks"].shape[1:] == (height, width)
