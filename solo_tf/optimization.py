"""Learning-rate schedule and gradient processing for the SOLO training loop.

The reference recipe (mmdetection's SGD): gradients of the whole global batch are clipped by
global norm (35), then L2 weight decay is added to each gradient, then SGD with momentum
steps. Keras 3 optimisers sum gradients across replicas inside ``apply_gradients``, which is
too late for a global-norm clip, so the loop all-reduces itself (``reduce_and_clip``) and
hands Keras gradients pre-divided by the number of replicas.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from solo_tf.config import TrainConfig


class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from ``base * warmup_factor`` to ``base``, then step decay (the
    reference: times ``decay_rate`` at each boundary) or, with ``decay="linear"``, a straight
    line from ``base`` at the end of the warm-up to 0 at ``total_steps`` (boundaries unused)."""

    def __init__(
        self,
        base_lr,
        warmup_steps,
        warmup_factor,
        boundaries,
        decay_rate,
        decay="step",
        total_steps=0,
    ):
        super().__init__()
        if decay not in ("step", "linear"):
            raise ValueError(f"decay={decay!r}: need step or linear")
        if decay == "linear" and total_steps <= warmup_steps:
            raise ValueError(f"linear decay needs total_steps ({total_steps}) > warm-up steps")
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.boundaries = [int(b) for b in boundaries]
        self.decay_rate = float(decay_rate)
        self.decay = decay
        self.total_steps = int(total_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        if self.decay == "linear":
            left = (self.total_steps - step) / float(self.total_steps - self.warmup_steps)
            lr = self.base_lr * tf.clip_by_value(left, 0.0, 1.0)
        else:
            decays = tf.add_n(
                [tf.cast(step >= b, tf.float32) for b in self.boundaries] + [tf.constant(0.0)]
            )
            lr = self.base_lr * tf.pow(self.decay_rate, decays)
        if self.warmup_steps > 0:
            # mmdetection's linear warm-up: factor goes from warmup_factor to 1.
            progress = tf.minimum(step / self.warmup_steps, 1.0)
            factor = self.warmup_factor + (1.0 - self.warmup_factor) * progress
            lr = lr * factor
        return lr

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
            "boundaries": self.boundaries,
            "decay_rate": self.decay_rate,
            "decay": self.decay,
            "total_steps": self.total_steps,
        }


def total_and_decay_steps(config: TrainConfig, steps_per_epoch: int) -> tuple[int, list[int]]:
    """Total training steps and decay boundaries, from epochs unless steps are given."""
    if config.total_steps > 0:
        return config.total_steps, list(config.decay_steps)
    total = int(math.ceil(config.epochs * steps_per_epoch))
    return total, [int(round(e * steps_per_epoch)) for e in config.decay_epochs]


def build_optimizer(config: TrainConfig, steps_per_epoch: int):
    """The optimiser on the warm-up + step schedule.

    SGD (the reference): momentum; weight decay is added to the gradients by the loop
    (``loop_weight_decay``). AdamW: Keras' decoupled weight decay.
    """
    total, boundaries = total_and_decay_steps(config, steps_per_epoch)
    schedule = WarmupStepDecay(
        config.learning_rate,
        config.warmup_steps,
        config.warmup_factor,
        boundaries,
        config.decay_rate,
        decay=config.lr_decay,
        total_steps=total,
    )
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=config.weight_decay)
    return keras.optimizers.SGD(learning_rate=schedule, momentum=config.momentum)


def loop_weight_decay(config: TrainConfig) -> float:
    """L2 decay the loop adds to gradients: SGD's; AdamW decays weights itself."""
    return config.weight_decay if config.optimizer == "sgd" else 0.0


def reduce_and_clip(grads, variables, clip_norm: float, weight_decay: float):
    """All-reduce (sum) replica gradients, clip by global norm, add L2 weight decay.

    Call inside ``strategy.run``. Returns the processed gradients, identical on every replica,
    and the global norm before clipping.
    """
    ctx = tf.distribute.get_replica_context()
    grads = [
        tf.zeros_like(v) if g is None else tf.cast(g, v.dtype)
        for g, v in zip(grads, variables, strict=True)
    ]
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    norm = tf.linalg.global_norm(grads)
    if clip_norm > 0:
        grads, _ = tf.clip_by_global_norm(grads, clip_norm, use_norm=norm)
    if weight_decay > 0:
        grads = [
            g + weight_decay * tf.convert_to_tensor(v)
            for g, v in zip(grads, variables, strict=True)
        ]
    return grads, norm


def apply_reduced_gradients(optimizer, grads, variables):
    """Apply already all-reduced gradients through a Keras optimiser that sums them again."""
    ctx = tf.distribute.get_replica_context()
    replicas = ctx.num_replicas_in_sync if ctx is not None else 1
    if replicas > 1:
        grads = [g / replicas for g in grads]
    optimizer.apply_gradients(zip(grads, variables, strict=True))
