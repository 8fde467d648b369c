"""How wrong a latency table is: predicted vs measured latency of held-out subnets.

``validate_table`` exports random subnets that the correction was not fitted on, times them end to
end on this machine and reports median/p90/max absolute percentage error, the share within +-10%
and the Spearman rank correlation. ``measure_subnet`` measures one subnet (e.g. a search winner).
"""

from __future__ import annotations

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
from nasprune.latency.table import ErrorReport, LatencyTable, compare, error_report

__all__ = ["compare", "error_report", "measure_subnet", "validate_table"]


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
