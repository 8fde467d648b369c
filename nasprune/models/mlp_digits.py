"""A residual MLP for flat features (the built-in ``mlp_digits`` space: sklearn's 8x8 digits, 64 pixels).

A plain torch model with no nasprune code in it: its search space is derived from its graph
(``nasprune/search_spaces/mlp_digits.yaml``). A Linear-BatchNorm-ReLU stem sets the residual stream's width;
each block is a bottleneck ``x + BN(fc2(ReLU(BN(fc1(x)))))`` followed by ReLU, so every block has its
own inner width and blocks can be skipped (elastic depth); a linear head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DenseBlock(nn.Module):
    def __init__(self, width: int, mid: int):
        super().__init__()
        self.fc1 = nn.Linear(width, mid, bias=False)
        self.bn1 = nn.BatchNorm1d(mid)
        self.fc2 = nn.Linear(mid, width, bias=False)
        self.bn2 = nn.BatchNorm1d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.fc2(F.relu(self.bn1(self.fc1(x))))))


class ResidualMLP(nn.Module):
    def __init__(self, num_classes: int = 10, in_features: int = 64, width: int = 128, mid: int = 64,
                 blocks: int = 3):  # fmt: skip
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(in_features, width, bias=False), nn.BatchNorm1d(width), nn.ReLU())
        self.blocks = nn.Sequential(*(DenseBlock(width, mid) for _ in range(blocks)))
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.stem(torch.flatten(x, 1))))


def mlp_digits(num_classes: int = 10, in_features: int = 64, width: int = 128, mid: int = 64,
               blocks: int = 3) -> ResidualMLP:  # fmt: skip
    """The factory the space names: ``nasprune.models.mlp_digits:mlp_digits`` (the defaults give the
    built-in space's largest model)."""
    return ResidualMLP(num_classes, in_features, width, mid, blocks)
