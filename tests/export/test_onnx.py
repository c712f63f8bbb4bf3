"""The ONNX export: every head converts, ONNX Runtime in a process that cannot import solo_tf
gives the converted SavedModel's detections on embedded validation images, only standard
ONNX operators, model_info.json, ``ONNXPredictor`` and ``evaluate --onnx``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing

import numpy as np
import pytest
import tensorflow as tf

onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install .[onnx])")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed (pip install .[onnx])")
pytest.importorskip("tf2onnx", reason="the onnx extra is not installed (pip install .[onnx])")

from export import onnx as onnx_export  # noqa: E402
from solo_tf import config as cfg  # noqa: E402
from solo_tf import eval_lib, exported  # noqa: E402
from solo_tf import images as images_lib  # noqa: E402
from solo_tf.data import shapes  # noqa: E402
from solo_tf.detector import DETECTION_KEYS, one_image  # noqa: E402
from solo_tf.onnx_runtime import ONNXPredictor  # noqa: E402
from tests.export import fixtures  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = (128, 128)
HEADS = [h for h in ("vanilla", "decoupled", "solov2") if h in typing.get_args(cfg.HeadType)]


def validation_images(count: int = 4) -> list[np.ndarray]:
    """The first images of the embedded shapes dataset's val split, 96 to 160 px a side."""
    return [
        shapes.render_image(shapes.image_rng(0, "val", index), 96, 160).image
        for index in range(count)
    ]


def letterboxed(image: np.ndarray) -> np.ndarray:
    return images_lib.letterbox(image, SIZE, np.uint8, fixtures.PAD_COLOUR)[0][None]  # [1, H, W, 3]


def _run(args, cwd=REPO, env=None, timeout=900) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module", params=HEADS)
def export(request, tmp_path_factory):
    """The ONNX export of a tiny model_dir of one head, its SavedModel kept: through
    ``python -m export.onnx`` for the first head, ``export_onnx`` in-process for the others."""
    root = tmp_path_factory.mktemp(f"onnx_{request.param}")
    model_dir = str(root / "model_dir")
    fixtures.write_model_dir(model_dir, head_type=request.param)
    out, saved = root / "onnx", root / "saved_model"
    if request.param == HEADS[0]:
        flags = [f"--model_dir={model_dir}", "--checkpoint=latest", f"--output_dir={out}"]
        flags += ["--image_size=128,128", f"--keep_saved_model={saved}"]
        _run([sys.executable, "-m", "export.onnx", *flags])
    else:
        detector = onnx_export.load_detector(model_dir, "latest")
        onnx_export.export_onnx(detector, str(out), SIZE, saved_model_dir=str(saved))
    return {
        "head": request.param,
        "onnx": str(out / onnx_export.FILE_NAME),
        "saved_model": str(saved),
        "info": json.loads((out / "model_info.json").read_text()),
    }


@pytest.fixture(scope="module")
def saved_model(export):
    """The converted fixed-shape SavedModel: ``run(image [1, H, W, 3]) -> padded outputs``."""
    serve = tf.saved_model.load(export["saved_model"]).signatures["serving_default"]
    return lambda image: {k: v.numpy() for k, v in serve(image=tf.constant(image)).items()}


FRESH_SCRIPT = """
import numpy as np
import onnx
import onnxruntime

model = onnx.load(PATH)
session = onnxruntime.InferenceSession(PATH, providers=["CPUExecutionProvider"])
names = [o.name for o in session.get_outputs()]
outputs = {}
for k, image in enumerate(np.load(INPUTS)):
    for name, value in zip(names, session.run(names, {"image": image})):
        outputs[f"{k}/{name}"] = value
np.savez(OUTPUTS, **outputs)
report = {
    "node_domains": sorted({n.domain for n in model.graph.node}),
    "opset_imports": {o.domain: o.version for o in model.opset_import},
    "functions": len(model.functions),
    "input": [session.get_inputs()[0].name, session.get_inputs()[0].type],
}
print("RESULT" + json.dumps(report))
"""


@pytest.mark.slow
def test_fresh_onnx_runtime_gives_the_saved_model_detections(export, saved_model, tmp_path):
    padded = np.stack([letterboxed(image) for image in validation_images()])  # [N, 1, H, W, 3]
    np.save(tmp_path / "inputs.npy", padded)
    variables = {
        "PATH": export["onnx"],
        "INPUTS": str(tmp_path / "inputs.npy"),
        "OUTPUTS": str(tmp_path / "outputs.npz"),
    }
    report = fixtures.run_without_solo_tf(FRESH_SCRIPT, variables, tmp_path)
    assert report["node_domains"] == [""], report  # the standard ONNX domain only
    assert set(report["opset_imports"]) <= {"", "ai.onnx"}, report
    assert report["opset_imports"][""] >= 17 and report["functions"] == 0
    assert report["input"] == ["image", "tensor(uint8)"]
    got_all = np.load(tmp_path / "outputs.npz")
    total = 0
    for k, image in enumerate(padded):
        got = {key.split("/")[1]: got_all[key] for key in got_all.files if key.startswith(f"{k}/")}
        want = saved_model(image)
        assert set(got) == set(want)
        for key, value in want.items():
            assert got[key].shape == value.shape and got[key].dtype == value.dtype, key
        fixtures.assert_same_detections(one_image(got), one_image(want))
        total += int(want["num_detections"][0])
    assert total >= len(padded), f"{export['head']}: the tiny model should detect something"


@pytest.mark.slow
def test_model_info_and_operators(export):
    info = export["info"]
    assert info["format"] == "onnx" and info["file"] == "model.onnx" and info["opset"] == 17
    assert info["labels"] == fixtures.LABEL_MAP.to_dict()["categories"]
    (image,) = info["inputs"]
    assert image["name"] == "image" and image["shape"] == [1, *SIZE, 3]
    assert image["dtype"] == "uint8"
    k = fixtures.tiny_config().postprocess.max_detections
    outputs = {o["name"]: o for o in info["outputs"]}
    assert [o["name"] for o in info["outputs"]] == list(DETECTION_KEYS)
    assert outputs["detection_masks"]["shape"] == [1, k, *SIZE]
    assert outputs["detection_masks"]["dtype"] == "uint8"
    assert outputs["detection_classes"]["dtype"] == "int32"
    assert outputs["num_detections"]["shape"] == [1]
    assert all(o["meaning"] for o in info["outputs"])
    assert info["preprocessing"]["input_size"] == list(SIZE)
    np.testing.assert_allclose(info["preprocessing"]["pad_colour"], fixtures.PAD_COLOUR, atol=1e-3)
    model = onnx.load(export["onnx"])
    assert info["operators"] == onnx_export.check_operators(model)
    # Matrix NMS is matmuls and reductions; the post-processing sorts with TopK.
    assert {"Conv", "MatMul", "TopK", "Resize", "Sigmoid"} <= set(info["operators"])


class _LetterboxedSavedModel:
    """The converted SavedModel behind ``TFLitePredictor.predict``'s letterbox and mapping."""

    def __init__(self, run, names):
        self.run, self.names = run, names
        self.input_size, self.input_dtype = SIZE, np.dtype(np.uint8)
        self.label_map, self.pad_colour = None, fixtures.PAD_COLOUR

    predict = exported.TFLitePredictor.predict


@pytest.mark.slow
def test_predictor_maps_back_to_the_original_image(export, saved_model):
    if export["head"] != HEADS[0]:
        pytest.skip("the predictor does not depend on the head")
    predictor = ONNXPredictor(export["onnx"])
    assert predictor.input_size == SIZE and predictor.input_dtype == np.uint8
    np.testing.assert_allclose(predictor.pad_colour, fixtures.PAD_COLOUR, atol=1e-3)
    assert predictor.names == {1: "circle", 5: "square", 9: "triangle"}
    reference = _LetterboxedSavedModel(saved_model, predictor.names)
    for image in validation_images(2):
        dets, names = predictor(image)
        assert names == predictor.names
        assert dets["detection_masks"].shape[1:] == image.shape[:2]
        fixtures.assert_same_detections(dets, reference.predict(image)[0])
        padded = predictor.run(letterboxed(image))
        count = int(padded["num_detections"][0])
        np.testing.assert_array_equal(
            dets["detection_scores"], padded["detection_scores"][0, :count]
        )


@pytest.mark.slow
def test_evaluate_onnx_matches_the_saved_model(export, saved_model, tmp_path):
    """``evaluate --onnx`` (the command) and the SavedModel through the same letterbox."""
    if export["head"] != HEADS[0]:
        pytest.skip("evaluation does not depend on the head")
    split = shapes.generate(str(tmp_path / "shapes"), num_train=0, num_val=4, min_size=96,
                            max_size=160)  # fmt: skip
    split_flags = [f"--val_annotations={split['val_annotations']}"]
    split_flags += [f"--val_images={split['val_images']}"]
    out = tmp_path / "eval"
    _run([sys.executable, "-m", "solo_tf.evaluate", f"--onnx={export['onnx']}",
          *split_flags, f"--output_dir={out}"])  # fmt: skip
    by_onnx = json.loads((out / "metrics.json").read_text())
    reference = _LetterboxedSavedModel(saved_model, fixtures.LABEL_MAP.names_by_id())
    by_saved_model = eval_lib.evaluate_predictor(
        reference,
        annotations=split["val_annotations"],
        images=split["val_images"],
        progress=False,
    )
    assert by_onnx["num_images"] == by_saved_model["num_images"] == 4
    for key in eval_lib.SUMMARY_KEYS:
        assert by_onnx[key] == pytest.approx(by_saved_model[key], abs=1e-3), key
    detections = json.loads((out / "detections.json").read_text())
    scores = [sorted(r["score"] for r in d) for d in (detections, by_saved_model["detections"])]
    assert len(scores[0]) == len(scores[1]) > 0
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-3)


def _tiny_model(domain: str, extra_import: str = ""):
    """A one-node ONNX model (Relu) in ``domain``, optionally importing another domain."""
    helper = onnx.helper
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    node = helper.make_node("Relu", ["x"], ["y"], domain=domain)
    imports = [helper.make_opsetid("", 17)]
    imports += [helper.make_opsetid(d, 1) for d in {domain, extra_import} - {"", "ai.onnx"}]
    return helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=imports)


def test_unused_domains_are_dropped_and_custom_domains_refused():
    model = onnx_export.drop_unused_domains(_tiny_model("", extra_import="ai.onnx.ml"))
    assert [o.domain for o in model.opset_import] == [""]
    assert onnx_export.check_operators(model) == ["Relu"]
    custom = onnx_export.drop_unused_domains(_tiny_model("com.microsoft"))
    assert {o.domain for o in custom.opset_import} == {"", "com.microsoft"}
    with pytest.raises(RuntimeError, match="com.microsoft"):
        onnx_export.check_operators(custom)


def test_node_domains_looks_inside_subgraphs():
    inner = _tiny_model("com.example").graph
    helper = onnx.helper
    cond = helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    branch = helper.make_node("If", ["c"], ["y"], then_branch=inner, else_branch=inner)
    model = helper.make_model(helper.make_graph([branch], "outer", [cond], [y]))
    assert onnx_export.node_domains(model) == {"": ["If"], "com.example": ["Relu"]}


def _resize_model(in_size: int, out_size: int):
    """x [1, 1, in, in] -> Resize (bilinear, half-pixel) with float32 scales out / in."""
    helper = onnx.helper
    scales = np.array([1, 1, out_size / in_size, out_size / in_size], np.float32)
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, in_size, in_size])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 1, None, None])],
        initializer=[onnx.numpy_helper.from_array(scales, "scales")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _inferred_output_shape(model) -> list[int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    return [d.dim_value for d in inferred.graph.output[0].type.tensor_type.shape.dim]


def test_resize_by_sizes_gives_the_exact_output_size():
    """48 -> 20 by float32 scales: ONNX infers floor(48 * 0.41666666) = 19 (the demo model's
    GroupNorm Reshape to 20 x 20 then fails to load); by sizes, 20, and the values are
    TensorFlow's bilinear resize (half-pixel centres) of the same input."""
    import onnxruntime  # optional extra (solo-tf[onnx])

    assert _inferred_output_shape(_resize_model(48, 20)) == [1, 1, 19, 19]
    fixed = onnx_export.resize_by_sizes(_resize_model(48, 20))
    assert _inferred_output_shape(fixed) == [1, 1, 20, 20]
    (sizes,) = fixed.graph.initializer  # the unused scales are gone
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(sizes), [1, 1, 20, 20])
    onnx.checker.check_model(fixed)
    x = np.arange(48 * 48, dtype=np.float32).reshape(1, 1, 48, 48) % 7
    (y,) = onnxruntime.InferenceSession(fixed.SerializeToString()).run(None, {"x": x})
    want = tf.image.resize(x[0].transpose(1, 2, 0), (20, 20), "bilinear").numpy()
    np.testing.assert_allclose(y[0].transpose(1, 2, 0), want, atol=1e-4)


def test_bad_arguments_fail_before_converting(tmp_path):
    with pytest.raises(ValueError, match="multiples of 32"):
        onnx_export.export_onnx(None, str(tmp_path), (100, 128))
    with pytest.raises(ValueError, match="17 or later"):
        onnx_export.export_onnx(None, str(tmp_path), SIZE, opset=13)
    assert not os.listdir(tmp_path)
