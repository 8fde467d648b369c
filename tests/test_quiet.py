"""The exporter's notices for torch's developers are ignored around each export, and nothing else is
(nasprune/_quiet.py): real exports in a fresh interpreter run with ``-W default``, so every warning
that is not filtered is printed on stderr."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import sys
    import warnings

    import torch
    from torch import nn

    from nasprune.export import export_model
    from nasprune.latency.graphs import _export_fragment

    class Add(nn.Module):  # two inputs sharing the dynamic batch: torch's "axis name" UserWarning
        def forward(self, a, b):
            return torch.relu(a + b)

    class Warns(nn.Module):  # a user's model that has something to say, the first time it runs
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 1:
                warnings.warn("USER-MODEL: this layer expects normalised input", UserWarning, stacklevel=1)
            return self.fc(x)

    _export_fragment(Add(), ((1, 8), (1, 8)), "add")
    model = Warns()
    export_model(model, (8,), sys.argv[1])  # export first: the user's warning is raised inside it
    assert model.calls > 1, model.calls
    left = [f for f in warnings.filters if f[1] is not None and ("LeafSpec" in f[1].pattern or "axis" in f[1].pattern)]
    assert not left, left  # (the first export imports sympy, which adds a filter of its own: not compared)
    # the same message as torch's notice, outside an export: shown, so the filter is not global
    warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated OUTSIDE-EXPORT", FutureWarning, stacklevel=1)
    # the optimiser's log records (WARNING, printed by Python's last-resort handler): not during an export
    import logging
    from nasprune._quiet import quiet_export
    folding = logging.getLogger("onnxscript.optimizer._constant_folding")
    with quiet_export():
        folding.warning("Evaluation failed: INSIDE-EXPORT")
    folding.warning("Evaluation failed: OUTSIDE-EXPORT")
    print("EXPORTED")
    """
)


def test_export_prints_no_torch_notices_and_keeps_other_warnings(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"} | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-W", "default", "-c", SCRIPT, str(tmp_path / "m.onnx")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0 and "EXPORTED" in proc.stdout, proc.stderr
    lines = proc.stderr.splitlines()
    noise = [ln for ln in lines if "Warning:" in ln and ("copyreg.py" in ln or "/torch/" in ln or "onnxscript" in ln)]
    assert not noise, proc.stderr
    assert any("UserWarning: USER-MODEL: this layer expects normalised input" in ln for ln in lines), proc.stderr
    assert any("FutureWarning: `isinstance(treespec, LeafSpec)` is deprecated OUTSIDE-EXPORT" in ln for ln in lines), (
        proc.stderr
    )
    assert "INSIDE-EXPORT" not in proc.stderr and "Evaluation failed: OUTSIDE-EXPORT" in proc.stderr, proc.stderr
