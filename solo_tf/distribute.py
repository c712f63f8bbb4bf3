"""tf.distribute strategy selection for the training loop."""

from __future__ import annotations

import json
import os

import tensorflow as tf
from absl import logging


def create_strategy(name: str, tpu_address: str = "") -> tf.distribute.Strategy:
    """Returns the strategy named ``name``.

    mirrored: every local GPU (or the CPU, or the logical CPUs a test configured);
    one_device: the first GPU, else the CPU; multi_worker: MultiWorkerMirroredStrategy
    configured by the ``TF_CONFIG`` environment variable; tpu: TPUStrategy.
    """
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        cpus = tf.config.list_logical_devices("CPU")
        devices = [d.name for d in (gpus or cpus)]
        # Several logical CPUs (tests) are replicas too; one CPU is a single replica.
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("strategy=multi_worker needs the TF_CONFIG environment variable")
        cluster = json.loads(os.environ["TF_CONFIG"])
        logging.info("Multi-worker cluster: %s", cluster.get("cluster"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"unknown strategy {name!r}: use mirrored, one_device, multi_worker or tpu")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints, summaries and logs."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type in ("chief", "master") or (
        resolver.task_type == "worker" and resolver.task_id == 0
    )
