"""scripts/demo.py's time estimate: the formula by hand, and its machine probe on a tiny recipe."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from benchmarks.flops import function_flops
from solo_tf import flags as solo_flags
from solo_tf.modeling import factory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "experiments", "tiny.flags")


def load_demo():
    spec = importlib.util.spec_from_file_location("demo", os.path.join(ROOT, "scripts", "demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_expected_seconds_by_hand():
    demo = load_demo()
    # 13600 images of 9.25 GFLOPs at 0.085 * 105 GFLOP/s: 13600 * 9.25 / 8.925 = 14095.24 s.
    train_s, total_s = demo.expected_seconds(13600, 9.25, 105.0)
    assert train_s == pytest.approx(13600 * 9.25 / (demo.TRAIN_EFFICIENCY * 105.0))
    assert demo.TRAIN_EFFICIENCY == 0.085 and train_s == pytest.approx(14095.24, abs=0.01)
    assert total_s - train_s == pytest.approx(demo.OTHER_STAGES_S + demo.OTHER_STAGES_GFLOP / 105.0)
    # Twice the peak: half the training and half the peak-bound rest; a third of the FLOPs, a
    # third of the training.
    fast_train, fast_total = demo.expected_seconds(13600, 9.25, 210.0)
    assert fast_train == pytest.approx(train_s / 2)
    assert fast_total - fast_train - demo.OTHER_STAGES_S == pytest.approx(
        (total_s - train_s - demo.OTHER_STAGES_S) / 2
    )
    assert demo.expected_seconds(13600, 9.25 / 3, 105.0)[0] == pytest.approx(train_s / 3)


def test_probe_counts_the_recipe_forward_flops(tmp_path):
    demo = load_demo()
    # tiny.flags with progressive resizing: 1 of its 4 steps at 96 x 96 (--early_size=96).
    flagfile = tmp_path / "tiny_early.flags"
    flagfile.write_text(f"--flagfile={TINY}\n--early_steps=1\n--early_size=96\n")
    out = subprocess.run(
        [sys.executable, "-c", demo.PROBE, str(flagfile)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    machine = json.loads(out.stdout.strip().splitlines()[-1])
    # tiny.flags: no --mixed_precision (float32); 4 steps of 4 images.
    assert machine["dtype"] == "float32" and machine["gflops"] > 0
    assert machine["train_images"] == 16
    config = solo_flags.config_from_args([f"--flagfile={TINY}", "--model_dir=unused"], "test")
    model = factory.build_model(config.model)

    def forward(size):
        spec = tf.TensorSpec([1, *size, 3], tf.float32)
        return function_flops(lambda x: model(x, training=False), [spec]) / 1e9

    expected = forward(config.data.output_size)
    assert machine["forward_gflops_per_image"] == pytest.approx(expected, rel=1e-6)
    assert 0.1 < expected < 5.0  # the tiny recipe at 128 x 128
    # The schedule's mean: one step at 96 x 96, three at 128 x 128.
    mean = (forward((96, 96)) + 3 * expected) / 4
    assert machine["train_gflops_per_image"] == pytest.approx(mean, rel=1e-6)
    assert mean < 0.95 * expected


def _stage(tmp_path, name, code):
    marker = str(tmp_path / f"{name}.done")
    script = f"import time, pathlib; {code}; pathlib.Path({marker!r}).touch()"
    return (name, [sys.executable, "-c", script], marker)


def test_later_stages_run_side_by_side_with_their_logs(tmp_path):
    demo = load_demo()
    # Each stage notes its start and end times; two slots for three stages of 1 s each.
    stages = [
        _stage(tmp_path, name, f"t = time.time(); time.sleep(1); print('{name}', t, time.time())")
        for name in ("a", "b", "c")
    ]
    summary = {"stages": {}}
    demo.run_stages_side_by_side(stages, summary, str(tmp_path / "logs"), jobs=2)
    spans = {}
    for name in "abc":
        word, start, end = (tmp_path / "logs" / f"{name}.log").read_text().split()
        assert word == name
        spans[name] = (float(start), float(end))
    assert spans["b"][0] < spans["a"][1]  # a and b ran at the same time
    assert spans["c"][0] >= min(spans["a"][1], spans["b"][1]) - 0.05  # c waited for a slot
    assert set(summary["stages"]) == {"a", "b", "c"}
    # Done stages are skipped on a second run (the demo resumes).
    again = {"stages": {}}
    demo.run_stages_side_by_side(stages, again, str(tmp_path / "logs"), jobs=2)
    assert again["stages"] == {}


def test_a_failed_stage_names_its_log_and_stops_the_others(tmp_path):
    demo = load_demo()
    stages = [
        _stage(tmp_path, "slow", "time.sleep(30)"),
        _stage(tmp_path, "bad", "print('boom'); raise SystemExit(3)"),
    ]
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"bad failed \(exit 3\).*bad\.log"):
        demo.run_stages_side_by_side(stages, {"stages": {}}, str(tmp_path / "logs"), jobs=2)
    assert time.perf_counter() - start < 20  # the slow one was killed, not waited for
    assert "boom" in (tmp_path / "logs" / "bad.log").read_text()
    assert not os.path.exists(stages[0][2])
