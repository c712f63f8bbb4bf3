"""The training loop: replicas, resume after a kill, multi-worker, SIGTERM, NaN, SOLOv2.

Each run is a fresh process (``tests/harness/run_training.py``): logical devices and
multi-worker clusters must be set before TensorFlow starts.
"""

import json
import os
import socket

import numpy as np
import pytest
import tensorflow as tf

from solo_tf import config as cfg
from solo_tf import eval_lib, train_lib
from solo_tf.data import shapes
from solo_tf.detector import Detector
from tests.harness.training import HANG_S, run


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    return shapes.generate(str(out), num_train=8, num_val=4, seed=3, min_size=96, max_size=128)


def weights(model_dir, task=0):
    with np.load(os.path.join(model_dir, f"weights_{task}.npz")) as data:
        return {k: data[k] for k in data.files}


def max_abs_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


@pytest.mark.slow  # trains
def test_two_replicas_match_one_replica(tmp_path, tiny_shapes):
    # Frozen BatchNorm (the reference setting): trainable BN would use per-replica batches.
    common = ["--total_steps=1", "--freeze_batchnorm=true", "--strategy=mirrored"]
    run(tmp_path / "one", tiny_shapes, *common, "--logical_cpus=1")
    run(tmp_path / "two", tiny_shapes, *common, "--logical_cpus=2")
    one, two = weights(tmp_path / "one"), weights(tmp_path / "two")
    init_moved = max_abs_diff(one, weights_at_init(tmp_path, tiny_shapes, common))
    assert init_moved > 1e-4  # the step changed the weights, so the comparison means something
    assert max_abs_diff(one, two) <= 1e-5


def weights_at_init(tmp_path, data, common):
    run(
        tmp_path / "zero",
        data,
        *common,
        "--logical_cpus=1",
        "--learning_rate=0",
        "--weight_decay=0",
    )
    return weights(tmp_path / "zero")


@pytest.mark.slow  # trains
def test_resume_after_kill_matches_uninterrupted(tmp_path, tiny_shapes):
    common = ["--total_steps=4", "--checkpoint_every=2", "--steps_per_loop=2"]
    run(tmp_path / "straight", tiny_shapes, *common)
    killed = run(tmp_path / "resumed", tiny_shapes, *common, "--kill_at_step=2", check=False)
    assert killed.returncode == -9  # SIGKILL: nothing after step 2 was saved
    assert not os.path.exists(tmp_path / "resumed" / "weights_0.npz")
    run(tmp_path / "resumed", tiny_shapes, *common)
    with open(tmp_path / "resumed" / "metrics_0.json") as f:
        assert json.load(f)["step"] == 4
    assert max_abs_diff(weights(tmp_path / "straight"), weights(tmp_path / "resumed")) <= 1e-6


@pytest.mark.slow  # trains
def test_sigterm_saves_and_exits_cleanly(tmp_path, tiny_shapes):
    done = run(
        tmp_path,
        tiny_shapes,
        "--total_steps=6",
        "--checkpoint_every=100",
        "--steps_per_loop=1",
        "--sigterm_at_step=1",
    )
    with open(tmp_path / "metrics_0.json") as f:
        metrics = json.load(f)
    assert metrics["stopped_by_sigterm"] and metrics["step"] == 1
    assert os.path.exists(tmp_path / "ckpt-1.index"), done.stderr[-2000:]


@pytest.mark.slow  # trains
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_shapes):
    done = run(
        tmp_path,
        tiny_shapes,
        "--total_steps=6",
        "--checkpoint_every=1",
        "--steps_per_loop=1",
        "--learning_rate=1e12",
        "--clip_norm=0",
        "--warmup_steps=0",
        check=False,
    )
    assert done.returncode != 0
    assert "non-finite loss" in done.stderr
    import tensorflow as tf

    latest = tf.train.latest_checkpoint(str(tmp_path))
    assert latest is not None
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), name


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # trains
def test_multi_worker_two_processes_end_identical(tmp_path, tiny_shapes):
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(
            run(
                tmp_path,
                tiny_shapes,
                "--strategy=multi_worker",
                "--total_steps=3",
                "--steps_per_loop=1",
                "--checkpoint_every=100",
                env={"TF_CONFIG": tf_config},
                background=True,
            )
        )
    outputs = [p.communicate(timeout=HANG_S)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-4000:]
    w0, w1 = weights(tmp_path, 0), weights(tmp_path, 1)
    assert max_abs_diff(w0, w1) == 0.0
    with open(tmp_path / "metrics_0.json") as f:
        assert json.load(f)["step"] == 3


def test_jit_with_bfloat16_is_refused_on_cpu():
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("the check only refuses CPU-only machines")
    with pytest.raises(ValueError, match="jit_compile"):
        train_lib.check_jit_and_precision(
            cfg.TrainConfig(jit_compile=True, mixed_precision="bfloat16")
        )
    train_lib.check_jit_and_precision(cfg.TrainConfig(jit_compile=True))  # float32: fine
    train_lib.check_jit_and_precision(cfg.TrainConfig(mixed_precision="bfloat16"))


@pytest.mark.slow  # trains
def test_solov2_trains_checkpoints_and_evaluates(tmp_path, tiny_shapes):
    """SOLOv2 through the real loop: 2 steps, periodic evaluation, restore and evaluate."""
    solov2 = ["--head_type=solov2", "--mask_feature_channels=16", "--mask_feature_mid=16"]
    run(
        tmp_path,
        tiny_shapes,
        *solov2,
        "--total_steps=2",
        "--steps_per_loop=1",
        "--checkpoint_every=2",
        "--eval_every=2",
        f"--val_annotations={tiny_shapes['val_annotations']}",
        f"--val_images={tiny_shapes['val_images']}",
    )
    with open(tmp_path / "metrics_0.json") as f:
        metrics = json.load(f)
    assert metrics["step"] == 2 and metrics["finite"] == 1.0
    assert 0.0 < metrics["loss_mask"] < 1.0 and np.isfinite(metrics["loss"])
    moved = max_abs_diff(weights(tmp_path), weights_at_init(tmp_path, tiny_shapes, solov2))
    assert moved > 1e-4
    with open(tmp_path / "best" / "metrics.json") as f:
        best = json.load(f)
    detector = Detector.from_model_dir(str(tmp_path), "best")
    assert detector.model.head.__class__.__name__ == "SOLOv2Head"
    evaluated = eval_lib.evaluate_detector(detector, batch_size=4, progress=False)
    assert evaluated["AP"] == pytest.approx(best["AP"], abs=1e-6)


@pytest.mark.slow  # trains
def test_progressive_resizing_trains_and_resumes_across_the_change(tmp_path, tiny_shapes):
    # Steps 1-2 at 96 x 96 (--early_size=96 of 128), 3-4 at 128 x 128; killed at the change,
    # the resumed run continues at full size and ends where an uninterrupted one does.
    common = ["--total_steps=4", "--checkpoint_every=2", "--steps_per_loop=4"]
    early = [*common, "--early_steps=2", "--early_size=96"]
    run(tmp_path / "straight", tiny_shapes, *early)
    killed = run(tmp_path / "resumed", tiny_shapes, *early, "--kill_at_step=2", check=False)
    assert killed.returncode == -9
    run(tmp_path / "resumed", tiny_shapes, *early)
    with open(tmp_path / "resumed" / "metrics_0.json") as f:
        assert json.load(f)["step"] == 4
    straight = weights(tmp_path / "straight")
    assert max_abs_diff(straight, weights(tmp_path / "resumed")) <= 1e-6
    # The early steps did see smaller images: the same run at full size all along ends
    # elsewhere.
    run(tmp_path / "full", tiny_shapes, *common)
    assert max_abs_diff(straight, weights(tmp_path / "full")) > 1e-4
