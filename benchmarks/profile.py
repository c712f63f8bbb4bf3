"""Where the time goes: training on the demo recipe and SOLO R50 inference, stage by stage.

Run:   .venv/bin/python -m benchmarks.profile                   (both parts, ~6 min on 2 cores)
       .venv/bin/python -m benchmarks.profile --parts=solov2      (~10 min on 2 AVX2 cores)
       .venv/bin/python -m benchmarks.profile --parts=inference --write_docs
Prints markdown tables (the "## Profile" section of docs/benchmarks.md with ``--write_docs``).

* ``train``: ``experiments/shapes.flags`` (the ``make demo`` recipe, in its
  ``--mixed_precision=auto`` precision) on the embedded dataset written to a temporary
  folder. Rows: the input pipeline alone (``inputs.train_input_fn``: PNG decoding,
  augmentation, targets); the full training step alone on one batch held in memory
  (``train_lib`` loop: forward, loss, backward, clip, AdamW); forward only; and
  forward+backward of growing prefixes of the network (backbone, + FPN, + head) with a plain
  sum as the loss, so that differences give each part's share.
* ``inference``: the default ``ModelConfig`` (SOLO R50 and Decoupled SOLO R50, 80 classes,
  random weights) at batch 1, 800 x 1344, float32 and bfloat16 (``mixed_bfloat16``): the
  backbone, + FPN, the whole network, and network + ``postprocess`` (the exported graph
  without the image decoding and resizing) computing either all S^2 mask logits of the
  vanilla head or only the candidates' (``lazy_masks``, what the exports do; the decoupled
  head has one form only).

* ``solov2`` (``--parts=solov2``, not in the default list): SOLOv2 R50 (or any model of
  ``benchmarks.compare_models.FLAGFILES``, ``--solov2_models``) at batch 1, float32, at each
  of ``--solov2_sizes``: backbone, + FPN, the mask feature branch and the category + kernel
  towers each alone on captured FPN outputs, the network, the network + ``postprocess``, and
  ``postprocess`` stage by stage. Section "## Profile: SOLOv2".

Each row: the median wall time of ``--runs`` calls of a ``tf.function`` after 2 warm-up calls
(the first traces). Prefix rows: a part's own cost is the difference between two rows.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks.docs_section import replace_section  # noqa: E402
from solo_tf import config as cfg  # noqa: E402
from solo_tf import distribute, postprocess, train_lib  # noqa: E402
from solo_tf import flags as solo_flags  # noqa: E402
from solo_tf.data import inputs, shapes  # noqa: E402
from solo_tf.detector import Detector  # noqa: E402
from solo_tf.modeling import factory  # noqa: E402

_PARTS = flags.DEFINE_list(
    "parts",
    ["train", "inference", "postprocess"],
    "train, inference, postprocess and/or solov2 (not in the default list).",
)
_RUNS = flags.DEFINE_integer("runs", 5, "Timed calls per row (median reported).")
_HEADS = flags.DEFINE_list("heads", ["vanilla", "decoupled"], "Inference: head types.")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Inference: compute dtypes.")
_SOLOV2_SIZES = flags.DEFINE_list(
    "solov2_sizes", ["512x512", "800x1344"], "The solov2 part: padded input sizes HxW."
)
_SOLOV2_MODELS = flags.DEFINE_list(
    "solov2_models", ["solov2"], "The solov2 part: compare.py targets (solov2, solov2light)."
)
_SOLOV2_DTYPE = flags.DEFINE_enum(
    "solov2_dtype", "float32", ["float32", "bfloat16"], "The solov2 part: compute dtype."
)
_WRITE_DOCS = flags.DEFINE_bool("write_docs", False, "Replace the docs/benchmarks.md section.")

SECTION = "## Profile"
SOLOV2_SECTION = "## Profile: SOLOv2"
DOCS = os.path.join(ROOT, "docs", "benchmarks.md")
INFER_SIZE = (800, 1344)


def _image_info(height: int, width: int):
    """``image_info`` [1, 4, 2] of one image of that size fed as it is (scale 1, no offset)."""
    return tf.constant([[[height, width], [height, width], [1, 1], [0, 0]]], tf.float32)


def timed(fn, runs: int) -> float:
    """Median seconds of ``fn()`` (outputs fetched) after two warm-up calls."""
    for _ in range(2):
        tf.nest.map_structure(lambda t: t.numpy(), fn())
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sum(outputs):
    return tf.add_n([tf.reduce_sum(tf.cast(t, tf.float32)) for t in tf.nest.flatten(outputs)])


def _grad_fn(forward, variables):
    @tf.function
    def run():
        with tf.GradientTape() as tape:
            loss = _sum(forward())
        return tape.gradient(loss, variables)

    return run


def demo_config(data_dir: str) -> cfg.SOLOConfig:
    """The ``make demo`` recipe on the data in ``data_dir``, at its full training size: its
    progressive resizing's smaller early steps are left out (``--early_steps=0``)."""
    ann = os.path.join(data_dir, "annotations")
    config = solo_flags.config_from_args(
        [
            f"--flagfile={os.path.join(ROOT, 'experiments', 'shapes.flags')}",
            "--model_dir=/tmp/unused",
            f"--train_annotations={ann}/instances_train.json",
            f"--train_images={data_dir}/train",
        ],
        "profile",
    )
    full_size = dataclasses.replace(config.data, early_steps=0, early_size=0)
    return dataclasses.replace(config, data=full_size)


def training_step_seconds(config: cfg.SOLOConfig, strategy, iterator, runs: int):
    """(median seconds of ``train_lib``'s full step on one batch of ``iterator`` held in
    memory, the model, that batch). The caller has set the Keras dtype policy."""
    model, optimizer, _ = train_lib.build_state(config, strategy, 75)
    batch = next(iterator)
    fixed = iter(tf.data.Dataset.from_tensors(batch).repeat())
    loop = train_lib.make_train_loop(
        strategy, train_lib.make_replica_step(model, optimizer, config)
    )
    return timed(lambda: loop(fixed, tf.constant(1))["loss"], runs), model, batch


def profile_train(runs: int) -> list[tuple[str, float, str]]:
    """Rows (what, milliseconds per batch of 8, note) for the demo recipe."""
    with tempfile.TemporaryDirectory() as data_dir:
        shapes.generate(data_dir, num_train=64, num_val=1)
        config = demo_config(data_dir)
        train_lib.keras_policy(config.train.mixed_precision)
        try:
            strategy = distribute.create_strategy(config.train.strategy)
            source = inputs.open_source(config.data, "train")
            batch_size = config.train.global_batch_size
            iterator = iter(
                strategy.distribute_datasets_from_function(inputs.train_input_fn(config, source))
            )

            def pipeline_batches():
                for _ in range(3):
                    next(iterator)
                start = time.perf_counter()
                for _ in range(10 * runs):
                    next(iterator)
                return (time.perf_counter() - start) / (10 * runs)

            pipeline_s = pipeline_batches()
            step_s, model, batch = training_step_seconds(config, strategy, iterator, runs)
        finally:
            keras.mixed_precision.set_global_policy("float32")
    images = batch["image"]
    backbone = lambda: model.backbone(images, training=True)  # noqa: E731
    with_fpn = lambda: model.fpn(backbone(), training=True)  # noqa: E731
    whole = lambda: model.head(with_fpn(), training=True)  # noqa: E731
    v = model.backbone.trainable_variables
    rows = [
        ("input pipeline alone (decode, augment, targets)", pipeline_s, f"{batch_size} images"),
        ("training step alone (batch in memory)", step_s, "forward, loss, backward, AdamW"),
        ("forward", timed(tf.function(whole), runs), ""),
        ("backbone fwd+bwd", timed(_grad_fn(backbone, v), runs), ""),
        (
            "backbone + FPN fwd+bwd",
            timed(_grad_fn(with_fpn, v + model.fpn.trainable_variables), runs),
            "",
        ),
        (
            "backbone + FPN + head fwd+bwd",
            timed(_grad_fn(whole, model.trainable_variables), runs),
            "the loss and the optimiser are the rest of the step",
        ),
    ]
    return [(what, seconds * 1e3, note) for what, seconds, note in rows]


def profile_inference(runs: int) -> list[tuple[str, str, str, float]]:
    """Rows (model, dtype, what, milliseconds) at batch 1, 800 x 1344."""
    rows = []
    image = tf.random.uniform([1, *INFER_SIZE, 3], 0, 255)
    info = _image_info(800, 1333)
    from benchmarks.compare_models import numbered_label_map  # noqa: PLC0415 (Model Garden)

    label_map = numbered_label_map(80)
    for head in _HEADS.value:
        config = cfg.SOLOConfig(model=cfg.ModelConfig(head_type=head))
        for dtype in _DTYPES.value:
            keras.utils.set_random_seed(0)
            with factory.compute_dtype_scope(dtype):
                model = factory.build_model(config.model)
            detector = Detector(model=model, config=config, label_map=label_map)
            # Network rows return a sum of their outputs: fetching the vanilla head's
            # [1, 200, 336, 1600] logits to the host would cost more than computing them.
            backbone = lambda m=model: m.backbone(image, training=False)  # noqa: E731
            with_fpn = lambda m=model, b=backbone: m.fpn(b(), training=False)  # noqa: E731
            whole = lambda m=model: _sum(m(image, training=False))  # noqa: E731
            whole_lazy = lambda m=model: _sum(m(image, training=False, lazy_masks=True))  # noqa: E731

            def detect(d=detector, lazy=True):
                return d.detect(image, info, per_image=False, lazy_masks=lazy)

            name = "SOLO R50" if head == "vanilla" else "Decoupled SOLO R50"
            for what, fn in (
                ("backbone", lambda b=backbone: _sum(b())),
                ("backbone + FPN", lambda f=with_fpn: _sum(f())),
                ("network (+ head), all mask logits", whole),
                ("network (+ head), lazy mask outputs", whole_lazy),
                ("network + post-processing, all mask logits", lambda: detect(lazy=False)),
                ("network + post-processing, candidates' masks only (exported)", detect),
            ):
                ms = timed(tf.function(fn), runs) * 1e3
                rows.append((name, dtype, what, ms))
                print(f"{name} {dtype} {what}: {ms:.0f} ms", flush=True)
    return rows


def profile_postprocess(runs: int) -> list[tuple[str, float]]:
    """Rows (stage, milliseconds) of ``postprocess`` on SOLO R50 bfloat16 lazy outputs at
    batch 1, 800 x 1344 (an 800 x 1333 image), stage by stage (its private steps)."""
    keras.utils.set_random_seed(0)
    config = cfg.SOLOConfig()
    with factory.compute_dtype_scope("bfloat16"):
        model = factory.build_model(config.model)
    image = tf.random.uniform([1, *INFER_SIZE, 3], 0, 255)
    outputs = tf.function(lambda: model(image, training=False, lazy_masks=True))()
    info = _image_info(800, 1333)
    return postprocess_stages(outputs, info, config, runs)


def postprocess_stages(outputs, info, config: cfg.SOLOConfig, runs: int):
    """Rows (stage, milliseconds) of ``postprocess`` on captured model ``outputs``: each
    stage alone on captured inputs, then the whole function with every output fetched."""
    mc, pc = config.model, config.postprocess
    cands = postprocess._select_candidates(outputs, mc, pc)
    probs = postprocess._candidate_mask_probs(outputs, cands, mc)
    rescored, binary = postprocess._rescore(probs, cands, mc, pc)
    dets = postprocess._suppress(probs, binary, rescored, pc)
    stride = min(mc.mask_strides)
    masks = postprocess._masks_to_original(dets["probs"], info, stride, None, pc.mask_threshold)
    num_candidates, height, width = probs.shape[1:]
    out_h, out_w = (int(v) for v in info[0, 0].numpy())
    class_ids = tf.range(1, mc.num_classes + 1)
    stages = (
        (
            f"candidates (point NMS, top {num_candidates})",
            lambda: postprocess._select_candidates(outputs, mc, pc),
        ),
        (
            f"candidate masks [{num_candidates}, {height}, {width}]",
            lambda: postprocess._candidate_mask_probs(outputs, cands, mc),
        ),
        ("binarise, areas, maskness", lambda: postprocess._rescore(probs, cands, mc, pc)),
        (
            f"sort, Matrix NMS, top {pc.max_detections}",
            lambda: postprocess._suppress(probs, binary, rescored, pc)["scores"],
        ),
        (
            f"{pc.max_detections} masks to {out_h} x {out_w}",
            lambda: postprocess._masks_to_original(
                dets["probs"], info, stride, None, pc.mask_threshold
            ),
        ),
        ("boxes from the masks", lambda: postprocess._boxes_from_masks(masks)),
        (
            "whole postprocess (every output fetched)",
            lambda: postprocess.postprocess(outputs, info, mc, pc, class_ids),
        ),
    )
    # Each stage returns the sum of its outputs: nothing is pruned from the graph and no large
    # tensor is copied to the host (the sum itself reads the outputs once).
    return [(name, timed(tf.function(lambda f=fn: _sum(f())), runs) * 1e3) for name, fn in stages]


def profile_solov2(runs: int) -> list[tuple[str, str, str, float]]:
    """Rows (model, size, what, milliseconds) of SOLOv2 inference at batch 1 in
    ``--solov2_dtype`` (float32 by default): the models of
    ``benchmarks.compare_models.FLAGFILES`` (random weights), part by part.

    Prefix rows as for the other models (backbone, + FPN); then the two halves of the head
    alone on the FPN outputs (the stride-4 mask feature branch; the category and kernel
    towers on the S x S grids of all levels), the whole network, and the network with
    ``postprocess`` (the exported graph without the image decoding and resizing)."""
    rows = []
    for target in _SOLOV2_MODELS.value:
        for size in _SOLOV2_SIZES.value:
            height, width = (int(v) for v in size.split("x"))
            for what, ms in _solov2_parts(target, height, width, runs):
                rows.append((target, size, what, ms))
                print(f"{target} {size} {what}: {ms:.0f} ms", flush=True)
    return rows


def _solov2_parts(target: str, height: int, width: int, runs: int) -> list[tuple[str, float]]:
    """(what, milliseconds) rows of one SOLOv2 model at one padded input size."""
    from benchmarks import compare_models  # noqa: PLC0415 (imports export/, Model Garden)

    config = compare_models.solo_config(target, (height, width))
    keras.utils.set_random_seed(0)
    with factory.compute_dtype_scope(_SOLOV2_DTYPE.value):
        model = factory.build_model(config.model)
    label_map = compare_models.numbered_label_map(config.model.num_classes)
    detector = Detector(model=model, config=config, label_map=label_map)
    image = tf.random.uniform([1, height, width, 3], 0, 255)
    info = _image_info(height, width)
    head = model.head

    def with_fpn():
        return model.fpn(model.backbone(image, training=False), training=False)

    fpn_out = tf.function(with_fpn)()

    def grids():
        outputs = {}
        for level, x in enumerate(head.level_features(fpn_out)):
            outputs.update(head.grid_outputs(level, x))
        return outputs

    parts = (
        ("backbone", lambda: model.backbone(image, training=False)),
        ("backbone + FPN", with_fpn),
        ("mask feature branch alone (on the FPN outputs)", lambda: head.mask_feature_head(fpn_out)),
        ("category + kernel towers alone, all levels (on the FPN outputs)", grids),
        ("network (backbone + FPN + head)", lambda: model(image, training=False)),
        (
            "network + post-processing (exported graph)",
            lambda: detector.detect(image, info, per_image=False),
        ),
    )
    rows = [(what, timed(tf.function(lambda f=fn: _sum(f())), runs) * 1e3) for what, fn in parts]
    outputs = tf.function(lambda: model(image, training=False))()
    stages = postprocess_stages(outputs, info, config, runs)
    return rows + [(f"post-processing alone: {name}", ms) for name, ms in stages]


def solov2_markdown(rows, runs: int, dtype: str = "float32") -> str:
    from benchmarks.compare_report import LABEL  # noqa: PLC0415 (matplotlib)

    return "\n".join(
        [
            SOLOV2_SECTION,
            "",
            "`python -m benchmarks.profile --parts=solov2` on "
            f"{os.cpu_count()} CPU cores, TensorFlow {tf.__version__}, {dtype}, "
            "batch 1, random "
            f"weights; median of {runs} calls after 2 warm-up calls. The two head rows are "
            "each half of the head alone on precomputed FPN outputs, and the post-processing "
            "rows each stage of `postprocess` alone on captured inputs: parts timed alone do "
            "not add up to the whole, in which TensorFlow runs independent branches side by "
            "side on the two cores.",
            "",
            "| model | padded input | what | ms |",
            "|---|---|---|---:|",
            *[f"| {LABEL.get(m, m)} | {size} | {w} | {ms:.0f} |" for m, size, w, ms in rows],
            "",
        ]
    )


def markdown(train_rows, infer_rows, runs: int, post_rows=()) -> str:
    lines = [
        SECTION,
        "",
        "`python -m benchmarks.profile` on "
        f"{os.cpu_count()} CPU cores, TensorFlow {tf.__version__}; median of {runs} calls after "
        "2 warm-up calls. Prefix rows: a part's own cost is the difference between two rows.",
        "",
    ]
    if train_rows:
        lines += [
            "Training, the `make demo` recipe (`experiments/shapes.flags`), per batch:",
            "",
            "| what | ms per batch | note |",
            "|---|---:|---|",
            *[f"| {what} | {ms:.0f} | {note} |" for what, ms, note in train_rows],
            "",
        ]
    if infer_rows:
        lines += [
            "Inference, default `ModelConfig` (ResNet-50, 80 classes, random weights), batch 1, "
            f"{INFER_SIZE[0]} x {INFER_SIZE[1]} padded input:",
            "",
            "| model | dtype | what | ms |",
            "|---|---|---|---:|",
            *[f"| {m} | {d} | {w} | {ms:.0f} |" for m, d, w, ms in infer_rows],
            "",
        ]
    if post_rows:
        lines += [
            "Post-processing stage by stage, SOLO R50 bfloat16 (lazy mask outputs), batch 1, "
            "800 x 1333 image:",
            "",
            "| stage | ms |",
            "|---|---:|",
            *[f"| {name} | {ms:.0f} |" for name, ms in post_rows],
            "",
        ]
    return "\n".join(lines)


def main(argv):
    del argv
    runs = _RUNS.value
    train_rows = profile_train(runs) if "train" in _PARTS.value else []
    infer_rows = profile_inference(runs) if "inference" in _PARTS.value else []
    post_rows = profile_postprocess(runs) if "postprocess" in _PARTS.value else []
    sections = []
    if train_rows or infer_rows or post_rows:
        sections.append(markdown(train_rows, infer_rows, runs, post_rows))
    if "solov2" in _PARTS.value:
        sections.append(solov2_markdown(profile_solov2(runs), runs, _SOLOV2_DTYPE.value))
    for section in sections:
        print(section)
        if _WRITE_DOCS.value:
            replace_section(DOCS, section)


if __name__ == "__main__":
    app.run(main)
