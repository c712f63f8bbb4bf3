"""solo_tf.config: to_dict / from_dict, and config.json files older than a field."""

import dataclasses

from solo_tf import config as cfg


def test_round_trip_keeps_every_field():
    config = cfg.SOLOConfig(
        model=cfg.ModelConfig(backbone_type="keras_cv", decoupled_shared_tower=True),
        targets=cfg.TargetConfig(contested_cells="smaller"),
    )
    assert cfg.from_dict(cfg.to_dict(config)) == config
    assert cfg.from_dict(cfg.to_dict(cfg.SOLOConfig())) == cfg.SOLOConfig()


def test_defaults_are_the_authors():
    assert cfg.ModelConfig().backbone_type == "torchvision"
    assert cfg.TargetConfig().contested_cells == "later"


def test_config_json_without_the_new_fields_keeps_its_old_meaning():
    # Written when keras-cv's ResNet was the only backbone and the smaller instance won.
    old = cfg.to_dict(cfg.SOLOConfig())
    del old["model"]["backbone_type"], old["targets"]["contested_cells"]
    config = cfg.from_dict(old)
    assert config.model.backbone_type == "keras_cv"
    assert config.targets.contested_cells == "smaller"
    assert dataclasses.replace(config.model, backbone_type="torchvision") == cfg.ModelConfig()
