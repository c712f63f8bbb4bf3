"""ONNX export with post-processing inside: ``python -m export.onnx --model_dir DIR``.

Writes ``model.onnx`` and ``model_info.json`` into ``--output_dir``. The ONNX graph is the
TFLite graph (``export.serving_module.tflite_fn``): one uint8 image [1, H, W, 3]
(``--image_size``) that the app has already resized to fit H x W keeping its aspect ratio
and padded at the bottom/right with the model's mean colour (``preprocessing.pad_colour`` of
``model_info.json``), in; ``num_detections`` [1], ``detection_scores``
[1, K], ``detection_classes`` [1, K] (dataset ids), ``detection_masks`` uint8 [1, K, H, W]
and ``detection_boxes`` [1, K, 4], all in input pixels, out. Network, point NMS, maskness,
Matrix NMS and the mask resize all run inside the ONNX graph.

The graph is written as a fixed-shape SavedModel (``export.tflite.write_float_saved_model``)
and converted by tf2onnx (``tf2onnx.tf_loader.from_saved_model`` then
``tf2onnx.convert.from_graph_def``, opset ``--opset``, default 17). Only operators of the
standard ONNX domain are allowed: tf2onnx also declares the ``ai.onnx.ml`` domain, which
no node uses, so unused domain imports are dropped before the check. The file is then run
once in ONNX Runtime and compared with the Keras graph on a probe image.

Needs the optional extra ``pip install solo-tf[onnx]`` (tf2onnx, onnx, onnxruntime).
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
import tensorflow as tf
from absl import flags, logging

from export import serving_module, tflite
from solo_tf import config as cfg
from solo_tf import entry_point
from solo_tf.detector import Detector
from solo_tf.onnx_runtime import ONNXPredictor

FILE_NAME = "model.onnx"
DEFAULT_OPSET = 17
STANDARD_DOMAINS = ("", "ai.onnx")
INPUT_TYPE = "uint8"


def load_detector(model_dir: str, checkpoint: str = "best") -> Detector:
    """The restored model with its config and label map (``.model .config .label_map``)."""
    return Detector.from_model_dir(model_dir, checkpoint)


def convert(saved_model_dir: str, opset: int = DEFAULT_OPSET):
    """The ``serving_default`` signature of a SavedModel as an ``onnx.ModelProto``."""
    from tf2onnx import convert as tf2onnx_convert  # optional extra (solo-tf[onnx])
    from tf2onnx import tf_loader  # optional extra (solo-tf[onnx])

    graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
        saved_model_dir,
        None,
        None,
        tag="serve",
        signatures=[tflite.SIGNATURE],
        return_tensors_to_rename=True,
    )
    model, _ = tf2onnx_convert.from_graph_def(
        graph_def,
        name="solo",
        input_names=inputs,
        output_names=outputs,
        opset=opset,
        tensors_to_rename=renames,
    )
    return resize_by_sizes(drop_unused_domains(model))


def resize_by_sizes(model):
    """Gives every Resize with constant ``scales`` the output ``sizes`` instead; returns it.

    tf2onnx turns TF's resize-to-size into Resize with scales = out / in in float32, and
    ONNX sizes the output as floor(in * scale): 48 -> 20 (the demo model's level-1 grid)
    comes out 19, which ONNX Runtime refuses. With ``sizes`` the output is exact and the
    sampling scale is out / in, as in TensorFlow. Nodes are fixed in graph (topological)
    order, each with the input shape inferred after the fixes before it.
    """
    import onnx  # optional extra (solo-tf[onnx])
    from onnx import numpy_helper  # optional extra (solo-tf[onnx])

    constants = {i.name: i for i in model.graph.initializer}
    for index, node in enumerate(model.graph.node):
        if node.op_type != "Resize" or len(node.input) < 3 or node.input[2] not in constants:
            continue
        shapes = _static_shapes(onnx.shape_inference.infer_shapes(model))
        in_shape = shapes.get(node.input[0])
        scales = numpy_helper.to_array(constants[node.input[2]])
        if not in_shape or len(in_shape) != len(scales) or min(in_shape) <= 0:
            continue
        sizes = np.round(np.array(in_shape) * scales.astype(np.float64)).astype(np.int64)
        name = f"{node.name}_sizes"
        model.graph.initializer.append(numpy_helper.from_array(sizes, name))
        inputs = [*node.input[:2], "", name]
        del model.graph.node[index].input[:]
        model.graph.node[index].input.extend(inputs)
    used = {name for node in model.graph.node for name in node.input}
    kept = [i for i in model.graph.initializer if i.name in used or i.name not in constants]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    return model


def _static_shapes(model) -> dict[str, list[int]]:
    """Tensor name -> dims (0 where unknown) from the value_info of an inferred model."""
    values = [*model.graph.value_info, *model.graph.input, *model.graph.output]
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


def _graphs(graph):
    """``graph`` and every subgraph held by a node attribute (If, Loop, Scan bodies)."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.HasField("g") else []
            for sub in [*subgraphs, *attribute.graphs]:
                yield from _graphs(sub)


def node_domains(model) -> dict[str, list[str]]:
    """Operator domain -> sorted operator types used in the model (subgraphs included)."""
    found: dict[str, set] = {}
    for graph in _graphs(model.graph):
        for node in graph.node:
            found.setdefault(node.domain, set()).add(node.op_type)
    for function in model.functions:
        found.setdefault(f"function:{function.domain}", set()).add(function.name)
    return {domain: sorted(ops) for domain, ops in sorted(found.items())}


def drop_unused_domains(model):
    """Removes the opset imports of domains that no node uses; returns ``model``."""
    used = set(node_domains(model))
    kept = [o for o in model.opset_import if o.domain in STANDARD_DOMAINS or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model


def check_operators(model) -> list[str]:
    """Sorted operator types; raises when a node or an opset import is not standard ONNX."""
    domains = node_domains(model)
    imports = {o.domain for o in model.opset_import}
    bad = {d: ops for d, ops in domains.items() if d not in STANDARD_DOMAINS}
    if bad or imports - set(STANDARD_DOMAINS):
        raise RuntimeError(
            f"operators outside the standard ONNX domain: {bad}, imports {sorted(imports)}"
        )
    return sorted({op for ops in domains.values() for op in ops})


def check_outputs(path: str, probe: np.ndarray, reference: dict) -> dict:
    """Runs ``path`` in ONNX Runtime; raises on non-finite outputs or a Keras mismatch.

    The two run the same float32 graph: the detection count must agree and sorted scores
    within 0.01 (a detection whose score sits on a threshold may legitimately flip).
    """

    outputs = ONNXPredictor(path).run(probe)
    for name, value in outputs.items():
        if not np.all(np.isfinite(value)):
            raise RuntimeError(f"{path}: output {name} is not finite")
    counts = [int(o["num_detections"][0]) for o in (outputs, reference)]
    gap = np.max(np.abs(reference["detection_scores"] - outputs["detection_scores"]))
    logging.info("%s: detections %s (ONNX Runtime, Keras), score gap %.2e", path, counts, gap)
    if abs(counts[0] - counts[1]) > 1 or gap > 0.01:
        raise RuntimeError(f"{path}: detections {counts}, scores differ by {gap:.3f} from Keras")
    return outputs


def model_info(detector, image_size, opset: int, ops: list[str], path: str) -> dict:
    """The ``model_info.json`` contents; tensor details read from the ONNX file ``path``."""

    details = ONNXPredictor(path).signature_details()
    info = {
        "format": "onnx",
        "file": os.path.basename(path),
        "opset": opset,
        "operators": ops,
        "inputs": [
            {
                **details["inputs"]["image"],
                "meaning": tflite.input_meaning(image_size, INPUT_TYPE, detector.pad_colour),
            }
        ],
        "outputs": [
            {**details["outputs"][name], "meaning": tflite.OUTPUT_MEANINGS[name]}
            for name in serving_module.DETECTION_KEYS
        ],
        "labels": detector.label_map.to_dict()["categories"],
        "postprocess_config": cfg.to_dict(detector.config.postprocess),
    }
    return {**info, **tflite.app_steps(image_size, INPUT_TYPE, detector.pad_colour)}


def export_onnx(
    detector,
    output_dir: str,
    image_size: tuple[int, int],
    opset: int = DEFAULT_OPSET,
    saved_model_dir: str = "",
) -> dict:
    """Writes ``model.onnx`` and ``model_info.json``; returns the info dict.

    ``saved_model_dir``: also keep the fixed-shape SavedModel that was converted there.
    """
    import onnx  # optional extra (solo-tf[onnx])

    if any(s % 32 for s in image_size):
        raise ValueError(f"--image_size {image_size} must be multiples of 32")
    if opset < DEFAULT_OPSET:
        raise ValueError(f"--opset {opset}: 17 or later")
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, FILE_NAME)
    with tempfile.TemporaryDirectory() as tmp:
        saved = saved_model_dir or tmp
        tflite.write_float_saved_model(detector, image_size, INPUT_TYPE, saved)
        model = convert(saved, opset)
    ops = check_operators(model)
    onnx.checker.check_model(model, full_check=True)  # with strict shape inference
    onnx.save(model, path)
    logging.info("%s: %d bytes, opset %d, operators %s", path, os.path.getsize(path), opset, ops)
    probe = np.full([1, *image_size, 3], 128, np.uint8)
    fn = serving_module.tflite_fn(detector, image_size)
    check_outputs(path, probe, serving_module.as_numpy(fn(tf.constant(probe))))
    info = model_info(detector, image_size, opset, ops, path)
    with open(os.path.join(output_dir, "model_info.json"), "w") as f:
        json.dump(info, f, indent=1)
    return info


def main(argv):
    del argv
    detector = load_detector(FLAGS.model_dir, FLAGS.checkpoint)
    size = FLAGS.image_size
    size = tflite.parse_size(size) if size else detector.config.data.output_size
    info = export_onnx(detector, FLAGS.output_dir, tuple(size), FLAGS.opset, FLAGS.keep_saved_model)
    print(
        json.dumps({"file": info["file"], "opset": info["opset"], "operators": info["operators"]})
    )


if __name__ == "__main__":
    flags.DEFINE_string("model_dir", None, "A solo-tf model_dir (config.json, label_map.json).")
    flags.DEFINE_string("checkpoint", "best", "best, latest, or a checkpoint path.")
    flags.DEFINE_string("output_dir", None, "Where model.onnx and model_info.json go.")
    flags.DEFINE_string("image_size", "", "Input H,W (multiples of 32); default data.output_size.")
    flags.DEFINE_integer("opset", DEFAULT_OPSET, "ONNX opset (17 or later; tf2onnx 1.17: <= 18).")
    flags.DEFINE_string("keep_saved_model", "", "Also keep the converted SavedModel here.")
    flags.mark_flags_as_required(["model_dir", "output_dir"])
    FLAGS = flags.FLAGS
    entry_point.run(main)
