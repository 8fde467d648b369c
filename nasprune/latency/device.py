"""Device profiles: which runtime, settings and CPU a latency table was measured on.

A table is only valid for the profile it was built under; the profile's :meth:`~DeviceProfile.fingerprint`
(everything but the name) is stored in every table. The built-in device ``local-cpu`` is this
machine with onnxruntime's CPU execution provider, 1 intra-op thread and batch 1. Any other device
is a name given to a table built on that hardware (``nasprune lut build --device NAME`` run there).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from functools import cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

LOCAL_CPU = "local-cpu"

DeviceName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)]

# ISA extensions that change which kernels onnxruntime's MLAS picks (and so the latencies).
_ISA_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimd",
    "asimddp",
    "sve",
    "sve2",
)


class DeviceProfile(BaseModel):
    """Where and how latencies were measured. Built from the machine by :meth:`this_machine`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: DeviceName
    runtime: Literal["onnxruntime"] = "onnxruntime"
    runtime_version: str
    provider: str = "CPUExecutionProvider"
    threads: Annotated[int, Field(ge=1)] = 1
    batch_size: Annotated[int, Field(ge=1)] = 1
    cpu_model: str
    cpu_cores: Annotated[int, Field(ge=1)]
    cpu_arch: str = ""
    cpu_flags: tuple[str, ...] = ()
    l2_cache_kib: int | None = None

    def fingerprint(self) -> str:
        """A 16-hex-digit hash of everything that changes latency (all fields but ``name``)."""
        blob = json.dumps(self.model_dump(mode="json", exclude={"name"}), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def differences(self, other: DeviceProfile) -> list[str]:
        """``field: mine != theirs`` for every latency-relevant field that differs."""
        a, b = self.model_dump(exclude={"name"}), other.model_dump(exclude={"name"})
        return [f"{k}: {a[k]!r} != {b[k]!r}" for k in a if a[k] != b[k]]

    def describe(self) -> str:
        return (
            f"{self.name}: {self.runtime} {self.runtime_version} {self.provider}, {self.threads} thread(s), "
            f"batch {self.batch_size}, {self.cpu_model} ({self.cpu_cores} cores, {self.cpu_arch})"
        )

    @classmethod
    def this_machine(
        cls, name: str = LOCAL_CPU, threads: int = 1, batch_size: int = 1, provider: str = "CPUExecutionProvider"
    ) -> DeviceProfile:
        """The profile of the machine this process runs on, under ``name``."""
        import onnxruntime

        cpu = _cpu_facts()
        return cls(
            name=name,
            runtime_version=onnxruntime.__version__,
            provider=provider,
            threads=threads,
            batch_size=batch_size,
            **cpu,
        )

    @classmethod
    def local(cls) -> DeviceProfile:
        """The built-in device ``local-cpu``: this machine, CPU provider, 1 thread, batch 1."""
        return cls.this_machine(LOCAL_CPU)


@cache
def _cpu_facts() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Hardware", "Processor") and model in ("", platform.machine()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    l2 = None
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index2/size").read_text().strip()
        l2 = int(text[:-1]) * (1024 if text.endswith("M") else 1) if text[-1] in "KM" else int(text) // 1024
    except (OSError, ValueError, IndexError):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {
        "cpu_model": model or "unknown",
        "cpu_cores": cores,
        "cpu_arch": platform.machine(),
        "cpu_flags": tuple(f for f in _ISA_FLAGS if f in flags),
        "l2_cache_kib": l2,
    }
