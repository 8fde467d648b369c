"""ResNet-style CNN family: stem conv, stages of basic residual blocks, global pooling, linear head.

The first block of every stage has a projection shortcut (1x1 conv + BN), so a stage can change
width and resolution at any config; the other blocks add their input unchanged. All blocks of a
stage write the same residual stream, whose width is the stage's ``out`` width layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nasprune.elastic.modules import ElasticBatchNorm2d, ElasticConv2d, ElasticDepth, ElasticLinear
from nasprune.models.base import ChannelGroup, Family, LayerShape, conv_out
from nasprune.space import ResNetSpace, SubnetConfig


class BasicBlock(nn.Module):
    def __init__(self, conv1: nn.Module, bn1: nn.Module, conv2: nn.Module, bn2: nn.Module, shortcut=None):
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = conv1, bn1, conv2, bn2
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    def __init__(self, stem_conv: nn.Module, stem_bn: nn.Module, stages: list[nn.Module], fc: nn.Module):
        super().__init__()
        self.stem_conv, self.stem_bn = stem_conv, stem_bn
        self.stages = nn.ModuleList(stages)
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem_conv(x)))
        for stage in self.stages:
            x = stage(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _block_path(i: int, j: int) -> str:
    return f"stages.{i}.blocks.{j}"


class ResNetFamily(Family):
    name = "resnet"

    def build(self, space: ResNetSpace) -> ResNet:
        c_in = space.input_shape[0]
        c = max(space.stem_widths)
        stem_conv = ElasticConv2d(c_in, c, 3, space.stem_stride)
        stem_bn = ElasticBatchNorm2d(c)
        stages = []
        for st in space.stages:
            out, mid = max(st.out_widths), max(st.mid_widths)
            blocks = []
            for j in range(max(st.depths)):
                stride, cin = (st.stride, c) if j == 0 else (1, out)
                shortcut = (
                    nn.Sequential(ElasticConv2d(cin, out, 1, stride), ElasticBatchNorm2d(out)) if j == 0 else None
                )
                bn2 = ElasticBatchNorm2d(out)
                blocks.append(
                    BasicBlock(
                        ElasticConv2d(cin, mid, 3, stride),
                        ElasticBatchNorm2d(mid),
                        ElasticConv2d(mid, out, 3, 1),
                        bn2,
                        shortcut,
                    )
                )
            stages.append(ElasticDepth(blocks))
            c = out
        return ResNet(stem_conv, stem_bn, stages, ElasticLinear(c, space.num_classes))

    def trace(self, space: ResNetSpace, cfg: SubnetConfig) -> list[LayerShape]:
        c_in, h, w = space.input_shape
        c = cfg.widths["stem"]
        layers = [
            LayerShape("stem_conv", "conv2d", c_in, c, "stem", 3, space.stem_stride, h, w),
            LayerShape(
                "stem_bn",
                "batchnorm",
                c,
                c,
                "stem",
                h_in=conv_out(h, 3, space.stem_stride),
                w_in=conv_out(w, 3, space.stem_stride),
            ),
        ]
        h, w = layers[-1].h_in, layers[-1].w_in
        for i, st in enumerate(space.stages):
            out = cfg.widths[f"stage{i}.out"]
            for j in range(cfg.depths[f"stage{i}"]):
                p, s = _block_path(i, j), (st.stride if j == 0 else 1)
                mid = cfg.widths[f"stage{i}.block{j}.mid"]
                h2, w2 = conv_out(h, 3, s), conv_out(w, 3, s)
                layers += [
                    LayerShape(f"{p}.conv1", "conv2d", c, mid, p, 3, s, h, w),
                    LayerShape(f"{p}.bn1", "batchnorm", mid, mid, p, h_in=h2, w_in=w2),
                    LayerShape(f"{p}.conv2", "conv2d", mid, out, p, 3, 1, h2, w2),
                    LayerShape(f"{p}.bn2", "batchnorm", out, out, p, h_in=h2, w_in=w2),
                ]
                if j == 0:
                    layers += [
                        LayerShape(f"{p}.shortcut.0", "conv2d", c, out, p, 1, s, h, w),
                        LayerShape(f"{p}.shortcut.1", "batchnorm", out, out, p, h_in=h2, w_in=w2),
                    ]
                c, h, w = out, h2, w2
        layers.append(LayerShape("fc", "linear", c, space.num_classes, "head", bias=True))
        return layers

    def channel_groups(self, space: ResNetSpace) -> list[ChannelGroup]:
        groups = []
        first = _block_path(0, 0)
        groups.append(ChannelGroup("stem", ("stem_conv",), ("stem_bn",), (f"{first}.conv1", f"{first}.shortcut.0")))
        n = len(space.stages)
        for i, st in enumerate(space.stages):
            depth = max(st.depths)
            for j in range(depth):
                p = _block_path(i, j)
                groups.append(ChannelGroup(f"stage{i}.block{j}.mid", (f"{p}.conv1",), (f"{p}.bn1",), (f"{p}.conv2",)))
            blocks = [_block_path(i, j) for j in range(depth)]
            producers = (*(f"{p}.conv2" for p in blocks), f"{blocks[0]}.shortcut.0")
            norms = (*(f"{p}.bn2" for p in blocks), f"{blocks[0]}.shortcut.1")
            consumers = tuple(f"{p}.conv1" for p in blocks[1:])
            if i + 1 < n:
                nxt = _block_path(i + 1, 0)
                consumers += (f"{nxt}.conv1", f"{nxt}.shortcut.0")
            else:
                consumers += ("fc",)
            groups.append(ChannelGroup(f"stage{i}.out", producers, norms, consumers))
        return groups
