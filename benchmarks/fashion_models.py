"""Models a practitioner would prune on Fashion-MNIST, written as a user would (plain PyTorch).

- ``resnet20``: the CIFAR-style ResNet-20 of He et al. 2016 (3 stages of 3 basic blocks, 16/32/64
  channels, identity shortcuts with a 1x1 projection where the shape changes), the classic shape of
  pruning benchmarks, here with a 1-channel stem for 1x28x28 images.
- ``mobilenet_v2_28``: torchvision's MobileNetV2 (``weights=None``) with its stem adapted to 1x28x28
  as a user would: 1 input channel, stride 1 (so the network's total stride is 16, 28 -> 2), width 0.5.

References: ``fashion_models:resnet20``, ``fashion_models:mobilenet_v2_28`` (with ``benchmarks/`` on
``sys.path``); ``benchmarks/vs_torch_pruning.py --target fashion_resnet20`` etc.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for i, c in enumerate((16, 32, 64)):
            blocks = [BasicBlock(cin, c, 1 if i == 0 else 2)] + [BasicBlock(c, c) for _ in range(n - 1)]
            layers.append(nn.Sequential(*blocks))
            cin = c
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet20(num_classes: int = 10, in_channels: int = 1) -> ResNetCifar:
    return ResNetCifar(20, num_classes, in_channels)


def mobilenet_v2_28(num_classes: int = 10) -> nn.Module:
    from nasprune._torchvision import import_torchvision  # the PyPI wheel beside the CPU torch (see there)

    model = import_torchvision().models.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=0.5)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(1, stem.out_channels, 3, stride=1, padding=1, bias=False)
    return model
