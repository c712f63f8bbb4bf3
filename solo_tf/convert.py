"""The authors' PyTorch checkpoints -> solo-tf model_dirs, without torch.

    python -m solo_tf.convert --checkpoint SOLO_R50_3x.pth --flagfile experiments/r50.flags \
        --model_dir models/solo_r50_3x
    python -m solo_tf.convert --backbone_only --checkpoint resnet50-0676ba61.pth \
        --backbone_depth 50 --output resnet50_imagenet.weights.h5

The model_dir (``ckpt-0``, ``config.json``, ``label_map.json``; see ``solo_tf.model_dir``)
is what ``solo_tf.evaluate``, ``predict`` and ``export.*`` take. The checkpoint's layout is
recognised from its parameter names:

| layout | checkpoints | head |
|---|---|---|
| ``wxinlong_solo`` | WXinlong/SOLO ``SOLO_R50_1x.pth`` ... | vanilla |
| ``wxinlong_decoupled`` | ``DECOUPLED_SOLO_R50_3x.pth`` ... | decoupled |
| ``wxinlong_decoupled_light`` | ``DECOUPLED_SOLO_LIGHT_R50_3x.pth`` ... | decoupled, shared tower |
| ``wxinlong_solov2`` | ``SOLOv2_R50_3x.pth``, ``SOLOv2_LIGHT_448_R50_3x.pth`` ... | solov2 |
| ``mmdet_{solo,decoupled,decoupled_light,solov2}`` | mmdetection 2.x / 3.x | as above |
| ``adelaidet_solov2`` | aim-uofa/AdelaiDet ``SOLOv2_R50_3x.pth`` (detectron2) | solov2 |

and must agree with the flagfile's model (``head_type``, ``decoupled_shared_tower``,
``backbone_type=torchvision``); the shapes then check depth, widths, grids and classes.
Every tensor is mapped by name: one missing, left over or of the wrong shape is an error
naming it (only BatchNorm's ``num_batches_tracked`` counters are dropped, by name).

Name map (torch -> Keras): ``backbone.<torchvision name>`` -> the ``TorchvisionResNet``
layer of the same name with "." as "_" (``solo_tf.modeling.resnet.torch_variables``);
``neck.lateral_convs.{k}.conv`` -> ``fpn/lateral_P{k+2}``, ``neck.fpn_convs.{k}.conv`` ->
``fpn/output_P{k+2}``; head towers ``{tower}.{i}.conv`` / ``.gn`` -> ``conv_{i}`` /
``gn_{i}`` of the matching ``ConvGNTower``; the per-level mask convs and the category conv
by index. Conv weights [out, in, kh, kw] become [kh, kw, in, out]; GroupNorm and BatchNorm
weight / bias are gamma / beta, BatchNorm running_mean / running_var the moving statistics.
AdelaiDet's detectron2 names are WXinlong's SOLOv2 names renamed, and its input
normalisation folded into the stem conv (``solo_tf.detectron2_names``); its MSRA-style
``STRIDE_IN_1X1=True`` ResNets (``--detectron2_stride_in_1x1``, detectron2's default) convert
to a model_dir whose config has ``stride_in_1x1=true`` (bottlenecks stride their 1x1 conv).
The other layouts are torchvision ResNets: they need ``stride_in_1x1=False``.
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import app, flags, logging

from solo_tf import config as cfg
from solo_tf import detectron2_names, entry_point, torch_checkpoint, torch_weights
from solo_tf import flags as solo_flags
from solo_tf import model_dir as model_dir_lib
from solo_tf.data.label_map import LabelMap
from solo_tf.modeling import factory, resnet

COCO_LABEL_MAP = os.path.join(os.path.dirname(__file__), "coco_label_map.json")


@dataclasses.dataclass(frozen=True)
class Layout:
    """How one family of checkpoints names the head's tensors."""

    head_prefix: str  # "bbox_head." (WXinlong/SOLO, mmdet 1.x) or "mask_head." (mmdet 2.x)
    head_type: str
    shared_tower: bool
    towers: dict  # torch tower name -> Keras tower attribute of the head
    mask_convs: dict  # torch ModuleList of per-level convs -> Keras name pattern with {level}
    convs: dict  # torch name of a single conv -> Keras attribute (category, kernel)
    # SOLOv2: (torch prefix of the mask feature branch, torch name of its last ConvModule).
    mask_feature: tuple = ()
    # AdelaiDet (detectron2): the wxinlong_solov2 names renamed by solo_tf.detectron2_names.
    detectron2: bool = False


WX, MM = "bbox_head.", "mask_head."
SOLO_TOWERS = {"ins_convs": "mask_tower", "cate_convs": "cate_tower"}
MM_SOLO_TOWERS = {"mask_convs": "mask_tower", "cls_convs": "cate_tower"}
LAYOUTS = {
    "wxinlong_solo": Layout(
        WX,
        "vanilla",
        False,
        SOLO_TOWERS,
        {"solo_ins_list": "mask_conv_{level}"},
        {"solo_cate": "cate_conv"},
    ),
    "wxinlong_decoupled": Layout(
        WX,
        "decoupled",
        False,
        {"ins_convs_x": "mask_tower_x", "ins_convs_y": "mask_tower_y", "cate_convs": "cate_tower"},
        {"dsolo_ins_list_x": "mask_conv_x_{level}", "dsolo_ins_list_y": "mask_conv_y_{level}"},
        {"dsolo_cate": "cate_conv"},
    ),
    "wxinlong_decoupled_light": Layout(
        WX,
        "decoupled",
        True,
        {"ins_convs": "mask_tower_xy", "cate_convs": "cate_tower"},
        {"dsolo_ins_list_x": "mask_conv_x_{level}", "dsolo_ins_list_y": "mask_conv_y_{level}"},
        {"dsolo_cate": "cate_conv"},
    ),
    "wxinlong_solov2": Layout(
        WX,
        "solov2",
        False,
        {"kernel_convs": "kernel_tower", "cate_convs": "cate_tower"},
        {},
        {"solo_cate": "cate_conv", "solo_kernel": "kernel_conv"},
        ("mask_feat_head.", "conv_pred.0"),
    ),
    "mmdet_solo": Layout(
        MM,
        "vanilla",
        False,
        MM_SOLO_TOWERS,
        {"conv_mask_list": "mask_conv_{level}"},
        {"conv_cls": "cate_conv"},
    ),
    "mmdet_decoupled": Layout(
        MM,
        "decoupled",
        False,
        {"mask_convs_x": "mask_tower_x", "mask_convs_y": "mask_tower_y", "cls_convs": "cate_tower"},
        {"conv_mask_list_x": "mask_conv_x_{level}", "conv_mask_list_y": "mask_conv_y_{level}"},
        {"conv_cls": "cate_conv"},
    ),
    "mmdet_decoupled_light": Layout(
        MM,
        "decoupled",
        True,
        {"mask_convs": "mask_tower_xy", "cls_convs": "cate_tower"},
        {"conv_mask_list_x": "mask_conv_x_{level}", "conv_mask_list_y": "mask_conv_y_{level}"},
        {"conv_cls": "cate_conv"},
    ),
    "mmdet_solov2": Layout(
        MM,
        "solov2",
        False,
        {"kernel_convs": "kernel_tower", "cls_convs": "cate_tower"},
        {},
        {"conv_cls": "cate_conv", "conv_kernel": "kernel_conv"},
        ("mask_head.mask_feature_head.", "conv_pred"),
    ),
    "adelaidet_solov2": Layout(
        "ins_head.",
        "solov2",
        False,
        {"kernel_tower": "kernel_tower", "cate_tower": "cate_tower"},
        {},
        {"cate_pred": "cate_conv", "kernel_pred": "kernel_conv"},
        detectron2=True,
    ),
}


def detect_layout(state: dict, source: str = "checkpoint") -> str:
    """The LAYOUTS key whose head tensors ``state`` holds (a ValueError if none or several)."""
    names = set(state)

    def has(layout: Layout) -> bool:
        modules = [*layout.towers, *layout.mask_convs, *layout.convs]
        found = all(any(n.startswith(f"{layout.head_prefix}{m}.") for n in names) for m in modules)
        return found and not _has_foreign_towers(layout, names)

    matches = [key for key, layout in LAYOUTS.items() if has(layout)]
    if len(matches) != 1:
        heads = sorted({".".join(n.split(".")[:2]) for n in names if "_head." in n})
        raise ValueError(
            f"{source}: not a SOLO / Decoupled SOLO / Decoupled SOLO Light / SOLOv2 (WXinlong, "
            f"mmdetection, AdelaiDet) checkpoint of a known layout (head modules: "
            f"{heads[:12]}); matches {matches}"
        )
    return matches[0]


def _has_foreign_towers(layout: Layout, names: set) -> bool:
    """Whether the state holds towers of another layout with the same prefix (x/y vs shared)."""
    own = set(layout.towers)
    others = {
        t
        for other in LAYOUTS.values()
        if other.head_prefix == layout.head_prefix
        for t in other.towers
    } - own
    return any(n.startswith(f"{layout.head_prefix}{t}.") for t in others for n in names)


def head_variables(head, layout: Layout, stacked_convs: int, num_levels: int) -> dict:
    """{torch name: Keras variable} of the SOLO head."""
    variables = {}
    p = layout.head_prefix
    for torch_tower, keras_tower in layout.towers.items():
        tower = getattr(head, keras_tower)
        for i in range(stacked_convs):
            variables[f"{p}{torch_tower}.{i}.conv.weight"] = getattr(tower, f"conv_{i}").kernel
            norm = getattr(tower, f"gn_{i}")
            variables[f"{p}{torch_tower}.{i}.gn.weight"] = norm.gamma
            variables[f"{p}{torch_tower}.{i}.gn.bias"] = norm.beta
    convs = {f"{p}{torch_name}": getattr(head, name) for torch_name, name in layout.convs.items()}
    for torch_list, keras_pattern in layout.mask_convs.items():
        for level in range(num_levels):
            convs[f"{p}{torch_list}.{level}"] = getattr(head, keras_pattern.format(level=level))
    for name, conv in convs.items():
        variables[f"{name}.weight"] = conv.kernel
        variables[f"{name}.bias"] = conv.bias
    if layout.mask_feature:
        variables.update(mask_feature_variables(head.mask_feature_head, *layout.mask_feature))
    return variables


def mask_feature_variables(branch, prefix: str, pred: str) -> dict:
    """{torch name: Keras variable} of SOLOv2's mask feature branch (``MaskFeatureHead``):
    ``convs_all_levels.{i}.conv{j}.{conv,gn}`` and the last 1x1 ConvModule ``pred``."""
    variables = {}
    units = [
        (
            f"convs_all_levels.{level}.conv{unit}",
            f"level_{level}_conv_{unit}",
            f"level_{level}_gn_{unit}",
        )
        for level in range(branch.num_levels)
        for unit in range(branch.num_units(level))
    ]
    for torch_name, conv, norm in [*units, (pred, "pred_conv", "pred_gn")]:
        variables[f"{prefix}{torch_name}.conv.weight"] = getattr(branch, conv).kernel
        variables[f"{prefix}{torch_name}.gn.weight"] = getattr(branch, norm).gamma
        variables[f"{prefix}{torch_name}.gn.bias"] = getattr(branch, norm).beta
    return variables


def fpn_variables(fpn, prefix: str = "neck.") -> dict:
    """{torch name: Keras variable} of mmdetection's FPN (lateral and output convs)."""
    variables = {}
    for k, level in enumerate(fpn.level_names):
        for torch_list, keras_name in (("lateral_convs", "lateral"), ("fpn_convs", "output")):
            conv = getattr(fpn, f"{keras_name}_{level}")
            variables[f"{prefix}{torch_list}.{k}.conv.weight"] = conv.kernel
            variables[f"{prefix}{torch_list}.{k}.conv.bias"] = conv.bias
    return variables


def model_variables(model, layout: Layout, config: cfg.ModelConfig) -> dict:
    """{torch name: Keras variable} of a whole SOLOModel in ``layout``'s names."""
    if layout.detectron2:
        variables = model_variables(model, LAYOUTS["wxinlong_solov2"], config)
        return {detectron2_names.adelaidet_name(k): v for k, v in variables.items()}
    return {
        **resnet.torch_variables(model.backbone, "backbone."),
        **fpn_variables(model.fpn),
        **head_variables(model.head, layout, config.stacked_convs, config.num_levels),
    }


def check_config(layout_name: str, config: cfg.ModelConfig, source: str) -> None:
    """ValueError when the flagfile's model cannot hold a checkpoint of ``layout_name``."""
    layout = LAYOUTS[layout_name]
    wanted = {
        "backbone_type": "torchvision",
        "head_type": layout.head_type,
        "decoupled_shared_tower": layout.shared_tower if layout.head_type == "decoupled" else False,
    }
    if not layout.detectron2:  # torchvision's Bottleneck strides the 3x3 conv
        wanted["stride_in_1x1"] = False
    if layout.detectron2:  # the stem fold maps onto ImageNet mean / std normalisation
        wanted["input_normalization"] = "imagenet"
    wrong = [f"--{key}={value}" for key, value in wanted.items() if getattr(config, key) != value]
    if wrong:
        raise ValueError(
            f"{source} is a {layout_name} checkpoint: its model needs {' '.join(wrong)} "
            "(check the flagfile)"
        )


def convert_checkpoint(
    checkpoint: str,
    config: cfg.SOLOConfig,
    label_map: LabelMap,
    model_dir: str,
    detectron2: detectron2_names.Detectron2Options = detectron2_names.Detectron2Options(),
) -> str:
    """Writes ``model_dir`` from a SOLO checkpoint; returns the checkpoint prefix written.

    ``detectron2``: the config values of an AdelaiDet checkpoint that its tensors do not
    show (detectron2's defaults unless given); its ``stride_in_1x1`` replaces the model
    config's (``detectron2_names.model_config``) in the model and the written config.json.
    """
    if label_map.num_classes != config.model.num_classes:
        raise ValueError(
            f"the label map has {label_map.num_classes} categories, the model "
            f"--num_classes={config.model.num_classes}"
        )
    if os.path.isdir(model_dir) and model_dir_lib.checkpoints(model_dir):
        raise ValueError(f"{model_dir!r} already holds checkpoints; convert into a new folder")
    state = torch_checkpoint.load_state_dict(checkpoint)
    layout_name = detect_layout(state, checkpoint)
    check_config(layout_name, config.model, checkpoint)
    if LAYOUTS[layout_name].detectron2:
        model_config = detectron2_names.model_config(config.model, detectron2)
        config = dataclasses.replace(config, model=model_config)
        state = detectron2_names.prepare_state(state, detectron2)
    model = factory.build_model(config.model)
    variables = model_variables(model, LAYOUTS[layout_name], config.model)
    torch_weights.assign_torch_weights(variables, state, checkpoint)
    model_dir_lib.write_metadata(model_dir, config, label_map)
    return model_dir_lib.save_model(model, model_dir, step=0)


def convert_backbone(
    checkpoint: str, depth: int, output: str, filters=(), prefix: str = ""
) -> None:
    """Writes a ``.weights.h5`` of ``TorchvisionResNet(depth)`` from a torchvision ResNet
    checkpoint (its ``fc`` classifier dropped) for ``--pretrained_backbone``.

    ``prefix``: the backbone's name prefix in the checkpoint ("backbone." to take the
    backbone of a detector checkpoint; its other tensors are then dropped, by prefix).
    """
    if not output.endswith(".weights.h5"):
        raise ValueError(f"--output must end in .weights.h5, got {output!r}")
    state = torch_checkpoint.load_state_dict(checkpoint)
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if k not in resnet.CLASSIFIER_TENSORS}
    backbone = resnet.TorchvisionResNet(depth=depth, filters=tuple(filters))
    torch_weights.assign_torch_weights(resnet.torch_variables(backbone), state, checkpoint)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    backbone.save_weights(output)


def coco_label_map() -> LabelMap:
    """The 80 COCO categories, in the authors' order (by category id)."""
    with open(COCO_LABEL_MAP) as f:
        return LabelMap.from_coco_categories(json.load(f)["categories"])


def main(argv):
    """``python -m solo_tf.convert``: flags become arguments of the functions above."""
    del argv
    FLAGS = _flags()
    if not FLAGS.checkpoint:
        raise app.UsageError("give --checkpoint")
    config = solo_flags.config_from_flags(FLAGS)
    if FLAGS.backbone_only:
        if not FLAGS.output:
            raise app.UsageError("--backbone_only writes --output (a .weights.h5 file)")
        convert_backbone(
            FLAGS.checkpoint,
            config.model.backbone_depth,
            FLAGS.output,
            config.model.backbone_filters,
            FLAGS.backbone_prefix,
        )
        logging.info("wrote %s", FLAGS.output)
        return
    if not FLAGS.model_dir:
        raise app.UsageError("give --model_dir (a new folder)")
    label_map = LabelMap.from_json(FLAGS.label_map) if FLAGS.label_map else coco_label_map()
    options = detectron2_names.Detectron2Options(
        stride_in_1x1=FLAGS.detectron2_stride_in_1x1,
        input_format=FLAGS.detectron2_input_format,
        pixel_std=tuple(float(v) for v in FLAGS.detectron2_pixel_std),
    )
    path = convert_checkpoint(FLAGS.checkpoint, config, label_map, FLAGS.model_dir, options)
    logging.info("wrote %s", path)
    print(path)


def _flags():
    solo_flags.define_flags()
    if "checkpoint" not in flags.FLAGS:
        flags.DEFINE_string("checkpoint", "", "The PyTorch .pth checkpoint to convert.")
        flags.DEFINE_bool("backbone_only", False, "Convert a torchvision ResNet only.")
        flags.DEFINE_string("output", "", "--backbone_only: the .weights.h5 file to write.")
        flags.DEFINE_string(
            "backbone_prefix", "", "--backbone_only: take the tensors under this prefix."
        )
        flags.DEFINE_string(
            "label_map", "", "label_map.json of the classes; default: COCO's 80 (packaged)."
        )
        flags.DEFINE_bool(
            "detectron2_stride_in_1x1",
            True,
            "AdelaiDet checkpoints: MODEL.RESNETS.STRIDE_IN_1X1 of their training config "
            "(True: detectron2's default); sets the model's stride_in_1x1 (depth 50/101).",
        )
        flags.DEFINE_enum(
            "detectron2_input_format",
            "BGR",
            list(detectron2_names.INPUT_FORMATS),
            "AdelaiDet checkpoints: INPUT.FORMAT of their training config.",
        )
        flags.DEFINE_list(
            "detectron2_pixel_std",
            ["1", "1", "1"],
            "AdelaiDet checkpoints: MODEL.PIXEL_STD (in INPUT.FORMAT's order); MODEL.PIXEL_MEAN "
            "must be ImageNet's (detectron2's default).",
        )
    return flags.FLAGS


if __name__ == "__main__":
    _flags()
    entry_point.run(main)
