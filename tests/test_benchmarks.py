"""Smoke tests of the Mask R-CNN comparison (``benchmarks/compare.py`` and the modules it uses).

The fast tests check the pieces on hand-worked cases: FLOP counting, the matmul peak, the
SOLO export config for an input size, the run statistics and alternation, and the report
(ratios, the docs section replaced in place). The ``slow`` ones build Model Garden's Mask
R-CNN training batch and run the whole command at 128 x 128 (minutes: three R50 exports).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from benchmarks import (
    compare_models,
    compare_report,
    compare_targets,
    flops,
    machine_peak,
    profile,
    workers,
)
from benchmarks.docs_section import replace_section

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_conv_flops_counted_by_profiler():
    # 3x3 conv, 3 -> 8 channels, 16 x 16 'same', no bias: 2 * 9 * 3 * 8 * 256 = 110592.
    conv = tf.keras.layers.Conv2D(8, 3, padding="same", use_bias=False)
    conv.build((1, 16, 16, 3))
    spec = [tf.TensorSpec([1, 16, 16, 3], tf.float32)]
    assert flops.function_flops(lambda x: conv(x), spec) == 110592
    assert flops.conv_flops(16, 16, 3, 3, 8) == 110592
    assert flops.conv_flops(15, 15, 1, 4, 4, stride=2) == 2 * 16 * 8 * 8


def test_flops_by_op_type():
    # [4, 5] x [5, 6] matmul: 2 * 4 * 5 * 6 = 240; the bias add of a 3 -> 2 conv on 4 x 5
    # pixels: 40, its kernel 2 * 9 * 3 * 2 * 20 = 2160.
    b = tf.ones([5, 6])
    conv = tf.keras.layers.Conv2D(2, 3, padding="same")
    conv.build((1, 4, 5, 3))

    def fn(a, image):
        return a @ b, conv(image)

    specs = [tf.TensorSpec([4, 5], tf.float32), tf.TensorSpec([1, 4, 5, 3], tf.float32)]
    total, by_type = flops.function_flops_by_type(fn, specs)
    assert by_type == {"MatMul": 240, "Conv2D": 2160, "BiasAdd": 40}
    assert total == 2440


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_matmul_peak(dtype):
    result = machine_peak.matmul_peak(dtype, n=128, runs=2)
    assert result["dtype"] == dtype and result["n"] == 128
    assert len(result["times_s"]) == 2
    np.testing.assert_allclose(result["gflops"], 2 * 128**3 / result["best_s"] / 1e9)


def test_solo_config_for_size():
    config = compare_models.solo_config("decoupled", (800, 1333))
    assert config.model.head_type == "decoupled" and config.model.num_classes == 80
    assert config.model.backbone_depth == 50
    assert config.data.eval_short_side == 800 and config.data.max_long_side == 1333
    assert config.data.output_size == (800, 1344)
    assert compare_models.solo_config("vanilla", (512, 512)).data.output_size == (512, 512)


def test_solov2_configs_are_the_experiment_flagfiles():
    """SOLOv2 rows: the model of the authors' configs (experiments/), random weights."""
    full = compare_models.solo_config("solov2", (800, 1333))
    assert full.model.head_type == "solov2" and full.model.backbone_depth == 50
    assert (full.model.head_channels, full.model.stacked_convs) == (512, 4)
    assert full.model.mask_feature_channels == 256 and full.model.num_classes == 80
    assert full.targets.scale_ranges[0] == (1.0, 96.0)
    assert full.data.output_size == (800, 1344)
    light = compare_models.solo_config("solov2light", (448, 768))
    assert (light.model.head_channels, light.model.stacked_convs) == (256, 2)
    assert light.model.mask_feature_channels == 128
    assert light.targets.scale_ranges == ((1, 56), (28, 112), (56, 224), (112, 448), (224, 896))
    assert light.data.output_size == (448, 768) and light.train.pretrained_backbone == ""


def test_targets_at_sizes():
    every = ["vanilla", "solov2", "solov2_bf16", "solov2light", "solov2light_bf16", "maskrcnn"]
    at = compare_targets.targets_at
    assert at((512, 512), every) == ["vanilla", "solov2", "solov2_bf16", "maskrcnn"]
    assert at((800, 1333), every) == ["vanilla", "solov2", "solov2_bf16", "maskrcnn"]
    assert at((448, 768), every) == ["solov2light", "solov2light_bf16", "maskrcnn"]


def test_parse_size_and_paths():
    assert compare_targets.parse_size("800x1333") == (800, 1333)
    assert compare_targets.size_name((512, 640)) == "512x640"
    path = compare_targets.saved_model_dir("/w", "maskrcnn", (512, 512))
    assert path == "/w/saved_models/maskrcnn_512x512/1"
    assert compare_targets.saved_model_dir("/w", "vanilla", (8, 8)).endswith("solo_vanilla_8x8/1")


def test_stats():
    result = workers.stats([5.0, 1.0, 2.0, 4.0, 3.0])
    assert result["median_s"] == 3.0 and result["min_s"] == 1.0 and result["max_s"] == 5.0
    assert result["p90_s"] == pytest.approx(4.6)  # linear between 4 and 5


class _FakeWorker:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def call(self, message):
        self.log.append(self.name)
        return {"seconds": float(len(self.log)), "rss_mib": 1.0}


def test_alternate_rotates_order():
    log = []
    fakes = {n: _FakeWorker(n, log) for n in ("a", "b", "c")}
    result = workers.alternate(fakes, {}, warmup=1, runs=3)
    assert log == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert result["times"]["a"] == [4.0, 9.0, 11.0]
    assert result["last"]["b"]["seconds"] == 12.0


def _results():
    def timing(median):
        return {"median_s": median, "p90_s": median * 1.5, "min_s": median, "max_s": median}

    def model(b1, b8):
        return {
            "batch1": timing(b1),
            "batch8": timing(b8),
            "rss_batch1_mib": 1024.0,
            "rss_batch8_mib": 2048.0,
        }

    return {
        "command": "python benchmarks/compare.py --work_dir w",
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "memory_gib": 8.0,
            "gpu": "none",
            "tensorflow": "2.20.0",
            "tf_models_official": "2.20.0",
            "load_average_start": (1.0, 1.0, 1.0),
        },
        "quick": True,
        "runs": {"batch1": 20, "batch8": 2, "train": 3},
        "train_size": [640, 640],
        "started": "start",
        "finished": "end",
        "load_average_end": (2.0, 2.0, 2.0),
        "errors": {},
        "machine_peak": [
            {"dtype": "float32", "n": 4096, "gflops": 100.0},
            {"dtype": "bfloat16", "n": 4096, "gflops": 400.0},
        ],
        "exports": {
            "vanilla_512x512": {"flops": 50e9, "flops_by_type": {"Conv2D": 40e9, "Mul": 10e9}},
            "vanilla_bf16_512x512": {"flops": 50e9},
            "maskrcnn_512x512": {"flops": 100e9},
        },
        "inference": {
            "512x512": {
                "vanilla": model(0.5, 2.0),
                "vanilla_bf16": model(0.25, 1.0),
                "maskrcnn": model(1.0, 8.0),
            }
        },
        "training": {
            "vanilla": {"median_s": 3.0, "p90_s": 3.5, "peak_rss_mib": 4096.0},
            "maskrcnn": {"median_s": 6.0, "p90_s": 6.5, "peak_rss_mib": 2048.0},
        },
    }


def test_split_target():
    assert compare_targets.split_target("vanilla") == ("vanilla", "float32")
    assert compare_targets.split_target("decoupled_bf16") == ("decoupled", "bfloat16")


def test_markdown_ratios():
    text = compare_report.markdown(_results())
    assert text.startswith(compare_report.SECTION)
    # vanilla: 500 ms vs 1000 ms -> 0.50; 4 images/s vs 1 -> 4.00; 50 GFLOPs / 0.5 s = 100
    # GFLOP/s = 100% of the 100 GFLOP/s peak.
    assert "| SOLO R50 | 512x512 (512x512) | 500 | 750 | 0.50 | 4.00 | 4.00 | 1.00 / 2.00 |" in text
    assert "| 50 | 100 | 100% float32 |" in text
    # bfloat16: 50 GFLOPs / 0.25 s = 200 GFLOP/s = 50% of the 400 GFLOP/s bfloat16 peak.
    assert "| SOLO R50, bfloat16 | 512x512 (512x512) | 250 | 375 | 0.25 | 8.00 | 8.00 |" in text
    assert "| 50 | 200 | 50% bfloat16 |" in text
    assert "| Mask R-CNN R50-FPN (Model Garden) | 512x512 (512x512) | 1000 | 1500 | 1.00 |" in text
    assert "| SOLO R50 | 3.00 | 3.50 | 0.50 | 4.00 |" in text
    assert "| float32 | 4096 | 100 |" in text
    assert "- SOLO R50, 512x512: 50 GFLOPs; Conv2D 80%, Mul 20%" in text


def test_write_section_keeps_other_sections(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\n## A\n\nkeep a\n")
    replace_section(str(path), compare_report.SECTION + "\n\nfirst\n")
    path.write_text(path.read_text() + "\n## B\n\nkeep b\n")
    replace_section(str(path), compare_report.SECTION + "\n\nsecond\n")
    text = path.read_text()
    assert "keep a" in text and "keep b" in text and "second" in text
    assert "first" not in text and text.count(compare_report.SECTION) == 1
    assert text.index("## A") < text.index(compare_report.SECTION) < text.index("## B")


def test_plot_writes_png(tmp_path):
    path = str(tmp_path / "plot.png")
    compare_report.plot(_results(), [path])
    with open(path, "rb") as f:
        assert f.read(4) == b"\x89PNG"


@pytest.mark.slow
def test_peer_training_batch_structure():
    peer = pytest.importorskip("benchmarks.peer_maskrcnn")
    params = peer.experiment_config((128, 128), batch_size=2)
    images, labels = peer.synthetic_batch(params, 2)
    assert images.shape == (2, 128, 128, 3)
    assert labels["gt_boxes"].shape == (2, 100, 4)
    assert int(tf.reduce_sum(tf.cast(labels["gt_classes"] > 0, tf.int32))) == 16
    assert set(labels["rpn_score_targets"]) == {"2", "3", "4", "5", "6"}
    assert peer.padded_size((800, 1333)) == (832, 1344)


@pytest.mark.slow
@pytest.mark.soak  # exports and times Mask R-CNN and SOLO in worker processes: about an hour here
def test_compare_end_to_end_tiny(tmp_path):
    command = [
        sys.executable,
        os.path.join(ROOT, "benchmarks", "compare.py"),
        f"--work_dir={tmp_path}",
        "--sizes=128x128",
        "--runs=2",
        "--batch_runs=1",
        "--train_runs=1",
        "--train_size=128x128",
        "--nowrite_docs",
        # The vanilla head shares every code path with the decoupled one here; leaving it out
        # keeps this test within a few minutes on 2 cores.
        "--models=decoupled,decoupled_bf16,maskrcnn",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert not results["errors"], results["errors"]
    assert set(results["inference"]["128x128"]) == {"decoupled", "decoupled_bf16", "maskrcnn"}
    assert set(results["training"]) == {"decoupled", "maskrcnn"}  # float32 steps only
    for target in results["inference"]["128x128"].values():
        assert target["batch8"]["median_s"] > 0
    assert os.path.exists(tmp_path / "saved_models" / "maskrcnn_128x128" / "1" / "saved_model.pb")
    assert os.path.exists(tmp_path / "latency_vs_size.png")


def test_replace_section_appends_and_checks_the_heading(tmp_path):
    path = tmp_path / "b.md"
    replace_section(str(path), "## New\n\nbody\n")  # no file yet: a new document
    assert path.read_text() == "# Benchmarks\n\n## New\n\nbody\n"
    replace_section(str(path), "## New\n\nbody 2")
    assert path.read_text() == "# Benchmarks\n\n## New\n\nbody 2\n"
    with pytest.raises(ValueError, match="heading"):
        replace_section(str(path), "no heading\n")


def test_profile_markdown_tables():
    text = profile.markdown(
        [("forward", 173.4, "")], [("SOLO R50", "bfloat16", "backbone", 812.6)], runs=5
    )
    assert text.startswith(profile.SECTION)
    assert "| forward | 173 |  |" in text
    assert "| SOLO R50 | bfloat16 | backbone | 813 |" in text


def test_profile_solov2_markdown_table():
    text = profile.solov2_markdown(
        [("solov2", "512x512", "backbone", 412.4), ("solov2light", "448x768", "backbone", 9.5)],
        runs=5,
    )
    assert text.startswith(profile.SOLOV2_SECTION)
    assert "| SOLOv2 R50 | 512x512 | backbone | 412 |" in text
    assert "| SOLOv2-Light R50 | 448x768 | backbone | 10 |" in text
    assert "median of 5 calls" in text and ", float32, batch 1" in text
    text = profile.solov2_markdown([("solov2", "512x512", "backbone", 1.0)], 5, "bfloat16")
    assert ", bfloat16, batch 1" in text
