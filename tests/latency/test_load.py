"""Timing on a busy machine: how busy it is (other processes' CPU time, not our own), and a statistic that
other work and the machine's drifting speed do not move."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from nasprune.latency.load import BUSY_CORES, LoadProbe, MachineLoad
from nasprune.latency.timing import Timing


def _spin(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def test_other_processes_make_the_machine_busy_and_our_own_work_does_not():
    # our own work, however hard: not counted as other processes' (a quiet machine here stays near 0)
    probe = LoadProbe()
    a = np.random.default_rng(0).standard_normal((300, 300))
    for _ in range(20):
        a = a @ a.T / 300
    own = probe.read()
    assert own.others_cores is not None and own.cpus >= 1 and own.seconds > 0

    procs = _spin(2)
    try:
        probe = LoadProbe()
        deadline = time.monotonic() + 60
        load = probe.read()
        # until the two spinners have taken a core-second between them (an event, not a fixed wait)
        while load.others_cores * load.seconds < 1.0 and time.monotonic() < deadline:
            load = probe.read()
        assert load.others_cores * load.seconds >= 1.0, load
        assert load.busy and load.others_cores >= BUSY_CORES
        assert load.describe().startswith(f"busy: other processes used {load.others_cores:.2f} of {load.cpus} cores")
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


def test_a_load_without_proc_stat_says_so():
    load = MachineLoad(seconds=1.0, cpus=2, others_cores=None, load_avg=[0.5, 0.4, 0.3])
    assert not load.busy and "not measurable here" in load.describe() and "0.50" in load.describe()
    assert MachineLoad.model_validate_json(load.model_dump_json()) == load


def test_rounds_slowed_by_other_work_do_not_move_a_timing():
    """Six of ten rounds run at 1.5x (the machine busy or slower then): the median of all calls follows them,
    the minimum of the per-round medians keeps the machine's own speed."""
    calls = np.full((10, 5), 1.0) + np.random.default_rng(0).uniform(0, 0.01, (10, 5))
    calls[2:8] *= 1.5
    calls[0, 0] = 40.0  # a call interrupted by the scheduler
    t = Timing.of_rounds(calls)
    assert 1.0 <= t.median_ms <= 1.01 and t.count == 50 and t.p90_ms == pytest.approx(np.percentile(calls, 90))
    assert Timing.of(calls.ravel()).median_ms >= 1.5
    with pytest.raises(ValueError, match="rounds, burst"):
        Timing.of_rounds(np.ones(5))
