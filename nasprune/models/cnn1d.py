"""A plain 1-D CNN for sequences (e.g. MNIST-1D, 1 x 40): conv stages, global pooling, linear head.

A plain torch model with no nasprune code in it: its search space is derived from its graph
(``nasprune.graph``), like any user's model. Stages after the first repeat a residual block, so the
space has elastic depth as well as widths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock1d(nn.Module):
    def __init__(self, c: int, mid: int, kernel: int = 3):
        super().__init__()
        self.conv1 = nn.Conv1d(c, mid, kernel, padding=kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm1d(mid)
        self.conv2 = nn.Conv1d(mid, c, kernel, padding=kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm1d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + x)


class CNN1d(nn.Module):
    """Stem conv, then per stage a strided conv and ``blocks`` residual blocks; global average pool, linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths=(32, 64, 96), blocks: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(in_channels, widths[0], 5, padding=2, bias=False),
                                  nn.BatchNorm1d(widths[0]), nn.ReLU())  # fmt: skip
        stages, c = [], widths[0]
        for i, w in enumerate(widths):
            down = nn.Sequential(nn.Conv1d(c, w, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
                                 nn.BatchNorm1d(w), nn.ReLU())  # fmt: skip
            stages.append(nn.Sequential(down, *(ResBlock1d(w, w) for _ in range(blocks))))
            c = w
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool1d(x, 1), 1))


def cnn1d(num_classes: int = 10, in_channels: int = 1) -> CNN1d:
    """The factory a model reference names: ``nasprune.models.cnn1d:cnn1d``."""
    return CNN1d(num_classes, in_channels)
