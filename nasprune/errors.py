"""Named exceptions for user-facing errors. Every one carries a message that says how to fix it."""

from __future__ import annotations


class NasPruneError(Exception):
    """Base class of every error nasprune raises on purpose."""


class SpaceError(NasPruneError):
    """A search-space file or name is invalid or does not exist."""


class ConfigError(NasPruneError):
    """A subnet configuration does not fit its search space."""


class ExportError(NasPruneError):
    """ONNX export failed its checks (checker or onnxruntime parity)."""


class CheckpointError(NasPruneError):
    """A checkpoint file is corrupt or belongs to a different search space."""


class DatasetError(NasPruneError):
    """A dataset name is unknown or its data cannot be loaded offline."""


class DatasetNameTaken(DatasetError):
    """A dataset name that is already in use (by a built-in or an added dataset)."""


class LatencyTableError(NasPruneError):
    """A latency table is missing, corrupt, incompatible, or lacks an entry."""


class BudgetError(NasPruneError):
    """A latency budget cannot be met by any subnet of the space on the device."""


class GraphError(NasPruneError):
    """A model cannot be traced or analysed, or its weights do not fit its architecture."""
