"""MLP family over flat features: stages of Linear-BatchNorm-ReLU layers and a linear head.

Each hidden layer picks its own width; with elastic depth, the layer after the last active one
(or the head) reads the last active layer's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nasprune.elastic.modules import ElasticBatchNorm1d, ElasticDepth, ElasticLinear
from nasprune.models.base import ChannelGroup, Family, LayerShape
from nasprune.space import MLPSpace, SubnetConfig


class DenseBlock(nn.Module):
    def __init__(self, linear: nn.Module, bn: nn.Module):
        super().__init__()
        self.linear, self.bn = linear, bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.linear(x)))


class MLP(nn.Module):
    def __init__(self, stages: list[nn.Module], fc: nn.Module):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for stage in self.stages:
            x = stage(x)
        return self.fc(x)


class MLPFamily(Family):
    name = "mlp"

    def build(self, space: MLPSpace) -> MLP:
        c = space.input_shape[0]
        stages = []
        for st in space.stages:
            w = max(st.widths)
            blocks = []
            for _ in range(max(st.depths)):
                blocks.append(DenseBlock(ElasticLinear(c, w, bias=False), ElasticBatchNorm1d(w)))
                c = w
            stages.append(ElasticDepth(blocks))
        return MLP(stages, ElasticLinear(c, space.num_classes))

    def trace(self, space: MLPSpace, cfg: SubnetConfig) -> list[LayerShape]:
        c = space.input_shape[0]
        layers = []
        for i, _ in enumerate(space.stages):
            for j in range(cfg.depths[f"stage{i}"]):
                p, w = f"stages.{i}.blocks.{j}", cfg.widths[f"stage{i}.layer{j}"]
                layers += [
                    LayerShape(f"{p}.linear", "linear", c, w, p),
                    LayerShape(f"{p}.bn", "batchnorm", w, w, p),
                ]
                c = w
        layers.append(LayerShape("fc", "linear", c, space.num_classes, "head", bias=True))
        return layers

    def channel_groups(self, space: MLPSpace) -> list[ChannelGroup]:
        paths = [
            (f"stage{i}.layer{j}", f"stages.{i}.blocks.{j}")
            for i, st in enumerate(space.stages)
            for j in range(max(st.depths))
        ]
        groups = []
        for k, (name, p) in enumerate(paths):
            consumer = f"{paths[k + 1][1]}.linear" if k + 1 < len(paths) else "fc"
            groups.append(ChannelGroup(name, (f"{p}.linear",), (f"{p}.bn",), (consumer,)))
        return groups
