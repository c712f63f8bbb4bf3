"""Learned quality through the real training loop: the tiny model memorises 8 images.

Its own file, and the first that the suite schedules (``tests/conftest.py``): at about 10 minutes
on 2 cores it is the longest test, so a pytest-xdist worker starts on it at once.
"""

import json

import pytest

from solo_tf import eval_lib
from solo_tf.data import shapes
from solo_tf.detector import Detector
from tests.harness.training import run

# Per head: the extra flags on top of experiments/tiny.flags (a decoupled head). SOLOv2 (E = 32
# at stride 4) reached AP 0.915 in 722 s on 2 AVX2 cores (2026-12-01); it runs under
# `make test-all` only, to keep `make test` under 30 minutes.
HEADS = {
    "decoupled": (),
    "solov2": ("--head_type=solov2", "--mask_feature_channels=32", "--mask_feature_mid=32"),
}


@pytest.mark.slow  # trains
@pytest.mark.parametrize("head", ["decoupled", pytest.param("solov2", marks=pytest.mark.soak)])
def test_tiny_model_overfits_eight_images(tmp_path, tmp_path_factory, head):
    """Learned quality: the tiny model memorises 8 embedded images to mask AP50 >= 0.95 and
    AP >= 0.75."""
    data = shapes.generate(
        str(tmp_path_factory.mktemp("overfit")),
        num_train=8,
        num_val=1,
        seed=11,
        min_size=96,
        max_size=128,
    )
    run(
        tmp_path,
        data,
        "--total_steps=600",
        "--decay_steps=500",
        "--optimizer=adamw",
        "--learning_rate=0.003",
        "--weight_decay=0.0001",
        "--warmup_steps=20",
        "--steps_per_loop=50",
        "--checkpoint_every=600",
        "--flip_probability=0",
        # Upscaled 2-2.7x: stride-4 masks are then fine enough for AP at IoU 0.95.
        "--short_sides=256",
        "--max_long_side=256",
        "--eval_short_side=256",
        "--output_size=256,256",
        "--eval_every=300",
        f"--val_annotations={data['train_annotations']}",
        f"--val_images={data['train_images']}",
        *HEADS[head],
    )

    # Periodic evaluation kept the best checkpoint and its metrics.
    with open(tmp_path / "best" / "metrics.json") as f:
        best = json.load(f)
    assert best["step"] in (300, 600)
    detector = Detector.from_model_dir(str(tmp_path), "best")
    assert detector.config.model.head_type == head
    metrics = eval_lib.evaluate_detector(detector, batch_size=4, progress=False)
    assert metrics["num_images"] == 8
    assert metrics["AP"] == pytest.approx(best["AP"], abs=1e-6)
    # The model plateaus at AP 0.78-0.81 here, AP50 0.98 (deterministic runs, 2026-12-01: 0.812
    # before the fused normalisation kernels, 0.783 with them, 0.796 with them after 800
    # steps): what it misses is mask precision at IoU >= 0.9 (stride-4 masks), and numerically
    # equivalent code lands +-0.03 apart on it. A model that fails to learn scores far below.
    assert metrics["AP50"] >= 0.95, metrics
    assert metrics["AP"] >= 0.75, metrics
