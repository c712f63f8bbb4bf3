"""The custom training loop: tf.distribute, checkpoints, summaries and progress.

One replica step (``make_replica_step``) computes the SOLO loss with positives counted over
the *global* batch, so that per-replica losses and gradients add up to those of the whole
batch; the gradients are all-reduced, clipped and decayed once (``solo_tf.optimization``).
``train`` drives several steps per ``tf.function`` call, saves and resumes checkpoints, stops
cleanly on SIGTERM and stops on a non-finite loss without saving the bad state.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tqdm.auto import tqdm

from solo_tf import config as cfg
from solo_tf import distribute, hardware, losses, optimization, termination
from solo_tf import model_dir as model_dir_lib
from solo_tf.data import errors, inputs
from solo_tf.modeling import factory

LOSS_KEYS = ("loss", "loss_cate", "loss_mask")


class NonFiniteLossError(RuntimeError):
    """Raised when a training step produced a NaN or Inf loss."""


def level_sizes(num_grids) -> list[int]:
    return [s * s for s in num_grids]


def make_replica_step(model, optimizer, config: cfg.SOLOConfig, loss_scale=None):
    """Returns ``step(batch) -> dict`` of per-replica metrics; call inside ``strategy.run``."""
    tconf = config.train
    sizes = level_sizes(config.model.num_grids)
    # XLA compiles the network (forward and, through the tape, backward); the loss gathers
    # positives with data-dependent shapes and stays outside.
    forward = tf.function(lambda images: model(images, training=True), jit_compile=True)
    if not tconf.jit_compile:
        forward = lambda images: model(images, training=True)  # noqa: E731

    def step(batch):
        ctx = tf.distribute.get_replica_context()
        targets = batch["targets"]
        positive = tf.cast(targets["cate_targets"] >= 0, tf.float32)  # [B, G]
        num_pos = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(positive))
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            outputs = forward(batch["image"])
            terms = losses.solo_loss(
                outputs, targets, config.model, config.loss, num_pos_global=num_pos
            )
            loss = terms["loss"]
            if loss_scale is not None:
                loss = loss * loss_scale
        grads = tape.gradient(loss, variables)
        if loss_scale is not None:
            grads = [None if g is None else tf.cast(g, tf.float32) / loss_scale for g in grads]
        grads, grad_norm = optimization.reduce_and_clip(
            grads, variables, tconf.clip_norm, optimization.loop_weight_decay(tconf)
        )
        finite = tf.math.is_finite(grad_norm) & tf.math.is_finite(terms["loss"])
        # A non-finite step applies zero gradients: weights stay finite, the loop stops
        # (float32/bfloat16) or lowers the loss scale (float16).
        grads = [tf.where(finite, g, tf.zeros_like(g)) for g in grads]
        optimization.apply_reduced_gradients(optimizer, grads, variables)
        pos_per_level = tf.split(tf.reduce_sum(positive, 0), sizes)
        metrics = {k: terms[k] for k in LOSS_KEYS}
        metrics["grad_norm"] = grad_norm / ctx.num_replicas_in_sync
        metrics["finite"] = tf.cast(finite, tf.float32) / ctx.num_replicas_in_sync
        for key, count in zip(level_keys, pos_per_level, strict=True):
            metrics[key] = tf.reduce_sum(count)
        return metrics

    level_keys = tuple(f"positives/level_{level}" for level in range(len(sizes)))
    # Known before tracing, so that ``make_train_loop`` traces the step once (in its loop).
    step.metric_keys = (*LOSS_KEYS, "grad_norm", "finite", *level_keys)
    return step


class DynamicLossScale:
    """float16 loss scaling: halve on overflow, double after ``period`` good steps."""

    def __init__(self, initial=2.0**15, period=2000):
        self.scale = tf.Variable(initial, trainable=False, dtype=tf.float32)
        self.good_steps = tf.Variable(0, trainable=False, dtype=tf.int64)
        self.period = period

    def update(self, finite):
        good = tf.where(finite, self.good_steps + 1, tf.zeros_like(self.good_steps))
        grow = good >= self.period
        grown = tf.where(grow, self.scale * 2.0, self.scale)
        self.scale.assign(tf.where(finite, grown, tf.maximum(self.scale / 2.0, 1.0)))
        self.good_steps.assign(tf.where(grow, tf.zeros_like(good), good))


def make_train_loop(strategy, replica_step, loss_scaler=None, jit_compile=False):
    """Returns a tf.function running ``num_steps`` steps; metrics are summed over replicas
    and averaged over steps. ``replica_step``: a ``make_replica_step`` step, whose
    ``metric_keys`` let the loop trace it once."""

    def one_step(iterator):
        per_replica = strategy.run(replica_step, args=(next(iterator),))
        return {
            k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
            for k, v in per_replica.items()
        }

    keys = replica_step.metric_keys

    @tf.function
    def loop(iterator, num_steps):
        # The step is traced once, inside the loop: a first step outside it traced the step a
        # second time, ~15 s of the demo's start (a 2-core CPU).
        totals = {k: tf.zeros([], tf.float32) for k in keys}
        finite_all = tf.constant(True)
        for _ in tf.range(num_steps):
            metrics = one_step(iterator)
            step_finite = metrics["finite"] > 0.5
            finite_all = finite_all & step_finite
            if loss_scaler is not None:
                loss_scaler.update(step_finite)
            totals = {k: totals[k] + metrics[k] for k in totals}
        n = tf.cast(num_steps, tf.float32)
        out = {k: v / n for k, v in totals.items()}
        out["finite"] = tf.cast(finite_all, tf.float32)
        return out

    return loop


def build_state(config: cfg.SOLOConfig, strategy, steps_per_epoch: int):
    """Model, optimiser and checkpoint, created inside the strategy's scope."""
    with strategy.scope():
        model = factory.build_model(config.model)
        h, w = config.data.output_size
        model(tf.zeros([1, h, w, 3]))  # create variables
        if config.train.pretrained_backbone:
            factory.load_pretrained_backbone(model, config.train.pretrained_backbone)
        optimizer = optimization.build_optimizer(config.train, steps_per_epoch)
        optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    return model, optimizer, checkpoint


def _checkpoint_dir(model_dir, strategy):
    if distribute.is_chief(strategy):
        return model_dir
    # Non-chief workers must save too (collectives) but somewhere thrown away.
    task_id = strategy.cluster_resolver.task_id
    return os.path.join(model_dir, f".worker_tmp_{task_id}")


def _steps_this_call(step, total, config: cfg.TrainConfig, early_steps: int = 0):
    """Steps to run before the next checkpoint, evaluation, change of image sizes
    (``early_steps``, progressive resizing) or the end."""
    n = min(config.steps_per_loop, total - step)
    if step < early_steps:
        n = min(n, early_steps - step)
    for every in (config.checkpoint_every, config.eval_every):
        if every > 0:
            n = min(n, every - step % every)
    return max(n, 1)


def _write_summaries(writer, step, metrics, lr, images_per_s):
    with writer.as_default(step=step):
        for key, value in metrics.items():
            if key != "finite":
                tf.summary.scalar(key if "/" in key else f"losses/{key}", value)
        tf.summary.scalar("learning_rate", lr)
        tf.summary.scalar("throughput/images_per_s", images_per_s)


def check_jit_and_precision(tconf: cfg.TrainConfig) -> None:
    """Refuses ``--jit_compile`` with ``--mixed_precision=bfloat16`` on a CPU-only machine.

    XLA's CPU backend rejects the mixed float32/bfloat16 graph of the backward pass ("Seen
    floating point types of different precisions ... mixed precision is disallowed", TF 2.20)
    after the first step has been traced; saying so up front saves the wait.
    """
    if not (tconf.jit_compile and tconf.mixed_precision == "bfloat16"):
        return
    if tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"):
        return
    raise ValueError(
        "--jit_compile with --mixed_precision=bfloat16 does not run on CPU: XLA's CPU backend "
        "refuses mixed float32/bfloat16 graphs. On a CPU use one of them (bfloat16 without "
        "XLA is the faster on CPUs with AMX)."
    )


@dataclasses.dataclass
class _Run:
    """What the loop needs, made by ``setup``."""

    config: cfg.SOLOConfig
    strategy: tf.distribute.Strategy
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    source: inputs.Source
    iterator: object
    input_seed: int  # the shuffle and augmentation seed of the input stream
    loop: object  # make_train_loop's tf.function
    scaler: DynamicLossScale | None
    total_steps: int
    chief: bool

    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())


def check_model_dir(config: cfg.SOLOConfig, label_map) -> None:
    """Refuses a run whose model or categories disagree with what ``model_dir`` holds, and a
    dataset whose categories do not match ``--num_classes``, before anything is built."""
    if label_map.num_classes != config.model.num_classes:
        raise ValueError(
            f"the training data has {label_map.num_classes} categories "
            f"({list(label_map.names)[:10]}...) but --num_classes={config.model.num_classes}: "
            "set --num_classes to the number of categories"
        )
    model_dir = config.train.model_dir
    if not model_dir_lib.has_config(model_dir):
        return
    saved = model_dir_lib.load_config(model_dir)
    differences = model_dir_lib.model_differences(saved.model, config.model)
    if differences:
        raise ValueError(
            f"{model_dir} holds another model; resume it with its own config or pick a new "
            f"--model_dir. Differences: {differences}"
        )
    saved_labels = model_dir_lib.load_label_map(model_dir)
    if saved_labels != label_map:
        raise ValueError(
            f"{model_dir} was trained on categories {saved_labels.names_by_id()}, the data "
            f"has {label_map.names_by_id()}"
        )


def setup(config: cfg.SOLOConfig, strategy=None) -> _Run:
    """Checks, builds (or restores) the model and optimiser, and opens the input stream.

    ``model_dir`` is the source of truth: its config and label map are checked before
    anything is built, the newest readable checkpoint is restored (a broken newer one is
    named and passed over), and only then are ``config.json`` and ``label_map.json`` written.
    """
    config = resolve_precision(config)
    tconf = config.train
    check_jit_and_precision(tconf)
    keras.utils.set_random_seed(tconf.seed)
    if config.data.deterministic:
        tf.config.experimental.enable_op_determinism()
    strategy = strategy or distribute.create_strategy(tconf.strategy)
    source = inputs.open_source(config.data, "train")
    check_model_dir(config, source.label_map)
    steps_per_epoch = max(1, source.num_images // tconf.global_batch_size)
    total_steps, _ = optimization.total_and_decay_steps(tconf, steps_per_epoch)
    model, optimizer, checkpoint = build_state(config, strategy, steps_per_epoch)
    chief = distribute.is_chief(strategy)
    checkpoint_dir = _checkpoint_dir(tconf.model_dir, strategy)
    manager = tf.train.CheckpointManager(
        checkpoint, checkpoint_dir, max_to_keep=tconf.keep_checkpoints
    )
    latest = model_dir_lib.latest_readable_checkpoint(checkpoint_dir)
    if latest:
        checkpoint.restore(latest).assert_existing_objects_matched()
        logging.info("Resumed from %s", latest)
    if chief:
        model_dir_lib.write_metadata(tconf.model_dir, config, source.label_map)
    step = int(optimizer.iterations.numpy())
    input_seed = inputs.base_seed(config.data)
    iterator = _input_iterator(config, strategy, source, step, input_seed)
    scaler = None
    if tconf.mixed_precision == "float16":
        with strategy.scope():
            scaler = DynamicLossScale()
    replica_step = make_replica_step(
        model, optimizer, config, loss_scale=None if scaler is None else scaler.scale
    )
    loop = make_train_loop(strategy, replica_step, scaler)
    return _Run(
        config,
        strategy,
        model,
        optimizer,
        checkpoint,
        manager,
        source,
        iterator,
        input_seed,
        loop,
        scaler,
        total_steps,
        chief,
    )


def _input_iterator(config: cfg.SOLOConfig, strategy, source, step: int, seed: int):
    """The distributed training stream from ``step`` on, at that step's image sizes."""
    data = inputs.data_at_step(config.data, step)
    if data is not config.data:
        logging.info(
            "Progressive resizing: steps %d-%d train at long side %d (canvas %s), then at %d",
            step + 1,
            config.data.early_steps,
            data.max_long_side,
            "x".join(map(str, data.output_size)),
            config.data.max_long_side,
        )
    input_fn = inputs.train_input_fn(config, source, start_step=step, seed=seed)
    return iter(strategy.distribute_datasets_from_function(input_fn))


def train(config: cfg.SOLOConfig, strategy=None, eval_fn=None, progress=True, after_loop=None):
    """Trains (or resumes) the run in ``config.train.model_dir``.

    Returns ``(model, metrics)``: the trained model and the metrics of the last loop call,
    with ``step`` and ``stopped_by_sigterm``. ``after_loop(step)``, when given, is called
    after every loop call (after any checkpoint of that step).

    ``eval_fn(model) -> dict`` with an ``AP`` key, when given, runs every ``eval_every``
    steps; the best checkpoint so far is copied to ``model_dir/best``.
    """
    run = setup(config, strategy)
    tconf = config.train
    writer = tf.summary.create_file_writer(
        os.path.join(tconf.model_dir, "train") if run.chief else os.path.join("/tmp", "solo_null")
    )
    bar = tqdm(total=run.total_steps, initial=run.step, disable=not (progress and run.chief))
    metrics = {}
    try:
        with termination.cooperative() as sigterm:
            metrics = _loop(run, writer, bar, sigterm, eval_fn, after_loop)
            if sigterm.received and not _saved_at(run.manager, run.step):
                run.manager.save(checkpoint_number=run.step)
    finally:
        bar.close()
        writer.flush()
    metrics["step"] = run.step
    metrics["stopped_by_sigterm"] = sigterm.received
    metrics["skipped"] = skip_summary(run.source)
    if metrics["skipped"]:
        logging.warning("bad_sample_policy=skip: %s", metrics["skipped"])
    return run.model, metrics


def skip_summary(source: inputs.Source) -> str:
    """What ``bad_sample_policy=skip`` left out of training so far, in one line ('' under
    ``error``): counts of the images decoded until now, not of the whole dataset."""
    if source.bad_sample_policy != "skip":
        return ""
    reader = source.reader
    if reader is None:
        return errors.skip_summary(None, 0, source.num_images, source.cut_shards)
    return errors.skip_summary(reader.skipped, reader.images_skipped, reader.num_listed)


def _loop(run: _Run, writer, bar, sigterm, eval_fn, after_loop) -> dict:
    """Loop calls until the last step or SIGTERM; returns the last call's metrics."""
    tconf = run.config.train
    metrics, best_ap = {}, _read_best(tconf.model_dir)
    step = run.step
    while step < run.total_steps and not sigterm.received:
        n = _steps_this_call(step, run.total_steps, tconf, run.config.data.early_steps)
        start = time.perf_counter()
        metrics = {k: float(v) for k, v in run.loop(run.iterator, tf.constant(n)).items()}
        seconds = time.perf_counter() - start
        if metrics["finite"] < 0.5 and run.scaler is None:
            raise NonFiniteLossError(
                f"non-finite loss or gradient within steps {step + 1}..{step + n} "
                f"(loss={metrics['loss']}); stopping. The last good checkpoint is kept: "
                f"{run.manager.latest_checkpoint}"
            )
        step = run.step
        if step == run.config.data.early_steps and step < run.total_steps and not sigterm.received:
            # Progressive resizing ends: the stream goes on at full size (the loop traces the
            # step once more, for the new input shapes).
            run.iterator = _input_iterator(
                run.config, run.strategy, run.source, step, run.input_seed
            )
        lr = float(run.optimizer.learning_rate)
        ips = n * tconf.global_batch_size / seconds
        bar.update(n)
        bar.set_postfix(
            loss=f"{metrics['loss']:.3f}",
            cate=f"{metrics['loss_cate']:.3f}",
            mask=f"{metrics['loss_mask']:.3f}",
            lr=f"{lr:.2e}",
            img_s=f"{ips:.1f}",
        )
        _write_summaries(writer, step, metrics, lr, ips)
        if step % tconf.checkpoint_every == 0 or step >= run.total_steps or sigterm.received:
            run.manager.save(checkpoint_number=step)
        if eval_fn is not None and tconf.eval_every > 0:
            if step % tconf.eval_every == 0 or step >= run.total_steps:
                best_ap = _evaluate_and_keep_best(
                    eval_fn,
                    run.model,
                    step,
                    writer,
                    run.manager,
                    tconf.model_dir,
                    best_ap,
                    run.chief,
                )
        if after_loop is not None:
            after_loop(step)
    return metrics


def _saved_at(manager, step) -> bool:
    latest = manager.latest_checkpoint
    return latest is not None and latest.endswith(f"-{step}")


def _read_best(model_dir) -> float:
    path = os.path.join(model_dir, "best", "metrics.json")
    if not tf.io.gfile.exists(path):
        return -1.0
    with tf.io.gfile.GFile(path) as f:
        return float(json.load(f).get("AP", -1.0))


def _evaluate_and_keep_best(eval_fn, model, step, writer, manager, model_dir, best_ap, chief):
    """Runs ``eval_fn``, logs AP, and copies the latest checkpoint to ``best/`` if better."""
    result = eval_fn(model)
    ap = float(result["AP"])
    logging.info("step %d: mask AP %.4f (best so far %.4f)", step, ap, best_ap)
    with writer.as_default(step=step):
        for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
            if key in result:
                tf.summary.scalar(f"eval/{key}", float(result[key]))
        if len(result.get("images", [])):
            tf.summary.image("eval/predictions", result["images"], max_outputs=8)
    if ap > best_ap and chief:
        if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(f"-{step}"):
            manager.save(checkpoint_number=step)
        best_dir = os.path.join(model_dir, "best")
        if tf.io.gfile.exists(best_dir):
            tf.io.gfile.rmtree(best_dir)
        tf.io.gfile.makedirs(best_dir)
        prefix = manager.latest_checkpoint
        for path in tf.io.gfile.glob(prefix + ".*"):
            tf.io.gfile.copy(path, os.path.join(best_dir, os.path.basename(path)))
        with tf.io.gfile.GFile(os.path.join(best_dir, "metrics.json"), "w") as f:
            json.dump(
                {
                    "step": step,
                    **{
                        k: float(v)
                        for k, v in result.items()
                        if isinstance(v, (int, float, np.floating))
                    },
                },
                f,
            )
        return ap
    return best_ap


def resolve_precision(config: cfg.SOLOConfig) -> cfg.SOLOConfig:
    """``config`` with ``--mixed_precision=auto`` replaced by this machine's choice (logged)."""
    requested = config.train.mixed_precision
    chosen = hardware.resolve_mixed_precision(requested)
    if requested == "auto":
        logging.info(
            "--mixed_precision=auto: %s on %s",
            chosen or "float32",
            hardware.describe_cpu(),
        )
    return dataclasses.replace(
        config, train=dataclasses.replace(config.train, mixed_precision=chosen)
    )


def keras_policy(mixed_precision: str) -> None:
    """Sets the global Keras dtype policy for ``--mixed_precision``."""
    policy = {"": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
    keras.mixed_precision.set_global_policy(
        policy[hardware.resolve_mixed_precision(mixed_precision)]
    )
