"""Small models a user might write, full of ops no latency unit is written for (GELU, SiLU, Mish,
Hardswish, ELU, Softplus, LayerNorm, GroupNorm, adaptive pools to 2x2, pools with unusual parameters,
non-square kernels, splits, branch products, attention over tokens). ``tests/latency/test_unseen_ops.py``
derives their spaces, plans their units and builds their tables."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Residual(nn.Module):
    """``x + fc2(mish(fc1(x)))``: a skippable block with Mish inside."""

    def __init__(self, c: int, mid: int):
        super().__init__()
        self.fc1 = nn.Linear(c, mid)
        self.fc2 = nn.Linear(mid, c)

    def forward(self, x):
        return x + self.fc2(F.mish(self.fc1(x)))


class Tabular(nn.Module):
    """Two branches (SiLU, Hardswish) concatenated after a GELU stem, a residual block, LayerNorm."""

    def __init__(self, in_features: int = 12, num_classes: int = 3, width: int = 32):
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.GELU())
        self.block = _Residual(width, width // 2)
        self.norm = nn.LayerNorm(width)
        self.a = nn.Sequential(nn.Linear(width, width // 2), nn.SiLU())
        self.b = nn.Sequential(nn.Linear(width, width // 2), nn.Hardswish())
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        h = self.norm(self.block(self.stem(x)))
        h = torch.cat([self.a(h), self.b(h)], dim=1)
        return self.head(self.drop(F.softplus(h) * torch.tanh(h)))


class _SE(nn.Module):
    def __init__(self, c: int, mid: int = 8):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, mid, 1)
        self.fc2 = nn.Conv2d(mid, c, 1)

    def forward(self, x):
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(self.pool(x)))))


class _GeluBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return F.silu(x + self.bn2(self.conv2(self.act(self.bn1(self.conv1(x))))))


class SmallCNN(nn.Module):
    """Residual blocks with GELU, a depthwise block, SE, branches with Mish / ELU / a (1, 3) kernel
    concatenated, a split whose parts are multiplied, GroupNorm, pools with unusual parameters and
    ``AdaptiveAvgPool2d(2)`` before a Linear head."""

    def __init__(self, num_classes: int = 4, width: int = 16):
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.SiLU())
        self.blocks = nn.Sequential(_GeluBlock(w), _GeluBlock(w))
        self.dw = nn.Sequential(
            nn.Conv2d(w, w, 3, padding=1, groups=w, bias=False), nn.BatchNorm2d(w), nn.Hardswish(),
            nn.Conv2d(w, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w), nn.Mish(),
        )  # fmt: skip
        self.se = _SE(2 * w)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.b1 = nn.Sequential(nn.Conv2d(2 * w, w, (1, 3), padding=(0, 1)), nn.ELU())
        self.b2 = nn.Sequential(
            nn.MaxPool2d((3, 1), stride=1, padding=(1, 0)), nn.Conv2d(2 * w, w, 1), nn.LeakyReLU(0.2)
        )
        self.gn = nn.GroupNorm(4, 2 * w)
        self.head_pool = nn.AdaptiveAvgPool2d(2)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(2 * w * 4, num_classes)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        x = self.pool(self.se(self.dw(x)))
        x = torch.cat([self.b1(x), self.b2(x)], dim=1)
        a, b = torch.split(x, x.shape[1] // 2, dim=1)
        x = torch.cat([a * torch.sigmoid(b), F.softplus(b)], dim=1)
        x = F.mish(self.gn(x))
        return self.fc(self.drop(torch.flatten(self.head_pool(x), 1)))


class Tokens(nn.Module):
    """A 1-D CNN whose features then attend over positions: Linear over tokens (rank 3), softmax,
    matmul, transpose, an ``AdaptiveAvgPool1d(2)``."""

    def __init__(self, num_classes: int = 3, width: int = 16):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(1, width, 5, padding=2), nn.BatchNorm1d(width), nn.GELU())
        self.conv2 = nn.Sequential(nn.Conv1d(width, width, 3, padding=1), nn.Hardswish())
        self.q = nn.Linear(width, width)
        self.pool = nn.AdaptiveAvgPool1d(2)
        self.fc = nn.Linear(width * 2, num_classes)

    def forward(self, x):
        h = self.conv2(self.conv(x))
        t = h.transpose(1, 2)
        att = torch.softmax(self.q(t) @ t.transpose(1, 2) / 4.0, dim=-1)
        h = h + (att @ t).transpose(1, 2)
        return self.fc(torch.flatten(self.pool(h), 1))


class OddOps(nn.Module):
    """Ops from everywhere: a chunk whose parts are concatenated in reverse (a computed tuple), a grouped
    conv with its BatchNorm and ReLU, a buffer, ``torch.arange`` from a size, Upsample, a functional
    max pool with ceil_mode, slicing, clamp, amax over space."""

    def __init__(self, num_classes: int = 5, width: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.conv0 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=4)
        self.bn2 = nn.BatchNorm2d(width)
        self.register_buffer("scale", torch.ones(1, width, 1, 1))
        self.up = nn.Upsample(scale_factor=2)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        h = F.relu(self.conv0(F.gelu(self.conv(x))))
        h = torch.cat(h.chunk(2, dim=1)[::-1], dim=1)
        h = F.relu(self.bn2(self.conv2(h)))
        h = h * self.scale + torch.arange(h.shape[-1], dtype=h.dtype)
        h = F.max_pool2d(self.up(h), 2, 2, 0, 1, True)
        h = h[:, :, 1:, :].clamp(-1, 1)
        return self.fc(h.amax(dim=(2, 3)))


def tabular(num_classes: int = 3, in_features: int = 12, width: int = 32) -> Tabular:
    return Tabular(in_features, num_classes, width)


def small_cnn(num_classes: int = 4, width: int = 16) -> SmallCNN:
    return SmallCNN(num_classes, width)


def tokens(num_classes: int = 3, width: int = 16) -> Tokens:
    return Tokens(num_classes, width)


def odd_ops(num_classes: int = 5, width: int = 16) -> OddOps:
    return OddOps(num_classes, width)


# reference, kwargs, input shape
MODELS = {
    "tabular": ("tests.latency.unseen_models:tabular", {"num_classes": 3}, (12,)),
    "small_cnn": ("tests.latency.unseen_models:small_cnn", {"num_classes": 4}, (1, 12, 12)),
    "tokens": ("tests.latency.unseen_models:tokens", {"num_classes": 3}, (1, 24)),
    "odd_ops": ("tests.latency.unseen_models:odd_ops", {"num_classes": 5}, (3, 8, 8)),
}
