"""Broken files other than images (issue 11, items 6 and 7): a truncated TFRecord shard, a
truncated latest checkpoint, and the converters' exit on a bad sample.

A corrupt shard is named under ``error`` (before the model is built) and skipped under
``skip``; a broken latest checkpoint is named and the newest readable one is used by
``evaluate --checkpoint latest`` and by a resumed ``train``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import pytest

from tests.faults import runner
from tests.faults.conftest import train_command
from tests.faults.test_decode_faults import evaluate_command

QUICK_S = 120


@pytest.fixture(scope="module")
def shards(split, tmp_path_factory):
    """The split as two TFRecord shards, the first one cut at 60% (a truncated record)."""
    prefix = str(tmp_path_factory.mktemp("tfrecords") / "shapes")
    result = runner.run(
        runner.python_module(
            "solo_tf.data.tfrecord",
            f"--annotations={split.annotations}",
            f"--images={split.images}",
            f"--output={prefix}",
            "--num_shards=2",
        )
    )
    assert result.returncode == 0, result.explain()
    files = sorted(glob.glob(prefix + "-*.tfrecord"))
    assert len(files) == 2, files
    with open(files[0], "rb") as f:
        data = f.read()
    with open(files[0], "wb") as f:
        f.write(data[: int(len(data) * 0.6)])
    return prefix + "-*.tfrecord", files[0]


def test_converter_names_bad_image(tmp_path, split, table):
    data = split.copy(tmp_path / "faulty")
    os.remove(data.path_of(1))
    args = runner.python_module(
        "solo_tf.data.tfrecord",
        f"--annotations={data.annotations}",
        f"--images={data.images}",
        f"--output={tmp_path / 'out'}",
    )
    results = runner.run_repeated(args, runner.REFUSAL_REPEATS)
    for result in results:
        assert result.returncode == 1, result.explain()
        assert "000001.png" in result.error_line and "image id 1" in result.error_line
    table.add("missing image file", "error", "data.tfrecord (converter)", results)


def test_corrupt_shard_error_names_it(tmp_path, shards, table):
    pattern, bad = shards
    args = train_command(str(tmp_path / "model"), _NoSplit(), f"--train_tfrecords={pattern}")
    results = runner.run_repeated(args, runner.REFUSAL_REPEATS)
    for result in results:
        assert result.returncode == 1, result.explain()
        assert os.path.basename(bad) in result.error_line, result.explain()
        assert "cannot be read" in result.error_line
        assert result.seconds < QUICK_S
    table.add("truncated TFRecord shard", "error", "train --train_tfrecords", results)


def test_corrupt_shard_skip(tmp_path, split, shards, model_dir, table):
    """Evaluation reads the readable records and scores only those images."""
    pattern, bad = shards
    out = tmp_path / "eval"
    args = evaluate_command(
        model_dir, split, out, f"--val_tfrecords={pattern}", "--bad_sample_policy=skip"
    )
    result = runner.run(args)
    assert result.returncode == 0, result.explain()
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    read = metrics["num_images"]
    assert 5 <= read < 10, metrics  # shard 2 whole, shard 1 in part
    assert metrics["num_images_left_out"] == 10 - read, metrics  # the tail of shard 1
    assert metrics["cut_shards"] == {bad: read - 5}, metrics  # 5 records in each shard
    said = [line for line in result.stderr.splitlines() if "could not be read past" in line]
    assert said and bad in said[0] and f"first {read - 5} records" in said[0], result.explain()
    left = f"{10 - read} of the 10 images of {split.annotations} could not be read"
    assert left in result.stderr, result.explain()
    table.add(
        "truncated TFRecord shard",
        "skip",
        "evaluate --val_tfrecords",
        result,
        f"exit 0, {read} of 10 images scored (AP {metrics['AP']:.4f}), num_images_left_out "
        f"{metrics['num_images_left_out']}; warns: " + said[0].split("] ", 1)[-1],
    )


class _NoSplit:
    def train_flags(self):
        return []


def _truncate_latest(model):
    data = glob.glob(os.path.join(model, "ckpt-2.data-*"))
    assert data, os.listdir(model)
    with open(data[0], "r+b") as f:
        f.truncate(os.path.getsize(data[0]) // 2)


def test_truncated_checkpoint_evaluate_falls_back(tmp_path, split, trained_dir, table):
    model = str(tmp_path / "model")
    shutil.copytree(trained_dir, model)
    _truncate_latest(model)
    result = runner.run(
        evaluate_command(model, split, tmp_path / "eval", "--max_images=2")
        + ["--checkpoint=latest"]
    )
    assert result.returncode == 0, result.explain()
    said = [line for line in result.stderr.splitlines() if "cannot be read" in line]
    assert said and "ckpt-1" in said[-1] and "ckpt-2" in said[-1], result.explain()
    table.add(
        "truncated latest checkpoint",
        "-",
        "evaluate --checkpoint latest",
        result,
        "exit 0 on ckpt-1; warns: " + said[-1].split("] ", 1)[-1].replace(model, "DIR"),
    )


def test_truncated_checkpoint_resume_falls_back(tmp_path, split, trained_dir, table):
    model = str(tmp_path / "model")
    shutil.copytree(trained_dir, model)
    _truncate_latest(model)
    result = runner.run(train_command(model, split, "--total_steps=3", "--checkpoint_every=1"))
    assert result.returncode == 0, result.explain()
    log = ""
    for path in glob.glob(os.path.join(model, "train.*")):
        if os.path.islink(path):  # train.INFO links the log file
            continue
        with open(path, errors="replace") as f:
            log += f.read()
    assert "Resumed from" in log and "ckpt-1" in log.split("Resumed from")[-1].splitlines()[0]
    said = [line for line in log.splitlines() if "cannot be read" in line]
    assert said, log[-3000:]
    assert os.path.exists(os.path.join(model, "ckpt-3.index"))
    table.add(
        "truncated latest checkpoint",
        "-",
        "train (resume to step 3)",
        result,
        "exit 0: resumed from ckpt-1, trained to ckpt-3; log: "
        + said[-1].split("] ", 1)[-1].replace(model, "DIR"),
    )
