"""Importance ordering: permute channels so that "the first k" are the k most important.

Each channel group (see :class:`~nasprune.models.base.ChannelGroup`) is sorted by descending
importance and the same permutation is applied to every layer that writes, normalises or reads
it, so the full network computes exactly the same function.
"""

from __future__ import annotations

from typing import Literal

import torch

from nasprune.elastic.supernet import Supernet

Criterion = Literal["l1", "bn"]


def _importance(supernet: Supernet, group, criterion: Criterion) -> torch.Tensor:
    body = supernet.body
    if criterion == "bn":
        return sum(body.get_submodule(p).weight.detach().abs() for p in group.norms)
    total = 0
    for p in group.producers:
        w = body.get_submodule(p).weight.detach()
        total = total + w.abs().flatten(1).sum(1)
    return total


@torch.no_grad()
def reorder_channels(supernet: Supernet, criterion: Criterion = "l1") -> dict[str, torch.Tensor]:
    """Sort every channel group of ``supernet`` in place by importance; return the permutations.

    ``l1``: sum of the L1 norms of the producing filters (default); ``bn``: |gamma| of the norms.
    """
    perms = {}
    body = supernet.body
    for group in supernet.family.channel_groups(supernet.space):
        perm = torch.argsort(_importance(supernet, group, criterion), descending=True, stable=True)
        for p in group.producers:
            m = body.get_submodule(p)
            m.weight.copy_(m.weight[perm])
            if m.bias is not None:
                m.bias.copy_(m.bias[perm])
        for p in group.norms:
            m = body.get_submodule(p)
            for t in (m.weight, m.bias, m.running_mean, m.running_var):
                t.copy_(t[perm])
        for p in group.consumers:
            m = body.get_submodule(p)
            m.weight.copy_(m.weight[:, perm])
        perms[group.name] = perm
    return perms
