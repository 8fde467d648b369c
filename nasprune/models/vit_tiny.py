"""A small Vision Transformer for 28x28 grey images: torchvision's ``VisionTransformer``, configured
small (patch 7, so 16 patches and a class token; 4 layers, hidden size 64, 4 heads, MLP 128) with a
one-channel patch embedding, as a user adapts it to their images.

A plain torch model with no nasprune code in it: its search space (heads per attention, neurons per
MLP, skippable encoder layers) is derived from its graph, like any user's model.
"""

from __future__ import annotations

from torch import nn

from nasprune._torchvision import import_torchvision


def vit_tiny(
    num_classes: int = 10,
    in_channels: int = 1,
    image_size: int = 28,
    patch_size: int = 7,
    num_layers: int = 4,
    num_heads: int = 4,
    hidden_dim: int = 64,
    mlp_dim: int = 128,
) -> nn.Module:
    model = import_torchvision().models.VisionTransformer(
        image_size=image_size, patch_size=patch_size, num_layers=num_layers, num_heads=num_heads,
        hidden_dim=hidden_dim, mlp_dim=mlp_dim, num_classes=num_classes,
    )  # fmt: skip
    model.conv_proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
    return model
