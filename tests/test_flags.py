"""Flags: every config field is a flag, flagfiles parse, explicit flags override a base."""

import dataclasses
import os
import subprocess
import sys

import pytest
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
    assert solo_flags.config_from_args([]) == cfg.SOLOConfig()


def test_flagfiles_parse_into_configs():
    for name in (
        "r50",
        "r101",
        "decoupled_r50",
        "shapes",
        "shapes_decoupled",
        "shapes_352",
        "shapes_384",
        "shapes_lite",
        "shapes_solov2",
        "tiny",
    ):
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


@pytest.mark.slow  # a subprocess that imports TensorFlow
def test_helpfull_lists_flags():
    out = subprocess.run(
        [sys.executable, "-m", "solo_tf.train", "--helpfull"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard only
    ).stdout
    for name in ("--num_grids", "--head_type", "--mixed_precision", "--model_dir"):
        assert name in out


SOLOV2_FLAGFILES = {  # name: (depth, tower width, tower depth, E, first scale range, AP)
    "solov2_r50": (50, 512, 4, 256, (1.0, 96.0), "37.5"),
    "solov2_r101": (101, 512, 4, 256, (1.0, 96.0), "39.1"),
    "solov2_light_r50_448": (50, 256, 2, 128, (1.0, 56.0), "33.7"),
    "solov2_light_r34_448": (34, 256, 2, 128, (1.0, 56.0), "32.0"),
    "solov2_light_r18_448": (18, 256, 2, 128, (1.0, 56.0), "29.6"),
}


def test_solov2_flagfiles_are_the_authors_configs():
    for name, (depth, width, convs, e, first_range, ap) in SOLOV2_FLAGFILES.items():
        path = os.path.join(ROOT, "experiments", f"{name}.flags")
        config = solo_flags.config_from_flags(parse([f"--flagfile={path}"]))
        model = config.model
        assert (model.head_type, model.backbone_depth) == ("solov2", depth), name
        assert (model.head_channels, model.stacked_convs) == (width, convs), name
        assert (model.mask_feature_channels, model.mask_feature_mid) == (e, 128), name
        assert model.mask_strides == (4, 4, 4, 4, 4) and config.targets.mask_stride == 4
        assert config.targets.scale_ranges[0] == first_range, name
        assert config.train.warmup_factor == 0.01 and config.train.epochs == 36
        light = "light" in name
        assert config.data.short_sides == (
            (352, 384, 416, 448, 480, 512) if light else (640, 672, 704, 736, 768, 800)
        )
        assert config.data.eval_short_side == (448 if light else 800)
        assert config.data.max_long_side == (768 if light else 1333)
        with open(path) as f:
            header = f.read().split("\n--")[0]
        assert f"mask AP {ap}" in header, name
        for word in ("Run:", "Hardware:", "Time:", "Expected:"):
            assert word in header, f"{name}.flags header lacks {word}"


def test_shapes_solov2_differs_from_the_352_demo_recipe_only_in_its_head():
    """Issue 13's side-by-side: same backbone, data, targets, schedule; only the head and its
    learning rate (half: at the Decoupled head's 0.003 SOLOv2's dynamic kernels trained to AP
    0.140)."""

    demo, v2 = (
        solo_flags.config_from_args([f"--flagfile={os.path.join(ROOT, 'experiments', name)}"])
        for name in ("shapes_352.flags", "shapes_solov2.flags")
    )
    assert v2.model.head_type == "solov2" and demo.model.head_type == "decoupled"
    assert (v2.model.mask_feature_channels, v2.model.mask_feature_mid) == (48, 48)
    assert (v2.train.learning_rate, demo.train.learning_rate) == (0.0015, 0.003)
    head_fields = {"head_type", "mask_feature_channels", "mask_feature_mid"}
    for field in dataclasses.fields(cfg.ModelConfig):
        if field.name not in head_fields:
            assert getattr(v2.model, field.name) == getattr(demo.model, field.name), field.name
    for section in ("targets", "loss", "postprocess", "data"):
        assert getattr(v2, section) == getattr(demo, section), section
    assert dataclasses.replace(v2.train, learning_rate=0.003) == demo.train


def test_shapes_320_differs_from_the_demo_recipe_only_in_stem_and_canvas():
    """Issue 15's fastest variant: a 32-wide stem and a 320 x 320 canvas, nothing else."""
    demo, small = (
        solo_flags.config_from_args([f"--flagfile={os.path.join(ROOT, 'experiments', name)}"])
        for name in ("shapes_352.flags", "shapes_320.flags")
    )
    assert small.model == dataclasses.replace(demo.model, backbone_stem_filters=32)
    canvas = {
        "short_sides": (256, 288, 320),
        "max_long_side": 320,
        "eval_short_side": 320,
        "output_size": (320, 320),
    }
    assert demo.data.output_size == (352, 352)
    assert small.data == dataclasses.replace(demo.data, **canvas)
    for section in ("targets", "loss", "postprocess", "train"):
        assert getattr(small, section) == getattr(demo, section), section


def test_shapes_lite_differs_from_the_demo_recipe_only_in_stem_and_mask_tower():
    """Issue 15's faster variant: a 32-wide stem and one shared mask tower, nothing else."""
    demo, lite = (
        solo_flags.config_from_args([f"--flagfile={os.path.join(ROOT, 'experiments', name)}"])
        for name in ("shapes_352.flags", "shapes_lite.flags")
    )
    assert (demo.model.backbone_stem_filters, demo.model.decoupled_shared_tower) == (0, False)
    changed = {"backbone_stem_filters": 32, "decoupled_shared_tower": True}
    assert lite.model == dataclasses.replace(demo.model, **changed)
    for section in ("targets", "loss", "postprocess", "data", "train"):
        assert getattr(lite, section) == getattr(demo, section), section


def test_the_decoupled_recipe_differs_from_the_352_recipe_in_stem_and_early_steps_only():
    """Issue 15's recipe of session 14: shapes_352.flags with a 32-wide stem and progressive
    resizing (the first 1200 steps at long side 224), nothing else."""
    full, demo = (
        solo_flags.config_from_args([f"--flagfile={os.path.join(ROOT, 'experiments', name)}"])
        for name in ("shapes_352.flags", "shapes_decoupled.flags")
    )
    assert demo.model == dataclasses.replace(full.model, backbone_stem_filters=32)
    early = {"early_steps": 1200, "early_size": 224, "early_copy_paste": 0.5}
    assert full.data.copy_paste == 0.5 and full.data.early_steps == 0
    assert demo.data == dataclasses.replace(full.data, **early)
    for section in ("targets", "loss", "postprocess", "train"):
        assert getattr(demo, section) == getattr(full, section), section


def test_the_demo_recipe_is_the_decoupled_one_with_the_solov2_head():
    """The demo (session 15): shapes_decoupled.flags with the SOLOv2 head (E = 48 mask features
    and kernels) at half the learning rate, nothing else."""
    decoupled, demo = (
        solo_flags.config_from_args([f"--flagfile={os.path.join(ROOT, 'experiments', name)}"])
        for name in ("shapes_decoupled.flags", "shapes.flags")
    )
    head = {"head_type": "solov2", "mask_feature_channels": 48, "mask_feature_mid": 48}
    assert decoupled.model.head_type == "decoupled"
    assert demo.model == dataclasses.replace(decoupled.model, **head)
    assert (demo.train.learning_rate, decoupled.train.learning_rate) == (0.0015, 0.003)
    assert demo.train == dataclasses.replace(decoupled.train, learning_rate=0.0015)
    for section in ("targets", "loss", "postprocess", "data"):
        assert getattr(demo, section) == getattr(decoupled, section), section
