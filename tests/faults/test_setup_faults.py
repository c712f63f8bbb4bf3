"""Faults found before a step runs (issue 11, items 3, 5 and 8): bad flags, a 2-point polygon,
a dataset with more categories than ``--num_classes``, a model_dir that holds another model.

Each is refused quickly, exit code 1, with one line naming the flag, the annotation or the
fields, and a refused run leaves the model_dir as it was.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.faults import runner
from tests.faults.conftest import train_command
from tests.faults.test_decode_faults import evaluate_command

# Refused before the model is built: well within a minute even on a loaded machine.
QUICK_S = 120


@pytest.mark.parametrize(
    "flag, says",
    [("--output_size=100,100", "multiples of 32"), ("--global_batch_size=0", "at least 1")],
)
def test_bad_flag_named(tmp_path, split, table, flag, says):
    results = runner.run_repeated(
        train_command(str(tmp_path / "model"), split, flag), runner.REFUSAL_REPEATS
    )
    for result in results:
        assert result.returncode == 1, result.explain()
        assert flag in result.error_line and says in result.error_line, result.explain()
        assert result.seconds < QUICK_S
    table.add(f"`{flag}`", "-", "train", results)


def _two_point_polygon(split, annotation_id):
    data = split.load()
    ann = next(a for a in data["annotations"] if a["id"] == annotation_id)
    x, y, w, h = ann["bbox"]
    ann["segmentation"] = [[x, y, x + w, y + h]]
    split.save(data)
    return ann["image_id"]


def _first_annotation(split, image_id=1):
    return next(a["id"] for a in split.load()["annotations"] if a["image_id"] == image_id)


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_two_point_polygon_error(tmp_path, split, model_dir, table, command):
    data = split.copy(tmp_path / "faulty")
    annotation = _first_annotation(data)
    image_id = _two_point_polygon(data, annotation)
    if command == "train":
        args = train_command(str(tmp_path / "model"), data)
    else:
        args = evaluate_command(model_dir, data, tmp_path / "eval")
    results = runner.run_repeated(args, runner.REFUSAL_REPEATS)
    for result in results:
        assert result.returncode == 1, result.explain()
        line = result.error_line
        assert f"annotation id {annotation} of image id {image_id}" in line, result.explain()
        assert "degenerate" in line
    table.add("2-point polygon", "error", command, results)


def test_two_point_polygon_skip_scores_the_rest(tmp_path, scored_split, model_dir, table):
    """The polygon is dropped by the reader and left out of the ground truth (pycocotools
    crashed on it): the score equals that of the split without that annotation."""
    data = scored_split.copy(tmp_path / "faulty")
    annotation = _first_annotation(data)
    _two_point_polygon(data, annotation)
    without = scored_split.copy(tmp_path / "without")
    meta = without.load()
    meta["annotations"] = [a for a in meta["annotations"] if a["id"] != annotation]
    without.save(meta)
    skip, ref = runner.run_all(
        [
            evaluate_command(model_dir, data, tmp_path / "skip", "--bad_sample_policy=skip"),
            evaluate_command(model_dir, without, tmp_path / "ref"),
        ]
    )
    assert skip.returncode == 0, skip.explain()
    assert ref.returncode == 0, ref.explain()
    with open(tmp_path / "skip" / "metrics.json") as f:
        got = json.load(f)
    with open(tmp_path / "ref" / "metrics.json") as f:
        want = json.load(f)
    assert got["num_images"] == 10
    assert want["AP"] > 0.3, want  # the comparison means something
    assert got["AP"] == pytest.approx(want["AP"], abs=1e-6), (got, want)
    assert "fewer than 3 points" in skip.stderr and f"annotation {annotation}" in skip.stderr
    table.add(
        "2-point polygon",
        "skip",
        "evaluate",
        skip,
        f"AP {got['AP']:.4f} = {want['AP']:.4f} without that annotation; warns: polygon left "
        "out of the ground truth",
    )


def _fingerprint(folder) -> dict:
    """name -> sha1 of every file of ``folder`` (recursively)."""
    prints = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                prints[os.path.relpath(path, folder)] = hashlib.sha1(f.read()).hexdigest()
    return prints


def test_more_categories_than_num_classes(tmp_path, split, table):
    data = split.copy(tmp_path / "faulty")
    meta = data.load()
    meta["categories"].append({"id": 5, "name": "hexagon", "supercategory": "shape"})
    data.save(meta)
    model = tmp_path / "model"
    results = runner.run_repeated(train_command(str(model), data), runner.REFUSAL_REPEATS)
    for result in results:
        assert result.returncode == 1, result.explain()
        assert "5 categories" in result.error_line and "--num_classes=4" in result.error_line
        assert result.seconds < QUICK_S
    written = [p for p in _fingerprint(model) if not p.startswith("train.")]
    assert written == [], written  # no config, label map or checkpoint: only the log
    table.add("dataset with 5 categories, --num_classes=4", "error", "train", results)


@pytest.mark.parametrize(
    "flag, says",
    [("--num_classes=7", "--num_classes=7"), ("--fpn_channels=64", "model.fpn_channels")],
)
def test_resume_with_another_model_refused(tmp_path, split, trained_dir, table, flag, says):
    """The model_dir is the source of truth: nothing in it changes (only the new log)."""
    import shutil

    model = str(tmp_path / "model")
    shutil.copytree(trained_dir, model)
    before = {k: v for k, v in _fingerprint(model).items() if not k.startswith("train.")}
    results = runner.run_repeated(
        train_command(model, split, "--total_steps=3", flag), runner.REFUSAL_REPEATS
    )
    after = {k: v for k, v in _fingerprint(model).items() if not k.startswith("train.")}
    for result in results:
        assert result.returncode == 1, result.explain()
        assert says in result.error_line, result.explain()
        assert result.seconds < QUICK_S
    assert after == before  # config.json, label_map.json and checkpoints untouched
    table.add(f"resume with `{flag}`", "error", "train (resume)", results)
