"""A small ResNet for 1 x 28 x 28 digits (the built-in ``resnet_mnist`` space).

A plain torch model with no nasprune code in it: its search space is derived from its graph, like a
user's model (``nasprune/search_spaces/resnet_mnist.yaml`` holds the derived space, narrowed by hand). A stem
conv, then stages of basic residual blocks: the first block of a stage downsamples through a 1x1
projection shortcut, the others add their input unchanged (so they can be skipped: elastic depth).
Global average pooling and a linear head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, mid: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, mid, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, c_out, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNetMNIST(nn.Module):
    """Stem conv (``stem`` channels), then per stage ``blocks`` basic blocks of ``width`` channels,
    the first with stride 2; global average pool, linear head."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, stem: int = 16,
                 widths=(32, 64, 128), blocks: int = 3):  # fmt: skip
        super().__init__()
        self.stem_conv = nn.Conv2d(in_channels, stem, 3, 1, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(stem)
        stages, c = [], stem
        for w in widths:
            stages.append(nn.Sequential(*(BasicBlock(c if j == 0 else w, w, w, 2 if j == 0 else 1)
                                          for j in range(blocks))))  # fmt: skip
            c = w
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem_conv(x)))
        x = self.stages(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet_mnist(num_classes: int = 10, in_channels: int = 1, stem: int = 16, width: int = 32, stages: int = 3,
                 blocks: int = 3) -> ResNetMNIST:  # fmt: skip
    """The factory the space names: ``nasprune.models.resnet_mnist:resnet_mnist``. Stage ``i`` has
    ``width * 2**i`` channels (the defaults give the built-in space's largest model)."""
    return ResNetMNIST(num_classes, in_channels, stem, tuple(width * 2**i for i in range(stages)), blocks)
