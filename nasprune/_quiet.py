"""Warnings from torch's ONNX exporter that say nothing to a user, silenced only around the export.

``quiet_export()`` wraps each ``torch.onnx.export`` call (``nasprune.export._torch_export`` and
``nasprune.latency.graphs._export_fragment``: every export nasprune makes, so in whatever process or
thread makes it) and ignores exactly these, matched by category and message:

- ``FutureWarning: `isinstance(treespec, LeafSpec)` is deprecated`` (shown as coming from
  ``copyreg.py``): torch 2.13's exporter deep-copies its own pytree specs
  (``ExportedProgram.run_decompositions``) and trips its own deprecation. A notice for torch's
  developers; the export is correct. torch's own ``catch_warnings`` inside the export resets the
  "shown once" registry, so unfiltered it is printed on every export, in the middle of progress bars.
- ``UserWarning: # The axis name: batch will not be used, since it shares the same shape constraints
  with another axis``: when several inputs (a latency unit's operands) or dims share one dynamic
  ``Dim``, the ONNX graph names those axes alike. The axes stay dynamic and the model is the same
  (``check_parity`` runs it at other sizes); nothing for the user to know or change.

And two log records of the exporter's ONNX optimiser, at WARNING, which Python prints to stderr when
the application configured no logging (they surfaced timing the latency units of a token model):

- ``onnxscript.optimizer._constant_folding``: ``Evaluation failed: ...``: a constant it tried to fold
  ahead of time and left to run as a node instead (the graph is unchanged and correct);
- ``onnx_ir.passes.common.initializer_deduplication``: ``Skipped deduplication of initializer ...``.

Those two loggers are raised to ERROR for the duration of the export, and put back.

Everything else comes through as the application's filters say: a warning about the user's model or
data (raised by torch or by nasprune) is still shown. Nothing is filtered at import or globally.

``warnings.catch_warnings`` swaps the process-wide filter list for the duration (Python < 3.14 has no
per-thread filters). Exports run one at a time per process (``nasprune.export._EXPORT_LOCK``, which
callers hold around this), and torch's exporter already uses ``catch_warnings`` inside, so this adds
no new kind of interference with other threads: during an export, another thread's warnings with
these two messages are ignored too.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

# (category, regex matched at the start of the message, case-insensitively, as warnings.filterwarnings does)
EXPORT_NOISE_LOGGERS = ("onnxscript.optimizer._constant_folding", "onnx_ir.passes.common.initializer_deduplication")
EXPORT_NOISE: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
    (UserWarning, r"# The axis name: \S+ will not be used, since it shares the same shape constraints"),
)


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Ignore ``EXPORT_NOISE`` and the optimiser's log records of ``EXPORT_NOISE_LOGGERS`` below ERROR (see the
    module docstring) inside the block; every other warning and record as before."""
    loggers = [logging.getLogger(name) for name in EXPORT_NOISE_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            for category, message in EXPORT_NOISE:
                warnings.filterwarnings("ignore", message, category)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
