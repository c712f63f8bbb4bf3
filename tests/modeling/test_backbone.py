"""ResNetPyramidBackbone: levels, normalisation, freezing, and loading pretrained weights."""

import keras
import numpy as np
import pytest
from keras_cv.src.utils.preset_utils import save_to_preset

from solo_tf.modeling.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageNormalization,
    ResNetPyramidBackbone,
    build_keras_cv_resnet,
    load_backbone_weights,
)

IMAGES = np.random.default_rng(0).uniform(0, 255, size=(2, 64, 96, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def r18():
    return ResNetPyramidBackbone(depth=18)


@pytest.mark.parametrize("depth, width", [(18, 64), (50, 256)])
def test_levels_and_channels(depth, width, r18):
    backbone = r18 if depth == 18 else ResNetPyramidBackbone(depth=depth)
    out = backbone(IMAGES[:1])
    assert sorted(out) == ["P2", "P3", "P4", "P5"]
    for k, level in enumerate(["P2", "P3", "P4", "P5"]):
        stride = 4 * 2**k
        assert out[level].shape == (1, 64 // stride, 96 // stride, width * 2**k)


def test_image_normalization_is_imagenet_mean_std():
    pixels = np.array([[[IMAGENET_MEAN, np.add(IMAGENET_MEAN, IMAGENET_STD)]]], np.float32)
    np.testing.assert_allclose(
        ImageNormalization()(pixels)[0, 0], [[0, 0, 0], [1, 1, 1]], atol=1e-6
    )


def test_default_freezes_stem_stage1_and_batchnorm(r18):
    trainable = {v.path for v in r18.trainable_weights}
    assert trainable and not any("conv1_" in p or "v2_stack_0_" in p for p in trainable)
    assert not any("_bn/" in p for p in trainable)
    assert any("v2_stack_1_block1_1_conv" in p for p in trainable)
    # Frozen BatchNorm runs on moving statistics even with training=True, and keeps them.
    before = [w.numpy() for w in r18.non_trainable_weights]
    train_out = r18(IMAGES, training=True)
    infer_out = r18(IMAGES, training=False)
    for level in train_out:
        np.testing.assert_array_equal(train_out[level], infer_out[level])
    for old, new in zip(before, r18.non_trainable_weights, strict=True):
        np.testing.assert_array_equal(old, new.numpy())


def test_unfrozen_options():
    backbone = ResNetPyramidBackbone(depth=18, freeze_stem_and_stage1=False, freeze_batchnorm=False)
    trainable = {v.path for v in backbone.trainable_weights}
    assert any("conv1_conv" in p for p in trainable) and any("_bn/gamma" in p for p in trainable)
    train_out = backbone(IMAGES, training=True)["P3"]
    assert not np.allclose(train_out, backbone(IMAGES, training=False)["P3"])


def test_config_round_trip_keeps_freezing():
    backbone = ResNetPyramidBackbone(depth=18, freeze_batchnorm=False, name="bb")
    clone = ResNetPyramidBackbone.from_config(backbone.get_config())
    assert clone.name == "bb" and clone.freeze_batchnorm is False
    assert len(clone.trainable_weights) == len(backbone.trainable_weights)


def _reference_levels(resnet, images):
    """The keras-cv network's own P2-P5 on mean/std-normalised images."""
    names = resnet.pyramid_level_inputs
    levels = keras.Model(resnet.inputs, {k: resnet.get_layer(n).output for k, n in names.items()})
    normalised = (images - np.array(IMAGENET_MEAN, np.float32)) / np.array(IMAGENET_STD, np.float32)
    return levels(normalised)


@pytest.mark.parametrize("layout", ["preset_dir", "weights_h5"])
def test_loads_pretrained_weights(layout, tmp_path):
    source = build_keras_cv_resnet(18)
    if layout == "preset_dir":
        path = str(tmp_path / "resnet18_preset")
        save_to_preset(source, path)
    else:
        path = str(tmp_path / "resnet18.weights.h5")
        source.save_weights(path)
    backbone = ResNetPyramidBackbone(depth=18)
    before = backbone(IMAGES)["P5"].numpy()
    load_backbone_weights(backbone, path)
    after = backbone(IMAGES)
    expected = _reference_levels(source, IMAGES)
    assert not np.allclose(before, after["P5"])
    for level in expected:
        np.testing.assert_allclose(after[level], expected[level], rtol=1e-4, atol=1e-4)


def test_missing_sources_name_the_path(tmp_path, r18):
    missing = str(tmp_path / "nothing.weights.h5")
    with pytest.raises(FileNotFoundError, match="nothing.weights.h5"):
        load_backbone_weights(r18, missing)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_backbone_weights(r18, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not_a_preset"):
        load_backbone_weights(r18, "not_a_preset")


def test_mismatched_depth_names_the_source(tmp_path):
    path = str(tmp_path / "r18.weights.h5")
    build_keras_cv_resnet(18).save_weights(path)
    preset = str(tmp_path / "r18_preset")
    save_to_preset(build_keras_cv_resnet(18), preset)
    r34 = ResNetPyramidBackbone(depth=34)
    for source in (path, preset):
        with pytest.raises(ValueError, match=source.split("/")[-1]):
            load_backbone_weights(r34, source)


def test_preset_input_scaling_must_match(tmp_path):
    import keras_cv

    rescaling = keras_cv.models.ResNetBackbone(
        stackwise_filters=[64, 128, 256, 512],
        stackwise_blocks=[2, 2, 2, 2],
        stackwise_strides=[1, 2, 2, 2],
        include_rescaling=True,
        block_type="basic_block",
    )
    preset = str(tmp_path / "unit_preset")
    save_to_preset(rescaling, preset)
    with pytest.raises(ValueError, match="input_normalization=unit"):
        load_backbone_weights(ResNetPyramidBackbone(depth=18), preset)
    unit = ResNetPyramidBackbone(depth=18, input_normalization="unit")
    load_backbone_weights(unit, preset)
    # x / 255 inside the model: the keras-cv network on [0, 255] images gives the same levels.
    ours = unit(IMAGES)
    theirs = rescaling(IMAGES)
    np.testing.assert_allclose(ours["P5"], theirs, rtol=1e-4, atol=1e-4)
