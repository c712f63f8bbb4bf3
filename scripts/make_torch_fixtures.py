"""Writes tests/fixtures/*: PyTorch's own outputs for the parity tests (needs torch).

Run with a Python that has torch and torchvision (not a dependency of solo-tf):

    /opt/torchvenv/bin/python scripts/make_torch_fixtures.py

It builds torchvision's ResNet (its own BasicBlock / Bottleneck classes, narrow stage widths
so the files stay small) and the authors' FPN and SOLO heads written in torch from their
code (WXinlong/SOLO: ``mmdet/models/necks/fpn.py``, ``anchor_heads/solo_head.py``,
``decoupled_solo_head.py``, ``decoupled_solo_light_head.py``, ``solov2_head.py``,
``mask_heads/mask_feat_head.py``), with the authors' parameter
names, fills them with seeded random weights, runs them on fixed inputs and saves:

* ``torch_reader_{zip,legacy}.pth`` + ``torch_reader_expected.npz``: odd tensors (views,
  float16, bfloat16, int64, bool) in both ``torch.save`` formats, for the reader;
* ``resnet18_narrow.pth`` (legacy format) + ``.npz``: a ResNet-18 on a 97 x 131 input (odd
  sizes: padding and output-size formula), its four levels;
* ``resnet50_stride_in_1x1_narrow.pth`` + ``.npz``: a narrow ResNet-50 whose strided
  bottlenecks stride their first 1x1 conv (detectron2's ``STRIDE_IN_1X1=True``: torchvision's
  Bottleneck with the strides of conv1 and conv2 swapped) on a 65 x 97 input, its four levels;
* ``solo_{vanilla,decoupled,decoupled_light}.pth``, ``solov2.pth`` + ``.npz``: ResNet-50
  (narrow) + FPN + head on a 96 x 128 input (the authors pad to multiples of 32): backbone
  levels, FPN levels and head outputs in NHWC under solo-tf's output names.
  ``solo_decoupled.pth`` is in the legacy format, the others zip.

Everything is float32 and deterministic (seed 0).
"""

from __future__ import annotations

import collections
import os

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

# SOLO_FIXTURES_OUT: write elsewhere (to compare a regeneration with the committed files).
OUT = os.environ.get(
    "SOLO_FIXTURES_OUT", os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
)
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
# The tiny SOLO of the fixtures (tests/test_convert.py builds the same in Keras).
WIDTHS = (4, 4, 8, 16)  # ResNet-50 stage widths (bottleneck outputs 16, 16, 32, 64)
FPN_CHANNELS = 16
HEAD_CHANNELS = 32
NORM_GROUPS = 8  # the authors hard-code GroupNorm(32); 8 groups of 4 channels here
STACKED_CONVS = 2
NUM_GRIDS = (8, 6, 4, 3, 2)
NUM_CLASSES = 4  # category channels (the authors' num_classes - 1)
MASK_FEATURE_MID = 16  # SOLOv2 mask feature branch: per-level convs (MaskFeatHead out_channels)
MASK_FEATURE_CHANNELS = 16  # E: mask features and dynamic kernels (its num_classes)


def narrow_resnet(block, layers, widths):
    """torchvision's ResNet with its own blocks and ``widths`` as stage widths; no classifier."""
    model = torchvision.models.resnet.ResNet(block, layers)
    model.inplanes = 64
    for stage, (width, count) in enumerate(zip(widths, layers, strict=True)):
        stride = 1 if stage == 0 else 2
        setattr(model, f"layer{stage + 1}", model._make_layer(block, width, count, stride=stride))
    del model.fc, model.avgpool
    return model


def resnet_levels(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    levels = []
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = stage(x)
        levels.append(x)
    return levels


class ConvModule(nn.Module):
    """mmcv's ConvModule: conv, optional GroupNorm ("gn"), optional ReLU."""

    def __init__(self, cin, cout, kernel, norm=False, relu=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=not norm)
        if norm:
            self.gn = nn.GroupNorm(NORM_GROUPS, cout)
        self.norm, self.relu = norm, relu

    def forward(self, x):
        x = self.conv(x)
        if self.norm:
            x = self.gn(x)
        return F.relu(x) if self.relu else x


class FPN(nn.Module):
    """mmdet v1 FPN, num_outs=5, no extra convs: P6 = max_pool2d(P5, 1, stride=2)."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.lateral_convs = nn.ModuleList(
            ConvModule(c, out_channels, 1, relu=False) for c in in_channels
        )
        self.fpn_convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3, relu=False) for _ in in_channels
        )

    def forward(self, inputs):
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], scale_factor=2, mode="nearest"
            )
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=True)]
        outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs


def coords(x):
    """The authors' CoordConv channels: x then y, torch.linspace(-1, 1)."""
    xr = torch.linspace(-1, 1, x.shape[-1])
    yr = torch.linspace(-1, 1, x.shape[-2])
    y, xx = torch.meshgrid(yr, xr, indexing="ij")
    return xx.expand([x.shape[0], 1, -1, -1]), y.expand([x.shape[0], 1, -1, -1])


def split_feats(feats):
    """The authors' split_feats: P2 halved (scale 0.5), P6 to P5's size, both bilinear."""
    return (
        F.interpolate(feats[0], scale_factor=0.5, mode="bilinear"),
        feats[1],
        feats[2],
        feats[3],
        F.interpolate(feats[4], size=feats[3].shape[-2:], mode="bilinear"),
    )


def tower(cin):
    return nn.ModuleList(
        ConvModule(cin if i == 0 else HEAD_CHANNELS, HEAD_CHANNELS, 3, norm=True)
        for i in range(STACKED_CONVS)
    )


def run(layers, x):
    for layer in layers:
        x = layer(x)
    return x


def category(head, conv, x, grid):
    # cate_down_pos = 0: resize to S x S before the first category conv.
    return conv(run(head.cate_convs, F.interpolate(x, size=grid, mode="bilinear")))


class SOLOHead(nn.Module):
    """WXinlong/SOLO's SOLOHead (anchor_heads/solo_head.py), forward without eval."""

    def __init__(self, fpn_channels):
        super().__init__()
        self.ins_convs = tower(fpn_channels + 2)
        self.cate_convs = tower(fpn_channels)
        self.solo_ins_list = nn.ModuleList(nn.Conv2d(HEAD_CHANNELS, s * s, 1) for s in NUM_GRIDS)
        self.solo_cate = nn.Conv2d(HEAD_CHANNELS, NUM_CLASSES, 3, padding=1)

    def forward(self, feats):
        out = {}
        for idx, x in enumerate(split_feats(feats)):
            xs, ys = coords(x)
            ins = run(self.ins_convs, torch.cat([x, xs, ys], 1))
            ins = F.interpolate(ins, scale_factor=2, mode="bilinear")
            out[f"mask_logits_{idx}"] = self.solo_ins_list[idx](ins)
            out[f"cate_logits_{idx}"] = category(self, self.solo_cate, x, NUM_GRIDS[idx])
        return out


class DecoupledSOLOHead(nn.Module):
    """WXinlong/SOLO's DecoupledSOLOHead: X and Y towers (one coordinate channel each)."""

    def __init__(self, fpn_channels):
        super().__init__()
        self.ins_convs_x = tower(fpn_channels + 1)
        self.ins_convs_y = tower(fpn_channels + 1)
        self.cate_convs = tower(fpn_channels)
        self.dsolo_ins_list_x = nn.ModuleList(
            nn.Conv2d(HEAD_CHANNELS, s, 3, padding=1) for s in NUM_GRIDS
        )
        self.dsolo_ins_list_y = nn.ModuleList(
            nn.Conv2d(HEAD_CHANNELS, s, 3, padding=1) for s in NUM_GRIDS
        )
        self.dsolo_cate = nn.Conv2d(HEAD_CHANNELS, NUM_CLASSES, 3, padding=1)

    def forward(self, feats):
        out = {}
        for idx, x in enumerate(split_feats(feats)):
            xs, ys = coords(x)
            fx = run(self.ins_convs_x, torch.cat([x, xs], 1))
            fy = run(self.ins_convs_y, torch.cat([x, ys], 1))
            fx = F.interpolate(fx, scale_factor=2, mode="bilinear")
            fy = F.interpolate(fy, scale_factor=2, mode="bilinear")
            out[f"mask_x_logits_{idx}"] = self.dsolo_ins_list_x[idx](fx)
            out[f"mask_y_logits_{idx}"] = self.dsolo_ins_list_y[idx](fy)
            out[f"cate_logits_{idx}"] = category(self, self.dsolo_cate, x, NUM_GRIDS[idx])
        return out


class DecoupledSOLOLightHead(nn.Module):
    """WXinlong/SOLO's DecoupledSOLOLightHead (no DCN): one tower feeds the X and Y convs."""

    def __init__(self, fpn_channels):
        super().__init__()
        self.ins_convs = tower(fpn_channels + 2)
        self.cate_convs = tower(fpn_channels)
        self.dsolo_ins_list_x = nn.ModuleList(
            nn.Conv2d(HEAD_CHANNELS, s, 3, padding=1) for s in NUM_GRIDS
        )
        self.dsolo_ins_list_y = nn.ModuleList(
            nn.Conv2d(HEAD_CHANNELS, s, 3, padding=1) for s in NUM_GRIDS
        )
        self.dsolo_cate = nn.Conv2d(HEAD_CHANNELS, NUM_CLASSES, 3, padding=1)

    def forward(self, feats):
        out = {}
        for idx, x in enumerate(split_feats(feats)):
            xs, ys = coords(x)
            ins = run(self.ins_convs, torch.cat([x, xs, ys], 1))
            ins = F.interpolate(ins, scale_factor=2, mode="bilinear")
            out[f"mask_x_logits_{idx}"] = self.dsolo_ins_list_x[idx](ins)
            out[f"mask_y_logits_{idx}"] = self.dsolo_ins_list_y[idx](ins)
            out[f"cate_logits_{idx}"] = category(self, self.dsolo_cate, x, NUM_GRIDS[idx])
        return out


class SOLOv2Head(nn.Module):
    """WXinlong/SOLO's SOLOv2Head (anchor_heads/solov2_head.py): coordinates concatenated,
    the whole map resized to S x S, the category branch without the coordinates."""

    def __init__(self, fpn_channels):
        super().__init__()
        self.kernel_convs = tower(fpn_channels + 2)
        self.cate_convs = tower(fpn_channels)
        self.solo_cate = nn.Conv2d(HEAD_CHANNELS, NUM_CLASSES, 3, padding=1)
        self.solo_kernel = nn.Conv2d(HEAD_CHANNELS, MASK_FEATURE_CHANNELS, 3, padding=1)

    def forward(self, feats):
        out = {}
        for idx, x in enumerate(split_feats(feats)):
            xs, ys = coords(x)
            kernel = F.interpolate(torch.cat([x, xs, ys], 1), size=NUM_GRIDS[idx], mode="bilinear")
            cate = kernel[:, :-2]
            out[f"kernel_preds_{idx}"] = self.solo_kernel(run(self.kernel_convs, kernel))
            out[f"cate_logits_{idx}"] = self.solo_cate(run(self.cate_convs, cate))
        return out


class MaskFeatHead(nn.Module):
    """WXinlong/SOLO's MaskFeatHead (mask_heads/mask_feat_head.py), start 0, end 3."""

    def __init__(self, fpn_channels):
        super().__init__()
        mid = MASK_FEATURE_MID
        self.convs_all_levels = nn.ModuleList()
        for level in range(4):
            convs = nn.Sequential()
            for unit in range(max(level, 1)):
                cin = fpn_channels + (2 if level == 3 else 0) if unit == 0 else mid
                convs.add_module(f"conv{unit}", ConvModule(cin, mid, 3, norm=True))
                if level > 0:
                    convs.add_module(
                        f"upsample{unit}",
                        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                    )
            self.convs_all_levels.append(convs)
        self.conv_pred = nn.Sequential(ConvModule(mid, MASK_FEATURE_CHANNELS, 1, norm=True))

    def forward(self, inputs):
        total = 0
        for level, x in enumerate(inputs):
            if level == 3:
                xs, ys = coords(x)
                x = torch.cat([x, xs, ys], 1)
            total = total + self.convs_all_levels[level](x)
        return self.conv_pred(total)


class Detector(nn.Module):
    """The authors' SingleStageInsDetector: backbone, neck, bbox_head (+ mask_feat_head)."""

    def __init__(self, head_class):
        super().__init__()
        self.backbone = narrow_resnet(torchvision.models.resnet.Bottleneck, [3, 4, 6, 3], WIDTHS)
        self.neck = FPN([4 * w for w in WIDTHS], FPN_CHANNELS)
        self.bbox_head = head_class(FPN_CHANNELS)
        if head_class is SOLOv2Head:
            self.mask_feat_head = MaskFeatHead(FPN_CHANNELS)


def randomize(module, seed):
    """Seeded random weights that keep activations O(1) (BN/GN statistics included)."""
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=gen) * std + mean

    def uniform(shape, low, high):
        return torch.rand(shape, generator=gen) * (high - low) + low

    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if tensor.dim() == 4:
                fan_in = tensor.shape[1] * tensor.shape[2] * tensor.shape[3]
                tensor.copy_(normal(tensor.shape, fan_in**-0.5))
            elif name.endswith(("running_var", "bn1.weight", "bn2.weight", "bn3.weight")):
                tensor.copy_(uniform(tensor.shape, 0.5, 1.5))
            elif name.endswith("downsample.1.weight") or name.endswith("gn.weight"):
                tensor.copy_(uniform(tensor.shape, 0.5, 1.5))
            elif "solo_cate" in name:
                tensor.copy_(normal(tensor.shape, 0.5, -1.0))  # some cells score > 0.1
            else:
                tensor.copy_(normal(tensor.shape, 0.1))


def nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1).copy()


def fixed_image(height, width, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, size=(1, height, width, 3)).astype(np.float32)


def to_torch(image):
    return torch.from_numpy(((image - MEAN) / STD).transpose(0, 3, 1, 2).copy())


def save(name, state, arrays, legacy):
    torch.save(state, os.path.join(OUT, f"{name}.pth"), _use_new_zipfile_serialization=not legacy)
    np.savez_compressed(os.path.join(OUT, f"{name}.npz"), **arrays)


def reader_fixture():
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(4, 6, generator=gen)
    tensors = collections.OrderedDict(
        conv=torch.randn(3, 2, 3, 3, generator=gen),
        transposed=base.t(),  # a non-contiguous view
        sliced=base[1:3, 2:5],  # a view with an offset
        half=torch.randn(5, generator=gen).half(),
        bfloat16=torch.randn(5, generator=gen).bfloat16(),
        int64=torch.arange(7),
        flags=torch.tensor([True, False, True]),
        scalar=torch.tensor(2.5),
    )
    expected = {
        k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in tensors.items()
    }
    checkpoint = {"meta": {"epoch": 3, "CLASSES": ("a", "b")}, "state_dict": tensors}
    torch.save(checkpoint, os.path.join(OUT, "torch_reader_zip.pth"))
    torch.save(
        checkpoint,
        os.path.join(OUT, "torch_reader_legacy.pth"),
        _use_new_zipfile_serialization=False,
    )
    np.savez(os.path.join(OUT, "torch_reader_expected.npz"), **expected)


def backbone_fixture(name, model, weight_seed, image_hw, image_seed, legacy):
    """A ResNet with seeded random weights on a fixed input: its weights and four levels."""
    randomize(model, seed=weight_seed)
    model.eval()
    image = fixed_image(*image_hw, seed=image_seed)
    with torch.no_grad():
        levels = resnet_levels(model, to_torch(image))
    arrays = {"image": image, **{f"P{k + 2}": nhwc(x) for k, x in enumerate(levels)}}
    save(name, model.state_dict(), arrays, legacy)


def resnet18_fixture():
    model = narrow_resnet(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2], (8, 8, 16, 16))
    backbone_fixture("resnet18_narrow", model, 2, (97, 131), 3, legacy=True)


def resnet50_stride_in_1x1_fixture():
    """detectron2's BottleneckBlock(stride_in_1x1=True): conv1 (1x1, pad 0) strides, conv2
    (3x3, pad 1) does not; torchvision's blocks otherwise (same names and tensors)."""
    model = narrow_resnet(torchvision.models.resnet.Bottleneck, [3, 4, 6, 3], WIDTHS)
    for stage in (model.layer2, model.layer3, model.layer4):
        stage[0].conv1.stride, stage[0].conv2.stride = (2, 2), (1, 1)
    backbone_fixture("resnet50_stride_in_1x1_narrow", model, 6, (65, 97), 7, legacy=False)


def solo_fixture(name, head_class, legacy):
    torch.manual_seed(0)
    model = Detector(head_class)
    randomize(model, seed=4)  # same seed: the backbones and FPNs of the fixtures are equal
    model.eval()
    image = fixed_image(96, 128, seed=5)
    with torch.no_grad():
        levels = resnet_levels(model.backbone, to_torch(image))
        pyramid = model.neck(levels)
        head = model.bbox_head(pyramid)
        if hasattr(model, "mask_feat_head"):
            head["mask_features"] = model.mask_feat_head(pyramid[:4])
    arrays = {"image": image}
    arrays.update({f"backbone_P{k + 2}": nhwc(x) for k, x in enumerate(levels)})
    arrays.update({f"fpn_P{k + 2}": nhwc(x) for k, x in enumerate(pyramid)})
    arrays.update({key: nhwc(value) for key, value in head.items()})
    save(name, model.state_dict(), arrays, legacy)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.use_deterministic_algorithms(True)
    reader_fixture()
    resnet18_fixture()
    resnet50_stride_in_1x1_fixture()
    solo_fixture("solo_vanilla", SOLOHead, legacy=False)
    solo_fixture("solo_decoupled", DecoupledSOLOHead, legacy=True)
    solo_fixture("solo_decoupled_light", DecoupledSOLOLightHead, legacy=False)
    solo_fixture("solov2", SOLOv2Head, legacy=False)
    for name in sorted(os.listdir(OUT)):
        print(f"{os.path.getsize(os.path.join(OUT, name)):>9}  {name}")


if __name__ == "__main__":
    main()
