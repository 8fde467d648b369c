"""How wrong a latency table is: predicted vs measured latency of held-out subnets.

``validate_table`` exports random subnets that the correction was not fitted on, times them end to
end on this machine and reports median/p90/max absolute percentage error, the share within +-10%
and the Spearman rank correlation. ``measure_subnet`` measures one subnet (e.g. a search winner).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nasprune.latency.profile import (
    ProfileSettings,
    check_runs_here,
    deployable_supernet,
    export_all,
    measure_models,
    measure_subnet,
    sample_configs,
    workdir,
)
from nasprune.latency.table import ErrorReport, LatencyTable, Sample
from nasprune.latency.timing import Timing
from nasprune.space import SubnetConfig

__all__ = ["compare", "error_report", "measure_subnet", "validate_table"]


def error_report(
    predicted: Sequence[float], measured: Sequence[float], samples: list[Sample] | None = None
) -> ErrorReport:
    """Error statistics of ``predicted`` against ``measured`` (APE in percent)."""
    from scipy.stats import spearmanr

    p, m = np.asarray(predicted, dtype=float), np.asarray(measured, dtype=float)
    if p.size == 0:
        return ErrorReport(
            n=0, median_ape=0, p90_ape=0, max_ape=0, within_10=0, spearman=None, validated_at=time.strftime("%F %T")
        )
    ape = np.abs(p - m) / m * 100
    rho = float(spearmanr(p, m).statistic) if p.size >= 3 and np.ptp(p) > 0 and np.ptp(m) > 0 else None
    return ErrorReport(
        n=int(p.size),
        median_ape=float(np.median(ape)),
        p90_ape=float(np.percentile(ape, 90)),
        max_ape=float(ape.max()),
        within_10=float(np.mean(ape <= 10)),
        spearman=rho,
        validated_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        samples=samples or [],
    )


def validate_table(
    table: LatencyTable,
    n: int = 50,
    *,
    seed: int = 12345,
    exclude: set[str] | None = None,
    settings: ProfileSettings | None = None,
    progress: bool = False,
    folder: str | Path | None = None,
) -> ErrorReport:
    """Measure ``n`` held-out random subnets end to end on this machine and compare with the table.

    Held out: none of them is one the correction was fitted on (nor in ``exclude``). The machine
    must match the table's device profile. Store the result with ``table.with_error(report)``.
    """
    check_runs_here(table.device)
    settings = settings or table.settings
    held_out = {s.config.key() for s in table.fit_samples} | set(exclude or ())
    cfgs = sample_configs(table.space, n, np.random.default_rng(seed), exclude=held_out)
    with workdir(folder) as tmp:
        paths = export_all(deployable_supernet(table.space), cfgs, tmp, progress)
        timings = measure_models(paths, table.device, settings, progress, seed=seed, precision=table.precision)
    return compare(table, cfgs, timings)


def compare(table: LatencyTable, cfgs: Sequence[SubnetConfig], timings: Sequence[Timing]) -> ErrorReport:
    """The table's predictions for ``cfgs`` against their measured ``timings``."""
    predicted = [table.predict(c) for c in cfgs]
    samples = [Sample.of(table.space, c, t, p) for c, t, p in zip(cfgs, timings, predicted, strict=True)]
    return error_report(predicted, [t.median_ms for t in timings], samples)
