"""What a model family provides, and the one shape propagation every other part reads.

A family builds the elastic network body for a space and, for any config, *traces* it: the list of
:class:`LayerShape` (each conv/linear/norm that runs, with channels and spatial sizes). The trace
drives ``Supernet.select`` (which slice each layer runs), extraction, the parameter and MAC counts
and the latency table keys; there is no second place where shapes are worked out.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

from torch import nn

from nasprune.space import SubnetConfig

LayerKind = Literal["conv2d", "linear", "batchnorm"]


def conv_out(size: int, kernel: int, stride: int) -> int:
    """Output size of a 'same'-padded conv (padding = kernel // 2)."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


@dataclass(frozen=True)
class LayerShape:
    """One parametrised layer of a subnet as it runs.

    ``path`` is the module path inside the network body; ``block`` names the unit the layer
    belongs to (stem, a residual block, a hidden layer, head), which latency keys are built from.
    """

    path: str
    kind: LayerKind
    c_in: int
    c_out: int
    block: str
    kernel: int = 1
    stride: int = 1
    h_in: int = 1
    w_in: int = 1
    bias: bool = False

    @property
    def h_out(self) -> int:
        return conv_out(self.h_in, self.kernel, self.stride) if self.kind == "conv2d" else self.h_in

    @property
    def w_out(self) -> int:
        return conv_out(self.w_in, self.kernel, self.stride) if self.kind == "conv2d" else self.w_in

    @property
    def params(self) -> int:
        if self.kind == "batchnorm":
            return 2 * self.c_out
        weights = self.c_in * self.c_out * self.kernel * self.kernel
        return weights + (self.c_out if self.bias else 0)

    @property
    def macs(self) -> int:
        """Multiply-accumulates at batch 1 (norms fold into the preceding layer at inference)."""
        if self.kind == "batchnorm":
            return 0
        return self.c_in * self.c_out * self.kernel * self.kernel * self.h_out * self.w_out


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be permuted together to keep the network's function.

    ``producers`` write the channels (output dim of conv/linear weights), ``norms`` normalise them,
    ``consumers`` read them (input dim). A residual stream is one group across all its blocks.
    """

    name: str
    producers: tuple[str, ...]
    norms: tuple[str, ...]
    consumers: tuple[str, ...]


class Family(ABC):
    """A model family: builds elastic bodies and traces configs. Bodies expose ``stages[i]`` as
    :class:`~nasprune.elastic.modules.ElasticDepth` containers."""

    name: str

    @abstractmethod
    def build(self, space) -> nn.Module:
        """The elastic network body of the largest subnet."""

    @abstractmethod
    def trace(self, space, cfg: SubnetConfig) -> list[LayerShape]:
        """Every layer that runs for ``cfg``, in execution order."""

    @abstractmethod
    def channel_groups(self, space) -> list[ChannelGroup]:
        """The permutation groups of the largest subnet, one per width layer."""
