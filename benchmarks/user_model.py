"""A model nasprune has never seen, written the way a user would: plain PyTorch, no nasprune imports.

``dwse_net`` is a small MobileNetV2-style network for 1x28x28 images: a stem, two stages of a strided
conv followed by inverted-residual blocks (1x1 expand, 3x3 depthwise, squeeze-excite, 1x1 project,
residual add), global pooling and a linear head. It exercises what the built-in ``resnet_mnist`` does
not: depthwise convolutions tying a group's input to its output, squeeze-excite branches that must
follow their channels, and expansion widths inside residual blocks.

``benchmarks/vs_torch_pruning.py --target user`` trains it, derives its search space from its graph
(``nasprune.graph.derive_space``) and prunes it with nasprune and with Torch-Pruning.
Reference: ``user_model:dwse_net`` (with ``benchmarks/`` on ``sys.path``).
"""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, reduce: int = 4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, max(8, c // reduce), 1)
        self.fc2 = nn.Conv2d(max(8, c // reduce), c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int = 3):
        super().__init__()
        mid = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
        self.dw = nn.Sequential(
            nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True)
        )
        self.se = SqueezeExcite(mid)
        self.project = nn.Sequential(nn.Conv2d(mid, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.se(self.dw(self.expand(x))))


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class DWSENet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths=(32, 64), blocks: int = 2):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        )
        stages, cin = [], 16
        for w in widths:
            stages.append(nn.Sequential(_down(cin, w), *[InvertedResidual(w) for _ in range(blocks)]))
            cin = w
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def dwse_net(num_classes: int = 10, in_channels: int = 1) -> DWSENet:
    return DWSENet(num_classes=num_classes, in_channels=in_channels)
