"""How busy the machine was while we timed: the CPU time that *other* processes took meanwhile.

A load average counts our own process too and lags by a minute; what disturbs a timing is other
work on the same cores. :class:`LoadProbe` reads the machine's busy CPU time (``/proc/stat``) and our
process's own (``getrusage``, every thread) at the start and the end of a stretch of work; the
difference, over the wall time, is how many cores other processes kept busy on average. Where
``/proc/stat`` is missing (not Linux) only the load average is recorded.
"""

from __future__ import annotations

import os
import resource
import time

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BUSY_CORES", "LoadProbe", "MachineLoad", "load_avg"]

BUSY_CORES = 0.25
"""Other processes using this many cores or more (on average) make the machine "busy" for a timing."""


class MachineLoad(BaseModel):
    """The machine's load over a stretch of timing work."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    seconds: float = Field(ge=0, description="wall time measured over")
    cpus: int = Field(ge=1, description="logical CPUs of the machine")
    others_cores: float | None = Field(
        None, ge=0, description="cores that other processes kept busy on average (None: not measurable here)"
    )
    steal_cores: float | None = Field(None, ge=0, description="cores' worth of time the hypervisor took (steal)")
    load_avg: list[float] | None = Field(None, description="1, 5 and 15-minute load average at the end")

    @property
    def busy(self) -> bool:
        return self.others_cores is not None and self.others_cores >= BUSY_CORES

    def describe(self) -> str:
        if self.others_cores is None:
            la = "n/a" if self.load_avg is None else f"{self.load_avg[0]:.2f}"
            return f"load average {la} on {self.cpus} CPUs (other processes' use not measurable here)"
        verdict = "busy" if self.busy else "quiet"
        return f"{verdict}: other processes used {self.others_cores:.2f} of {self.cpus} cores on average"


def _proc_stat() -> tuple[float, float] | None:
    """The machine's busy and stolen CPU seconds since boot, or None without ``/proc/stat``."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, *rest = (int(x) for x in fields[1:])
    steal = rest[0] if rest else 0
    hz = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / hz, steal / hz


def _own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def load_avg() -> list[float] | None:
    """The 1, 5 and 15-minute load average (None where the system has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class LoadProbe:
    """Started on creation; :meth:`read` gives the :class:`MachineLoad` since then (call it any number of times)."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._stat0 = _proc_stat()
        self._own0 = _own_cpu()

    def read(self) -> MachineLoad:
        wall = max(time.monotonic() - self._t0, 1e-9)
        stat = _proc_stat()
        others = steal = None
        if stat is not None and self._stat0 is not None:
            busy = stat[0] - self._stat0[0]
            own = _own_cpu() - self._own0
            others = round(max(0.0, (busy - own) / wall), 3)
            steal = round(max(0.0, (stat[1] - self._stat0[1]) / wall), 3)
        return MachineLoad(
            seconds=round(wall, 3),
            cpus=os.cpu_count() or 1,
            others_cores=others,
            steal_cores=steal,
            load_avg=load_avg(),
        )
