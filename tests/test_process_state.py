"""Library code run in the service's worker threads leaves process-wide state alone: two exports
and two Pareto plots at once, while the main thread watches ``sys.stdout`` throughout; the warning
filters and matplotlib's backend are the same afterwards. (The warning filters are not watched
throughout: torch.export and onnxscript use ``warnings.catch_warnings`` inside.)"""

from __future__ import annotations

import sys
import threading
import warnings

import matplotlib

from nasprune.export import export_subnet, read_metadata
from nasprune.registry import create_supernet
from nasprune.search.plot import pareto_plot
from nasprune.search.study import TrialRecord


def _trials() -> list[TrialRecord]:
    return [
        TrialRecord(
            number=i,
            subnet_key=f"k{i}",
            config={},
            accuracy=0.5 + 0.04 * i,
            latency_ms=0.1 * (i + 1),
            params=100 * i,
            macs=1000 * i,
            feasible=i < 7,
        )
        for i in range(10)
    ]


def test_concurrent_exports_and_plots_leave_process_state_alone(tmp_path):
    net = create_supernet("mlp_digits").eval()
    cfgs = [net.space.smallest(), net.space.largest()]
    trials = _trials()
    before_backend = matplotlib.get_backend()
    matplotlib.use("pdf")  # not the Agg that a plot would switch the process to
    stdout, filters, showwarning = sys.stdout, warnings.filters, warnings.showwarning
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def work(fn, *args):
        def run():
            try:
                start.wait(60)
                fn(*args)
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        return threading.Thread(target=run)

    threads = [work(export_subnet, net, cfg, tmp_path / f"m{i}.onnx") for i, cfg in enumerate(cfgs)]
    threads += [work(pareto_plot, trials, {7, 8}, 0.75, 6, tmp_path / f"p{i}.png", f"plot {i}") for i in range(2)]
    seen = set()
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):  # what other threads see while the work runs
            seen.add((sys.stdout is stdout, warnings.showwarning is showwarning))
            for t in threads:
                t.join(0.001)
        backend = matplotlib.get_backend()
    finally:
        matplotlib.use(before_backend)

    assert not errors, errors
    assert seen == {(True, True)}
    assert sys.stdout is stdout and warnings.filters is filters and warnings.showwarning is showwarning
    assert backend == "pdf"
    assert all(read_metadata(tmp_path / f"m{i}.onnx")["subnet_key"] == cfg.key() for i, cfg in enumerate(cfgs))
    assert all((tmp_path / f"p{i}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for i in range(2))
