"""TFRecords: Model Garden features, and the same examples as the JSON reader."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from solo_tf.data import errors
from solo_tf.data.coco import CocoReader
from solo_tf.data.label_map import LabelMap
from solo_tf.data.tfrecord import convert_coco_to_tfrecords, label_map_path, read_tfrecords
from tests.data import fixtures


@pytest.fixture
def tiny(tmp_path):
    return fixtures.write_tiny_coco(str(tmp_path / "coco"))


def collect(dataset) -> list[dict]:
    return [{k: v.numpy() for k, v in ex.items()} for ex in dataset]


def assert_same_examples(from_json: list[dict], from_tfrecords: list[dict]):
    assert [int(e["image_id"]) for e in from_json] == [int(e["image_id"]) for e in from_tfrecords]
    for a, b in zip(from_json, from_tfrecords, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key].dtype == b[key].dtype, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{a['image_id']} {key}")


def first_record(path: str) -> tf.train.Example:
    serialized = next(iter(tf.data.TFRecordDataset(path))).numpy()
    return tf.train.Example.FromString(serialized)


def test_tfrecords_give_the_same_examples_as_the_json(tiny, tmp_path):
    prefix = str(tmp_path / "records" / "train")
    result = convert_coco_to_tfrecords(tiny.annotation_file, tiny.image_dir, prefix, num_shards=3)
    assert result["num_examples"] == 4 and not result["skipped"]
    assert result["files"] == [f"{prefix}-{i:05d}-of-00003.tfrecord" for i in range(3)]
    assert all(os.path.exists(f) for f in result["files"])
    reader = CocoReader(tiny.annotation_file, tiny.image_dir)
    label_map = LabelMap.from_json(label_map_path(prefix))
    assert result["label_map"] == prefix + "label_map.json" and label_map == reader.label_map
    from_json = collect(reader.dataset(deterministic=True))
    from_tfrecords = collect(read_tfrecords(prefix + "-*", label_map, deterministic=True))
    assert_same_examples(from_json, from_tfrecords)  # in the converter's order too


def test_records_hold_model_garden_features(tiny, tmp_path):
    prefix = str(tmp_path / "train")
    convert_coco_to_tfrecords(tiny.annotation_file, tiny.image_dir, prefix, num_shards=2)
    feature = first_record(prefix + "-00000-of-00002.tfrecord").features.feature  # image 1
    with open(os.path.join(tiny.image_dir, "rgb.png"), "rb") as f:
        assert feature["image/encoded"].bytes_list.value == [f.read()]  # the file, untouched
    assert feature["image/format"].bytes_list.value == [b"png"]
    assert feature["image/source_id"].bytes_list.value == [b"1"]
    assert feature["image/filename"].bytes_list.value == [b"rgb.png"]
    assert feature["image/height"].int64_list.value == [30]
    assert feature["image/width"].int64_list.value == [40]
    assert feature["image/object/class/label"].int64_list.value == [3, 90]  # dataset ids
    assert feature["image/object/class/text"].bytes_list.value == [b"car", b"zebra"]
    assert feature["image/object/is_crowd"].int64_list.value == [0, 0]
    assert feature["image/object/area"].float_list.value == [100.0, 40.0]
    boxes = {k: feature[f"image/object/bbox/{k}"].float_list.value for k in ("ymin", "xmin")}
    boxes.update({k: feature[f"image/object/bbox/{k}"].float_list.value for k in ("ymax", "xmax")})
    np.testing.assert_allclose(boxes["ymin"], [5 / 30, 20 / 30], rtol=1e-6)
    np.testing.assert_allclose(boxes["xmin"], [5 / 40, 30 / 40], rtol=1e-6)
    np.testing.assert_allclose(boxes["ymax"], [15 / 30, 25 / 30], rtol=1e-6)
    np.testing.assert_allclose(boxes["xmax"], [15 / 40, 38 / 40], rtol=1e-6)
    masks = [
        np.asarray(Image.open(io.BytesIO(m))) for m in feature["image/object/mask"].bytes_list.value
    ]
    np.testing.assert_array_equal(np.stack(masks), tiny.expected[1]["masks"])  # 0/1 PNGs
    crowd = first_record(prefix + "-00001-of-00002.tfrecord").features.feature  # image 2
    assert crowd["image/format"].bytes_list.value == [b"jpeg"]
    assert crowd["image/object/is_crowd"].int64_list.value == [1, 0]


def test_other_formats_are_stored_as_lossless_png(tiny, tmp_path):
    rgb = tiny.expected[1]["image"]
    Image.fromarray(rgb).save(os.path.join(tiny.image_dir, "rgb.bmp"))
    data = fixtures.read_json(tiny.annotation_file)
    data["images"][0]["file_name"] = "rgb.bmp"
    fixtures.write_json(tiny.annotation_file, data)
    prefix = str(tmp_path / "train")
    convert_coco_to_tfrecords(tiny.annotation_file, tiny.image_dir, prefix)
    feature = first_record(prefix + "-00000-of-00001.tfrecord").features.feature
    assert feature["image/format"].bytes_list.value == [b"png"]
    stored = np.asarray(Image.open(io.BytesIO(feature["image/encoded"].bytes_list.value[0])))
    np.testing.assert_array_equal(stored, rgb)
    reader = CocoReader(tiny.annotation_file, tiny.image_dir)
    from_tfrecords = collect(read_tfrecords(prefix + "-*", reader.label_map))
    assert_same_examples(collect(reader.dataset(deterministic=True)), from_tfrecords)


def test_conversion_follows_the_bad_sample_policy(tiny, tmp_path):
    os.remove(os.path.join(tiny.image_dir, "rgba.png"))
    prefix = str(tmp_path / "train")
    with pytest.raises(errors.BadSampleError, match="rgba.png .image id 4.: image file not found"):
        convert_coco_to_tfrecords(tiny.annotation_file, tiny.image_dir, prefix)
    result = convert_coco_to_tfrecords(
        tiny.annotation_file, tiny.image_dir, prefix, bad_sample_policy="skip"
    )
    assert result["num_examples"] == 3 and result["skipped"] == {"missing_file": 1}
    label_map = LabelMap.from_json(result["label_map"])
    ids = [int(e["image_id"]) for e in read_tfrecords(prefix + "-*", label_map)]
    assert ids == [1, 2, 3]


def test_reader_options_and_errors(tiny, tmp_path):
    prefix = str(tmp_path / "train")
    convert_coco_to_tfrecords(tiny.annotation_file, tiny.image_dir, prefix, num_shards=2)
    label_map = LabelMap.from_json(label_map_path(prefix))
    ids = [int(e["image_id"]) for e in read_tfrecords(prefix + "-*", label_map, skip_empty=True)]
    assert ids == [1, 2, 4]
    shuffled = read_tfrecords(prefix + "-*", label_map, shuffle=True, seed=0)
    assert sorted(int(e["image_id"]) for e in shuffled) == [1, 2, 3, 4]
    without_zebra = LabelMap(ids=(3, 7), names=("car", "train"))  # image 1 holds a 90
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="source_id.*1.*missing from the label"
    ):
        list(read_tfrecords(prefix + "-*", without_zebra))
    with pytest.raises(ValueError, match="no TFRecord file matches"):
        read_tfrecords(str(tmp_path / "nothing-*"), label_map)


@pytest.mark.slow  # a subprocess that imports TensorFlow
def test_command_line(tiny, tmp_path):
    prefix = str(tmp_path / "cli" / "val")
    command = [sys.executable, "-m", "solo_tf.data.tfrecord", "--annotations", tiny.annotation_file]
    command += ["--images", tiny.image_dir, "--output", prefix, "--num_shards", "2"]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "4 examples -> 2 shards" in done.stdout
    assert os.path.exists(prefix + "-00001-of-00002.tfrecord")
    assert LabelMap.from_json(prefix + "label_map.json").ids == (3, 7, 90)
