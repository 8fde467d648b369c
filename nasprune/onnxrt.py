"""onnxruntime sessions as nasprune runs every model: full graph optimisation, pinned threads.

The one place a session is made, for parity checks (:mod:`nasprune.export`), accuracy of quantized
models (:mod:`nasprune.quantize`), timing (:mod:`nasprune.latency.timing`) and tracking.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

__all__ = ["make_session"]


def make_session(model: str | Path | bytes, threads: int = 1, provider: str = "CPUExecutionProvider"):
    """An onnxruntime session with full graph optimisation and ``threads`` intra-op threads."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, sess_options=so, providers=[provider])
