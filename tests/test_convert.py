"""solo_tf.convert against PyTorch itself: the fixtures of scripts/make_torch_fixtures.py
hold the authors' models (torchvision ResNet-50, mmdetection FPN, the SOLO heads in torch,
narrow widths) with seeded weights and their outputs on a 96 x 128 image. Converted here
without torch, the Keras model must give the same pyramid levels and head logits, and
post-processing the same detections."""

import dataclasses
import functools
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from solo_tf import config as cfg
from solo_tf import convert, detectron2_names, model_dir, postprocess, torch_checkpoint
from solo_tf.data.label_map import LabelMap
from solo_tf.modeling import factory, resnet
from solo_tf.modeling.normalization import IMAGENET_MEAN, IMAGENET_STD

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
# The fixtures' model (the constants of scripts/make_torch_fixtures.py).
TINY = cfg.ModelConfig(
    num_classes=4,
    backbone_depth=50,
    backbone_filters=(4, 4, 8, 16),
    fpn_channels=16,
    head_channels=32,
    stacked_convs=2,
    norm_groups=8,
    num_grids=(8, 6, 4, 3, 2),
)
CASES = {
    "solo_vanilla": ("wxinlong_solo", {"head_type": "vanilla"}),
    "solo_decoupled": ("wxinlong_decoupled", {"head_type": "decoupled"}),
    "solo_decoupled_light": (
        "wxinlong_decoupled_light",
        {"head_type": "decoupled", "decoupled_shared_tower": True},
    ),
    "solov2": (
        "wxinlong_solov2",
        {"head_type": "solov2", "mask_feature_channels": 16, "mask_feature_mid": 16},
    ),
}
NOT_HEAD = ("image", "backbone_", "fpn_")
LABELS = LabelMap(ids=(1, 3, 7, 9), names=("a", "b", "c", "d"))


def load_case(name):
    layout, overrides = CASES[name]
    config = dataclasses.replace(TINY, **overrides)
    state = torch_checkpoint.load_state_dict(os.path.join(FIXTURES, f"{name}.pth"))
    return layout, config, state, dict(np.load(os.path.join(FIXTURES, f"{name}.npz")))


@functools.cache
def built_model(config):
    """One Keras model per config for the whole file (building dominates the run time)."""
    return factory.build_model(config)


def converted_model(layout, config, state):
    model = built_model(config)
    variables = convert.model_variables(model, convert.LAYOUTS[layout], config)
    convert.torch_weights.assign_torch_weights(variables, state, "fixture")
    return model


def assert_close(got, want, name):
    """Within 1e-4 of the tensor's scale (its largest magnitude)."""
    got = np.asarray(got, np.float32)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    scale = max(float(np.abs(want).max()), 1e-6)
    error = float(np.abs(got - want).max())
    assert error <= 1e-4 * scale, f"{name}: max error {error:.3g} vs scale {scale:.3g}"


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    layout, config, state, arrays = load_case(request.param)
    assert convert.detect_layout(state) == layout
    model = converted_model(layout, config, state)
    return request.param, config, model, arrays


def test_pyramid_levels_and_head_logits_match_torch(case):
    name, config, model, arrays = case
    image = arrays["image"]  # [1, 96, 128, 3] in [0, 255]; torch saw it normalised
    levels = model.backbone(image)
    for level in ("P2", "P3", "P4", "P5"):
        assert_close(levels[level], arrays[f"backbone_{level}"], f"{name} backbone {level}")
    pyramid = model.fpn(levels)
    for level in ("P2", "P3", "P4", "P5", "P6"):
        assert_close(pyramid[level], arrays[f"fpn_{level}"], f"{name} FPN {level}")
    outputs = model.head(pyramid)
    head_keys = sorted(k for k in arrays if not k.startswith(NOT_HEAD))
    assert sorted(outputs) == head_keys
    for key in head_keys:
        assert_close(outputs[key], arrays[key], f"{name} {key}")


def test_postprocessing_gives_torchs_detections(case):
    name, config, model, arrays = case
    torch_outputs = {k: tf.constant(v) for k, v in arrays.items() if not k.startswith(NOT_HEAD)}
    info = tf.constant([[[96, 128], [96, 128], [1, 1], [0, 0]]], tf.float32)
    post = cfg.PostprocessConfig()
    ids = tf.constant(LABELS.class_ids)
    want = postprocess.postprocess(torch_outputs, info, config, post, ids)
    got = postprocess.postprocess(model(arrays["image"]), info, config, post, ids)
    count = int(want["num_detections"][0])
    assert count > 5, f"{name}: the fixture should give detections, got {count}"
    assert int(got["num_detections"][0]) == count
    np.testing.assert_array_equal(got["detection_classes"], want["detection_classes"])
    np.testing.assert_allclose(got["detection_scores"], want["detection_scores"], atol=1e-4)
    masks_got = got["detection_masks"].numpy()[0, :count].astype(bool)
    masks_want = want["detection_masks"].numpy()[0, :count].astype(bool)
    differing = np.logical_xor(masks_got, masks_want).sum(axis=(1, 2))
    assert differing.max() <= 2, f"{name}: mask pixels differ by up to {differing.max()}"


def renamed(state, old, new):
    return {new + k[len(old) :] if k.startswith(old) else k: v for k, v in state.items()}


def test_mmdetection_2_names_convert_to_the_same_model():
    layout, config, state, arrays = load_case("solo_vanilla")
    v2 = renamed(state, "bbox_head.ins_convs.", "mask_head.mask_convs.")
    v2 = renamed(v2, "bbox_head.cate_convs.", "mask_head.cls_convs.")
    v2 = renamed(v2, "bbox_head.solo_ins_list.", "mask_head.conv_mask_list.")
    v2 = renamed(v2, "bbox_head.solo_cate.", "mask_head.conv_cls.")
    assert convert.detect_layout(v2) == "mmdet_solo"
    model = converted_model("mmdet_solo", config, v2)
    assert_close(model(arrays["image"])["mask_logits_0"], arrays["mask_logits_0"], "mmdet")


def test_missing_leftover_and_misshapen_tensors_are_named():
    layout, config, state, _ = load_case("solo_vanilla")
    model = built_model(config)
    variables = convert.model_variables(model, convert.LAYOUTS[layout], config)
    assign = convert.torch_weights.assign_torch_weights
    broken = dict(state)
    del broken["neck.fpn_convs.2.conv.bias"]
    broken["bbox_head.extra.weight"] = np.zeros(3, np.float32)
    broken["bbox_head.solo_cate.bias"] = np.zeros(5, np.float32)
    with pytest.raises(ValueError) as err:
        assign(variables, broken, "ckpt.pth")
    message = str(err.value)
    assert "ckpt.pth" in message and "'neck.fpn_convs.2.conv.bias'" in message
    assert "'bbox_head.extra.weight'" in message
    assert "'bbox_head.solo_cate.bias' has shape (5,)" in message and "expects (4,)" in message


def test_flagfile_must_fit_the_checkpoint():
    _, _, state, _ = load_case("solo_decoupled")
    with pytest.raises(ValueError, match="--head_type=decoupled"):
        convert.check_config(convert.detect_layout(state), TINY, "d.pth")
    with pytest.raises(ValueError, match="--backbone_type=torchvision"):
        convert.check_config(
            "wxinlong_solo", dataclasses.replace(TINY, backbone_type="keras_cv"), "s.pth"
        )


def test_coco_label_map_ships_with_the_package():
    labels = convert.coco_label_map()
    assert labels.num_classes == 80
    assert labels.ids[:12] == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13)
    assert labels.ids[-1] == 90 and list(labels.ids) == sorted(labels.ids)
    assert labels.names[0] == "person" and labels.names[-1] == "toothbrush"


@pytest.mark.slow
def test_convert_writes_a_model_dir_that_restores(tmp_path):
    layout, config, state, arrays = load_case("solo_decoupled_light")
    solo_config = cfg.SOLOConfig(model=config, targets=cfg.TargetConfig(num_grids=config.num_grids))
    path = os.path.join(FIXTURES, "solo_decoupled_light.pth")
    out = str(tmp_path / "converted")
    convert.convert_checkpoint(path, solo_config, LABELS, out)
    assert model_dir.load_config(out) == solo_config
    assert model_dir.load_label_map(out).ids == LABELS.ids
    restored = factory.build_model(model_dir.load_config(out).model)
    model_dir.restore(restored, out)
    assert_close(restored(arrays["image"])["mask_x_logits_1"], arrays["mask_x_logits_1"], "dir")
    with pytest.raises(ValueError, match="already holds checkpoints"):
        convert.convert_checkpoint(path, solo_config, LABELS, out)


def test_backbone_only_writes_what_pretrained_backbone_loads(tmp_path):
    source = os.path.join(FIXTURES, "resnet18_narrow.pth")
    output = str(tmp_path / "r18.weights.h5")
    convert.convert_backbone(source, 18, output, filters=(8, 8, 16, 16))
    backbone = resnet.TorchvisionResNet(depth=18, filters=(8, 8, 16, 16))
    resnet.load_torchvision_weights(backbone, output)
    want = np.load(os.path.join(FIXTURES, "resnet18_narrow.npz"))
    assert_close(backbone(want["image"])["P4"], want["P4"], "backbone_only P4")
    with pytest.raises(ValueError, match="does not fit a torchvision ResNet-50"):
        resnet.load_torchvision_weights(resnet.TorchvisionResNet(50, filters=(4, 4, 8, 16)), output)


def test_mmdetection_solov2_names_convert_to_the_same_model():
    layout, config, state, arrays = load_case("solov2")
    renames = [
        ("bbox_head.kernel_convs.", "mask_head.kernel_convs."),
        ("bbox_head.cate_convs.", "mask_head.cls_convs."),
        ("bbox_head.solo_cate.", "mask_head.conv_cls."),
        ("bbox_head.solo_kernel.", "mask_head.conv_kernel."),
        ("mask_feat_head.conv_pred.0.", "mask_head.mask_feature_head.conv_pred."),
        ("mask_feat_head.", "mask_head.mask_feature_head."),
    ]
    for old, new in renames:
        state = renamed(state, old, new)
    assert convert.detect_layout(state) == "mmdet_solov2"
    outputs = converted_model("mmdet_solov2", config, state)(arrays["image"])
    assert_close(outputs["mask_features"], arrays["mask_features"], "mmdet solov2")
    assert_close(outputs["kernel_preds_2"], arrays["kernel_preds_2"], "mmdet solov2")


def adelaidet_state(state, options=detectron2_names.Detectron2Options()):
    """The solov2 fixture's tensors under AdelaiDet's names, its stem conv for detectron2's
    input (BGR, PIXEL_STD 1 by default); FrozenBatchNorm has no num_batches_tracked."""
    out = {
        detectron2_names.adelaidet_name(k): v
        for k, v in state.items()
        if not k.endswith("num_batches_tracked")
    }
    stem = detectron2_names.STEM_CONV
    out[stem] = detectron2_names.unfold_input_normalization(out[stem], options)
    return out


def test_adelaidet_names_are_detectron2s():
    """Hand-written from AdelaiDet's solov2.py and detectron2's ResNet / FPN modules."""
    name = detectron2_names.adelaidet_name
    assert name("backbone.conv1.weight") == "backbone.bottom_up.stem.conv1.weight"
    assert name("backbone.bn1.running_var") == "backbone.bottom_up.stem.conv1.norm.running_var"
    assert name("backbone.layer3.5.bn2.bias") == "backbone.bottom_up.res4.5.conv2.norm.bias"
    assert (
        name("backbone.layer1.0.downsample.0.weight") == "backbone.bottom_up.res2.0.shortcut.weight"
    )
    assert (
        name("backbone.layer4.0.downsample.1.running_mean")
        == "backbone.bottom_up.res5.0.shortcut.norm.running_mean"
    )
    assert name("neck.lateral_convs.0.conv.bias") == "backbone.fpn_lateral2.bias"
    assert name("neck.fpn_convs.3.conv.weight") == "backbone.fpn_output5.weight"
    assert name("bbox_head.kernel_convs.0.conv.weight") == "ins_head.kernel_tower.0.weight"
    assert name("bbox_head.cate_convs.3.conv.weight") == "ins_head.cate_tower.9.weight"
    assert name("bbox_head.cate_convs.3.gn.bias") == "ins_head.cate_tower.10.bias"
    assert name("bbox_head.solo_kernel.bias") == "ins_head.kernel_pred.bias"
    assert name("bbox_head.solo_cate.weight") == "ins_head.cate_pred.weight"
    assert (
        name("mask_feat_head.convs_all_levels.3.conv2.gn.weight")
        == "mask_head.convs_all_levels.3.conv2.1.weight"
    )
    assert name("mask_feat_head.conv_pred.0.conv.weight") == "mask_head.conv_pred.0.weight"
    assert name("mask_feat_head.conv_pred.0.gn.bias") == "mask_head.conv_pred.1.bias"
    with pytest.raises(ValueError, match="bbox_head.solo_ins_list.0.weight"):
        name("bbox_head.solo_ins_list.0.weight")


def test_stem_fold_computes_detectron2s_bgr_input():
    """One output of the stem conv, by hand: detectron2's kernel on (BGR - mean) / PIXEL_STD
    equals the folded kernel on solo-tf's (RGB - IMAGENET_MEAN) / IMAGENET_STD."""
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(2, 3, 7, 7)).astype(np.float32)
    rgb = rng.uniform(0, 255, size=(3, 7, 7))
    mean = np.asarray(IMAGENET_MEAN)[:, None, None]
    solo_input = (rgb - mean) / np.asarray(IMAGENET_STD)[:, None, None]
    for fmt, std in (
        ("BGR", (1.0, 1.0, 1.0)),
        ("BGR", (57.375, 57.12, 58.395)),
        ("RGB", (2, 3, 4)),
    ):
        options = detectron2_names.Detectron2Options(input_format=fmt, pixel_std=std)
        order = [2, 1, 0] if fmt == "BGR" else [0, 1, 2]
        d2_input = (rgb[order] - mean[order]) / np.asarray(std)[:, None, None]
        want = np.einsum("ochw,chw->o", weight.astype(np.float64), d2_input)
        folded = detectron2_names.fold_input_normalization(weight, options)
        got = np.einsum("ochw,chw->o", folded.astype(np.float64), solo_input)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        back = detectron2_names.unfold_input_normalization(folded, options)
        np.testing.assert_allclose(back, weight, rtol=1e-6)


def test_adelaidet_solov2_converts_to_the_same_model():
    """AdelaiDet's graph is WXinlong's SOLOv2 up to names and the input normalisation, so
    the fixture's torch outputs hold for its tensors renamed (STRIDE_IN_1X1=False: the
    fixture's ResNet strides the 3x3 conv)."""
    layout, config, state, arrays = load_case("solov2")
    model = converted_model(layout, config, state)
    want = {v.path: v.numpy() for v in model.weights}
    adelaidet = adelaidet_state(state)
    assert convert.detect_layout(adelaidet) == "adelaidet_solov2"
    convert.check_config("adelaidet_solov2", config, "a.pth")
    options = detectron2_names.Detectron2Options(stride_in_1x1=False)
    assert detectron2_names.model_config(config, options) == config  # stride_in_1x1=False
    prepared = detectron2_names.prepare_state(adelaidet, options)
    variables = convert.model_variables(model, convert.LAYOUTS["adelaidet_solov2"], config)
    assert len(variables) == len(prepared)
    convert.torch_weights.assign_torch_weights(variables, prepared, "a.pth")
    stem = variables[detectron2_names.STEM_CONV].path
    for v in model.weights:
        if v.path == stem:  # divided then multiplied by the std: float rounding
            np.testing.assert_allclose(v.numpy(), want[v.path], rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(v.numpy(), want[v.path], err_msg=v.path)
    outputs = model(arrays["image"])
    for key in ("mask_features", "kernel_preds_0", "kernel_preds_4", "cate_logits_2"):
        assert_close(outputs[key], arrays[key], f"adelaidet {key}")


def test_adelaidet_msra_resnet_converts_with_stride_in_1x1(tmp_path, monkeypatch):
    """detectron2's default STRIDE_IN_1X1=True: the model_dir's config gets stride_in_1x1=true
    and restores and runs. No torch parity here (the fixture's ResNet strides the 3x3), but
    layer1 has no stride, so P2 is still torch's; P3 (a strided stage) differs."""
    layout, config, state, arrays = load_case("solov2")
    adelaidet = adelaidet_state(state)
    monkeypatch.setattr(convert.torch_checkpoint, "load_state_dict", lambda path: adelaidet)
    solo_config = cfg.SOLOConfig(model=config, targets=cfg.TargetConfig(num_grids=config.num_grids))
    out = str(tmp_path / "m")
    convert.convert_checkpoint("SOLOv2_R50_3x.pth", solo_config, LABELS, out)
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["model"]["stride_in_1x1"] is True
    restored_config = model_dir.load_config(out).model
    assert restored_config == dataclasses.replace(config, stride_in_1x1=True)
    restored = factory.build_model(restored_config)
    model_dir.restore(restored, out)
    assert restored.backbone.get_layer("layer2_0_conv1").strides == (2, 2)
    levels = restored.backbone(arrays["image"])
    assert_close(levels["P2"], arrays["backbone_P2"], "adelaidet stride_in_1x1 P2")
    assert np.abs(np.asarray(levels["P3"]) - arrays["backbone_P3"]).max() > 1e-3
    outputs = restored(arrays["image"])
    assert outputs["mask_features"].shape == arrays["mask_features"].shape
    assert np.isfinite(np.asarray(outputs["mask_features"])).all()
    # Basic blocks (R18/34) stride their 3x3 in detectron2 too: the option does not apply.
    r18 = dataclasses.replace(config, backbone_depth=18)
    default = detectron2_names.Detectron2Options()  # stride_in_1x1=True
    assert not detectron2_names.model_config(r18, default).stride_in_1x1


def test_adelaidet_bad_tensors_and_torchvision_layouts_with_stride_in_1x1_are_refused():
    layout, config, state, _ = load_case("solov2")
    adelaidet = adelaidet_state(state)
    with pytest.raises(ValueError, match="--stride_in_1x1=False"):
        msra = dataclasses.replace(config, stride_in_1x1=True)
        convert.check_config("wxinlong_solov2", msra, "w.pth")
    with pytest.raises(ValueError, match="--input_normalization=imagenet"):
        unit = dataclasses.replace(config, input_normalization="unit")
        convert.check_config("adelaidet_solov2", unit, "a.pth")
    broken = dict(adelaidet)
    del broken["ins_head.kernel_tower.3.weight"]
    broken["ins_head.kernel_tower.0.bias"] = np.zeros(32, np.float32)
    broken["mask_head.conv_pred.1.weight"] = np.zeros(7, np.float32)
    model = built_model(config)
    variables = convert.model_variables(model, convert.LAYOUTS["adelaidet_solov2"], config)
    with pytest.raises(ValueError) as err:
        convert.torch_weights.assign_torch_weights(variables, broken, "a.pth")
    message = str(err.value)
    assert "missing from the checkpoint: 'ins_head.kernel_tower.3.weight'" in message
    assert "no place for: 'ins_head.kernel_tower.0.bias'" in message
    assert "'mask_head.conv_pred.1.weight' has shape (7,)" in message and "expects (16,)" in message
