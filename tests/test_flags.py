"""Flags: every config field is a flag, flagfiles parse, explicit flags override a base."""

import dataclasses
import os
import subprocess
import sys

from absl import flags

from solo_tf import config as cfg
from solo_tf import flags as solo_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse(argv):
    values = flags.FlagValues()
    solo_flags.define_flags(values)
    values(["prog", *argv])
    return values


def test_every_config_field_is_a_flag_with_help():
    values = parse([])
    for cls in solo_flags.SECTIONS.values():
        for field in dataclasses.fields(cls):
            assert field.name in values
            assert values[field.name].help != field.name, f"--{field.name} has no help"


def test_defaults_give_the_default_config():
    assert solo_flags.config_from_flags(parse([])) == cfg.SOLOConfig()


def test_flagfiles_parse_into_configs():
    for name in ("r50", "r101", "decoupled_r50", "shapes", "tiny"):
        path = os.path.join(ROOT, "experiments", f"{name}.flags")
        config = solo_flags.config_from_flags(parse([f"--flagfile={path}"]))
        assert config.model.num_grids == config.targets.num_grids
        with open(path) as f:
            header = f.read().split("\n--")[0]
        for word in ("Run:", "Hardware:", "Time:", "Expected:"):
            assert word in header, f"{name}.flags header lacks {word}"


def test_paper_recipe_flags():
    path = os.path.join(ROOT, "experiments", "decoupled_r50.flags")
    config = solo_flags.config_from_flags(parse([f"--flagfile={path}"]))
    assert config.model.head_type == "decoupled" and config.model.backbone_depth == 50
    assert config.train.global_batch_size == 16 and config.train.epochs == 36
    assert config.train.decay_epochs == (27.0, 33.0) and config.train.clip_norm == 35
    assert config.data.short_sides == (640, 672, 704, 736, 768, 800)
    assert config.targets.scale_ranges[0] == (1.0, 96.0)


def test_base_config_kept_except_given_flags():
    base = cfg.SOLOConfig(model=cfg.ModelConfig(num_classes=4))
    config = solo_flags.config_from_flags(parse(["--score_threshold=0.3"]), base=base)
    assert config.model.num_classes == 4 and config.postprocess.score_threshold == 0.3


def test_helpfull_lists_flags():
    out = subprocess.run(
        [sys.executable, "-m", "solo_tf.train", "--helpfull"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    for name in ("--num_grids", "--head_type", "--mixed_precision", "--model_dir"):
        assert name in out
