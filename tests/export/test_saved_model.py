"""The SavedModel export: layout, parity with the Keras evaluation path, bad input, a fresh
process without solo_tf, ``saved_model_cli``, and the in-process runners built on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from solo_tf import config as cfg
from solo_tf import eval_lib, exported
from solo_tf import images as images_lib
from solo_tf.detector import Detector
from tests.export import fixtures

SIGNATURES = ("serving_default", "serve_image_bytes", "serve_examples")

pytestmark = pytest.mark.slow  # exports and converts models


def _numpy(outputs) -> dict:
    return {k: v.numpy() for k, v in outputs.items()}


def _example(data: bytes) -> bytes:
    feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_layout_assets_and_signatures(saved_model_dir, loaded, source):
    assert saved_model_dir.endswith(os.path.join("solo", "1"))
    for name in ("saved_model.pb", "variables/variables.index", "assets/config.json"):
        assert os.path.exists(os.path.join(saved_model_dir, name)), name
    with open(os.path.join(saved_model_dir, "assets", "label_map.json")) as f:
        assert json.load(f) == fixtures.LABEL_MAP.to_dict()
    with open(os.path.join(saved_model_dir, "assets", "config.json")) as f:
        assert cfg.from_dict(json.load(f)) == source.config
    assert set(loaded.signatures) == set(SIGNATURES)
    inputs = {name: loaded.signatures[name].structured_input_signature[1] for name in SIGNATURES}
    assert inputs["serving_default"]["images"].dtype == tf.uint8
    assert inputs["serving_default"]["images"].shape.as_list() == [None, None, None, 3]
    assert inputs["serve_image_bytes"]["image_bytes"].dtype == tf.string
    assert inputs["serve_examples"]["examples"].dtype == tf.string
    outputs = loaded.signatures["serving_default"].structured_outputs
    assert set(outputs) == {
        "num_detections",
        "detection_scores",
        "detection_classes",
        "detection_masks",
        "detection_boxes",
        "image_info",
    }
    # Every weight of the model was saved (not re-initialised): the export checks values.
    assert len(loaded.variables) >= len(source.model.weights)


def test_serving_default_matches_keras(loaded, keras_detect, images):
    serve = loaded.signatures["serving_default"]
    total = 0
    for image in images:
        outputs = _numpy(serve(images=tf.constant(image[None])))
        assert outputs["detection_masks"].shape[2:] == image.shape[:2]
        np.testing.assert_allclose(outputs["image_info"][0, 0], image.shape[:2])
        got = fixtures.one_image(outputs)
        fixtures.assert_same_detections(got, keras_detect(image))
        assert set(got["detection_classes"]) <= set(fixtures.LABEL_MAP.ids)
        total += len(got["detection_scores"])
    assert total >= 2 * len(images), "the tiny model should detect a few instances per image"


def test_serving_default_batch_of_one_size(loaded, images):
    serve = loaded.signatures["serving_default"]
    image = images[0]
    batch = _numpy(serve(images=tf.constant(np.stack([image, image[:, ::-1]]))))
    single = _numpy(serve(images=tf.constant(image[None])))
    fixtures.assert_same_detections(fixtures.one_image(batch, 0), fixtures.one_image(single))
    assert batch["num_detections"].shape == (2,)


def test_image_bytes_and_examples_with_mixed_sizes(loaded, keras_detect, images):
    encoded = [fixtures.encode(image, "PNG") for image in images]
    by_bytes = _numpy(loaded.signatures["serve_image_bytes"](image_bytes=tf.constant(encoded)))
    examples = tf.constant([_example(data) for data in encoded])
    by_examples = _numpy(loaded.signatures["serve_examples"](examples=examples))
    largest = np.max([image.shape[:2] for image in images], axis=0)
    assert by_bytes["detection_masks"].shape[2:] == tuple(largest)
    for b, image in enumerate(images):
        size = image.shape[:2]
        np.testing.assert_allclose(by_bytes["image_info"][b, 0], size)
        masks = by_bytes["detection_masks"][b]
        assert not masks[:, size[0] :].any() and not masks[:, :, size[1] :].any()
        want = keras_detect(image)
        fixtures.assert_same_detections(fixtures.one_image(by_bytes, b, size), want)
        fixtures.assert_same_detections(fixtures.one_image(by_examples, b, size), want)


def test_jpeg_bytes(loaded, images):
    image = images[1]
    data = fixtures.encode(image, "JPEG")
    outputs = _numpy(loaded.signatures["serve_image_bytes"](image_bytes=tf.constant([data])))
    decoded = images_lib.decode_image_bytes(data)
    want = _numpy(loaded.signatures["serving_default"](images=tf.constant(decoded[None])))
    fixtures.assert_same_detections(fixtures.one_image(outputs), fixtures.one_image(want))


BAD_INPUTS = {  # name: (signature, input name, input tensor of the test images, message)
    "empty bytes": ("serve_image_bytes", "image_bytes", lambda _: [b""], "bytes are empty"),
    "not an image": (
        "serve_image_bytes",
        "image_bytes",
        lambda _: [b"hello, this is text"],
        "not a JPEG, PNG, GIF or BMP",
    ),
    "truncated png": (
        "serve_image_bytes",
        "image_bytes",
        lambda images: [fixtures.encode(images[0])[:60]],
        "",
    ),
    "empty batch": (
        "serve_image_bytes",
        "image_bytes",
        lambda _: tf.zeros([0], tf.string),
        "batch is empty",
    ),
    "example without image": ("serve_examples", "examples", lambda _: [b""], "bytes are empty"),
    "zero-sized image": (
        "serving_default",
        "images",
        lambda _: np.zeros([1, 0, 16, 3], np.uint8),
        "zero height or width",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_invalid_argument_and_the_model_goes_on(case, loaded, images):
    signature, name, make_value, message = BAD_INPUTS[case]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        loaded.signatures[signature](**{name: tf.constant(make_value(images))})
    good = loaded.signatures["serve_image_bytes"](
        image_bytes=tf.constant([fixtures.encode(images[2])])
    )
    assert int(good["num_detections"][0]) > 0


@pytest.mark.parametrize(
    "value",
    [
        np.zeros([1, 32, 32, 3], np.float32),  # wrong dtype
        np.zeros([32, 32, 3], np.uint8),  # wrong rank
        np.zeros([1, 32, 32, 4], np.uint8),  # RGBA
    ],
    ids=["float32", "rank3", "rgba"],
)
def test_wrong_dtype_or_shape_is_refused_by_the_signature(value, loaded, images):
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        loaded.signatures["serving_default"](images=tf.constant(value))
    good = loaded.signatures["serving_default"](images=tf.constant(images[2][None]))
    assert int(good["num_detections"][0]) > 0


FRESH_SCRIPT = """
import numpy as np
import tensorflow as tf

model = tf.saved_model.load(PATH)
image = np.load(IMAGE)
data = open(PNG, "rb").read()
example = tf.train.Example(features=tf.train.Features(feature={"image/encoded":
    tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))})).SerializeToString()
calls = {
    "serving_default": dict(images=tf.constant(image[None])),
    "serve_image_bytes": dict(image_bytes=tf.constant([data])),
    "serve_examples": dict(examples=tf.constant([example])),
}
out = {}
for name, kwargs in calls.items():
    result = model.signatures[name](**kwargs)
    n = int(result["num_detections"][0])
    out[name] = [float(s) for s in result["detection_scores"][0, :n].numpy()]
print("RESULT" + json.dumps(out))
"""


def test_fresh_process_without_solo_tf(saved_model_dir, loaded, images, tmp_path):
    image = images[0]
    np.save(tmp_path / "image.npy", image)
    (tmp_path / "image.png").write_bytes(fixtures.encode(image))
    variables = {
        "PATH": saved_model_dir,
        "IMAGE": str(tmp_path / "image.npy"),
        "PNG": str(tmp_path / "image.png"),
    }
    scores = fixtures.run_without_solo_tf(FRESH_SCRIPT, variables, tmp_path)
    want = loaded.signatures["serving_default"](images=tf.constant(image[None]))
    want = want["detection_scores"][0, : int(want["num_detections"][0])].numpy()
    for name in SIGNATURES:
        np.testing.assert_allclose(sorted(scores[name]), sorted(want), atol=1e-5)


def _cli(*args, timeout=300):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    proc = subprocess.run([cli, *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_saved_model_cli_show_and_run(saved_model_dir, loaded, images, tmp_path):
    shown = _cli("show", "--dir", saved_model_dir, "--all")
    for name in (*SIGNATURES, "detection_masks", "image_bytes", "DT_UINT8"):
        assert name in shown
    np.save(tmp_path / "images.npy", images[0][None])
    outdir = tmp_path / "cli_out"
    _cli(
        "run",
        "--dir",
        saved_model_dir,
        "--tag_set",
        "serve",
        "--signature_def",
        "serving_default",
        "--inputs",
        f"images={tmp_path / 'images.npy'}",
        "--outdir",
        str(outdir),
    )
    count = np.load(outdir / "num_detections.npy")
    want = loaded.signatures["serving_default"](images=tf.constant(images[0][None]))
    np.testing.assert_array_equal(count, want["num_detections"].numpy())
    masks = np.load(outdir / "detection_masks.npy")
    assert masks.shape[2:] == images[0].shape[:2]


def test_saved_model_predictor(saved_model_dir, keras_detect, images):
    predictor = exported.SavedModelPredictor(os.path.dirname(saved_model_dir))  # base dir
    assert predictor.path == saved_model_dir
    image = images[3]
    dets, names = predictor(image)
    assert names == {1: "circle", 5: "square", 9: "triangle"}
    assert dets["detection_masks"].shape[1:] == image.shape[:2]
    fixtures.assert_same_detections(dets, keras_detect(image))


def _write_coco(images, folder) -> str:
    """A COCO split of the test images with one square instance each."""
    os.makedirs(folder / "images", exist_ok=True)
    entries, annotations = [], []
    for k, image in enumerate(images):
        name = f"{k}.png"
        (folder / "images" / name).write_bytes(fixtures.encode(image))
        height, width = image.shape[:2]
        entries.append({"id": k + 1, "file_name": name, "height": height, "width": width})
        side = min(height, width) / 2
        polygon = [0, 0, side, 0, side, side, 0, side]
        annotations.append(
            {
                "id": k + 1,
                "image_id": k + 1,
                "category_id": fixtures.LABEL_MAP.ids[k % 3],
                "segmentation": [polygon],
                "area": side * side,
                "bbox": [0, 0, side, side],
                "iscrowd": 0,
            }
        )
    categories = fixtures.LABEL_MAP.to_dict()["categories"]
    path = folder / "instances.json"
    path.write_text(
        json.dumps({"images": entries, "annotations": annotations, "categories": categories})
    )
    return str(path)


def test_evaluate_exported_matches_the_keras_evaluation(
    saved_model_dir, tflite_dir, source, images, tmp_path
):
    annotations = _write_coco(images, tmp_path)
    folder = str(tmp_path / "images")
    by_saved_model = eval_lib.evaluate_exported(
        saved_model=saved_model_dir, annotations=annotations, images=folder, progress=False
    )
    data = source.config.data
    config = cfg.SOLOConfig(
        model=source.config.model,
        targets=source.config.targets,
        postprocess=source.config.postprocess,
        data=cfg.DataConfig(
            val_annotations=annotations,
            val_images=folder,
            output_size=data.output_size,
            eval_short_side=data.eval_short_side,
            max_long_side=data.max_long_side,
        ),
    )
    detector = Detector(source.model, config, source.label_map)
    by_keras = eval_lib.evaluate_detector(detector, batch_size=2, progress=False)
    for key in eval_lib.SUMMARY_KEYS:
        assert by_saved_model[key] == pytest.approx(by_keras[key], abs=1e-3), key
    scores = [sorted(r["score"] for r in m["detections"]) for m in (by_saved_model, by_keras)]
    assert len(scores[0]) == len(scores[1]) > 0
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-3)
    assert by_saved_model["num_images"] == len(images)
    assert by_saved_model["images_per_s"] > 0

    tflite_path = os.path.join(tflite_dir, "model_fp32.tflite")
    by_tflite = eval_lib.evaluate_exported(
        tflite=tflite_path, annotations=annotations, images=folder, max_images=2, progress=False
    )
    assert by_tflite["num_images"] == 2
    assert {r["image_id"] for r in by_tflite["detections"]} <= {1, 2}
    assert {r["category_id"] for r in by_tflite["detections"]} <= set(fixtures.LABEL_MAP.ids)
    with pytest.raises(ValueError, match="exactly one"):
        eval_lib.evaluate_exported(annotations=annotations, images=folder)


def _run_module(module: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd or repo,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_command_line_export_then_predict(model_dir, images, tmp_path):
    """``python -m export.saved_model``, then ``solo_tf.predict --saved_model`` on it."""
    _run_module(
        "export.saved_model",
        f"--model_dir={model_dir}",
        "--checkpoint=latest",
        f"--output_dir={tmp_path / 'serving'}",
        "--model_name=tiny",
        "--version=7",
    )
    base = str(tmp_path / "serving" / "tiny")
    assert os.path.exists(os.path.join(base, "7", "saved_model.pb"))
    folder = tmp_path / "images"
    folder.mkdir()
    for k, image in enumerate(images[:2]):
        (folder / f"{k}.png").write_bytes(fixtures.encode(image))
    out = tmp_path / "predictions"
    _run_module(
        "solo_tf.predict",
        f"--saved_model={base}",  # the model base folder: its highest version is used
        f"--images={folder}",
        f"--output_dir={out}",
        "--draw_threshold=0.0",
    )
    with open(out / "results.json") as f:
        results = json.load(f)
    assert {r["file_name"] for r in results} == {"0.png", "1.png"}
    assert {r["category_id"] for r in results} <= set(fixtures.LABEL_MAP.ids)
    assert os.path.exists(out / "0.png") and os.path.exists(out / "1.png")
