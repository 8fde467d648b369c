"""The latency table: a versioned JSON file that predicts a subnet's latency on one device.

A table holds, for one space and one :class:`~nasprune.latency.device.DeviceProfile`, the median
and p90 latency of every op key's minimal graph, the fixed cost of an onnxruntime call, a fitted
:class:`Correction` from summed op latencies to end-to-end latency, the subnets it was fitted on and
its measured error on held-out subnets (:class:`ErrorReport`). ``predict(cfg)`` needs only the
config; ``min_latency()``/``max_latency()`` are exact over the whole space.

A table is fp32 or int8 (every unit and subnet quantized before it was timed). Finding, loading and
building tables is :mod:`nasprune.latency.store` (``get_table``); :func:`compare` scores a table
against measured subnets.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from nasprune.errors import LatencyTableError
from nasprune.latency.device import DeviceProfile
from nasprune.latency.load import MachineLoad
from nasprune.latency.ops import OpKey, all_ops, block_ops, extreme_config, ops_for
from nasprune.latency.settings import ProfileSettings
from nasprune.latency.timing import Timing
from nasprune.space import GraphSpace, SubnetConfig, format_validation_error

__all__ = [
    "Correction",
    "Entry",
    "ErrorReport",
    "LatencyTable",
    "Sample",
    "compare",
    "error_report",
    "fit_correction",
]

SCHEMA_VERSION = 1
NOISE_MS = 0.001
"""How far below zero an entry's time may be: a difference of two timings of a tiny op can come out
a hair negative (1 us is far above the noise seen, far below any real op's time)."""

NonNeg = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    # Every number in a table is finite: NaN or infinity (JSON has neither; Python's json writes and
    # reads them) would poison every prediction made from it.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Entry(_Strict):
    """One op key's own latency: its minimal graph's time minus its baseline's (see ``profile``).

    ``p90_ms`` is the graph's p90 minus the baseline's median. Noise can make a tiny op's time
    slightly negative: tables built now store it as 0 (:meth:`of`); a file may hold values down to
    ``-NOISE_MS``, which predictions floor at 0. Anything lower, or a p90 below the median, is refused.
    """

    op: OpKey
    median_ms: Annotated[float, Field(ge=-NOISE_MS)]
    p90_ms: Annotated[float, Field(ge=-NOISE_MS)]
    count: Annotated[int, Field(ge=1)]
    adjust_ms: float = 0.0
    """What end-to-end subnets say this unit costs beyond ``scale * median_ms`` in a network (its
    in-context time minus its scaled isolated time; :func:`fit_key_adjustments`). 0 when not fitted."""

    @model_validator(mode="after")
    def _ordered(self) -> Entry:
        if self.p90_ms < self.median_ms:
            raise ValueError(f"{self.op.describe()}: p90_ms {self.p90_ms:g} is below median_ms {self.median_ms:g}")
        return self

    @classmethod
    def of(cls, op: OpKey, timing: Timing) -> Entry:
        """An entry from a measurement, its noise below zero stored as 0 (no adjustment)."""
        median = max(0.0, timing.median_ms)
        return cls(op=op, median_ms=median, p90_ms=max(median, timing.p90_ms), count=timing.count)


class Sample(_Strict):
    """One subnet measured end to end through the deployment path (export, onnxruntime session)."""

    config: SubnetConfig
    measured_ms: NonNeg
    p90_ms: NonNeg
    count: Annotated[int, Field(ge=1)]
    macs: int
    weights: int
    predicted_ms: float | None = None

    @classmethod
    def of(cls, space, cfg: SubnetConfig, timing: Timing, predicted_ms: float | None = None) -> Sample:
        ops = ops_for(space, cfg)
        return cls(
            config=cfg,
            measured_ms=timing.median_ms,
            p90_ms=timing.p90_ms,
            count=timing.count,
            macs=sum(k.macs for k in ops),
            weights=sum(k.weights for k in ops),
            predicted_ms=predicted_ms,
        )


class Correction(_Strict):
    """From op latencies to end-to-end latency.

    ``ms = intercept_ms + scale * T + cache_ms_per_mweight * max(0, W - cache_free_weights) / 1e6 + A``

    where ``T`` is the sum over the subnet's ops of ``max(0, entry median)`` (each op's own time)
    and ``W`` the weights of the whole subnet; ``overhead_ms`` is the measured fixed cost of one
    onnxruntime call, which the intercept replaces after a fit. The cache term is the cost of
    streaming weights that no longer fit the caches: minimal graphs are timed warm, a large network
    evicts its own weights between runs. ``A`` is the sum of the ops' ``adjust_ms``: per-unit
    corrections fitted to the end-to-end subnets by ridge regression towards 0 (``key_ridge`` is the
    strength chosen by leave-one-out error; None: not fitted, because it did not predict held-out
    fit subnets better, or there were fewer than ``MIN_KEY_FIT`` of them).
    """

    overhead_ms: NonNeg
    intercept_ms: float = 0.0
    scale: Annotated[float, Field(gt=0)] = 1.0
    cache_ms_per_mweight: NonNeg = 0.0
    cache_free_weights: Annotated[int, Field(ge=0)] = 0
    fit_subnets: Annotated[int, Field(ge=0)] = 0
    fit_median_ape: float | None = None
    key_ridge: Annotated[float, Field(gt=0)] | None = None
    key_loo_ape: float | None = None
    """Mean leave-one-out APE (%) over the fit subnets with the per-unit adjustments (None: not fitted)."""
    base_loo_ape: float | None = None
    """The same without them (in-sample for the constant/scale/cache terms)."""

    def apply(self, ops_ms: float, weights: int) -> float:
        spill = max(0, weights - self.cache_free_weights) / 1e6
        return self.intercept_ms + self.scale * ops_ms + self.cache_ms_per_mweight * spill


COARSE_MEDIAN_APE = 5.0
COARSE_WITHIN_10 = 0.9
COARSE_MIN_N = 10
COARSE_HINT = (
    "coarse for this space: the search still measures the model it delivers, so a budget holds, but it may "
    "leave headroom. Spaces whose late layers run on tiny feature maps (e.g. torchvision models on 32x32 inputs) "
    "are bound by reading weights, which units timed one at a time cannot predict to 10%; more fit subnets "
    "(--fit) did not help there. See docs/latency.md, 'Where a table of units holds'."
)
"""What ``nasprune lut build``/``show`` add under a coarse table's error (:meth:`ErrorReport.coarse`)."""


class ErrorReport(_Strict):
    """A table's error on held-out subnets; APEs in percent, ``within_10`` a fraction."""

    n: Annotated[int, Field(ge=0)]
    median_ape: NonNeg
    p90_ape: NonNeg
    max_ape: NonNeg
    within_10: Annotated[float, Field(ge=0, le=1)]
    spearman: float | None
    validated_at: str
    samples: list[Sample] = []

    def coarse(self) -> bool:
        """Whether the table predicts held-out subnets clearly worse than it does on spaces bound by
        arithmetic (median APE above :data:`COARSE_MEDIAN_APE`, or fewer than :data:`COARSE_WITHIN_10`
        within +-10%), judged on at least :data:`COARSE_MIN_N` subnets."""
        return self.n >= COARSE_MIN_N and (self.median_ape > COARSE_MEDIAN_APE or self.within_10 < COARSE_WITHIN_10)

    def summary(self) -> str:
        rho = "n/a" if self.spearman is None else f"{self.spearman:.3f}"
        return (
            f"median APE {self.median_ape:.2f}%, p90 APE {self.p90_ape:.2f}%, "
            f"{100 * self.within_10:.0f}% within +-10%, Spearman {rho} (n={self.n})"
        )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def build_command(space: str, device: str) -> str:
    return f"nasprune lut build --space {space} --device {device}"


class LatencyTable(_Strict):
    """Predicts subnet latency (ms) on one device from the config alone.

    A pydantic model: ``model_dump_json()`` is the file format and ``model_validate(_json)`` checks a
    file (schema version, device fingerprint, space digest, no duplicate entries). The table carries
    its space definition, so it predicts without the space registry. Immutable: updates return copies.
    """

    schema_version: int
    precision: Literal["fp32", "int8"] = "fp32"
    """What the entries and subnets were timed as: float, or int8 QDQ (tables written before int8 are fp32)."""
    space: GraphSpace
    space_digest: str
    device: DeviceProfile
    device_fingerprint: str
    built_at: str
    build_seconds: NonNeg = 0.0
    build_load: MachineLoad | None = None
    """How busy the machine was while the table was timed (None: tables written before it was recorded)."""
    settings: ProfileSettings
    correction: Correction
    entries: list[Entry]
    fit_samples: list[Sample] = []
    error: ErrorReport | None = None
    """The stored validation result (None until validated)."""

    _ms: dict[OpKey, float] = PrivateAttr(default_factory=dict)
    _adj: dict[OpKey, float] = PrivateAttr(default_factory=dict)
    _extremes: dict = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _check_version(cls, data: Any) -> Any:
        settings = data.get("settings") if isinstance(data, dict) else None
        if isinstance(settings, dict) and "statistic" not in settings:  # written before the statistic was recorded
            data = {**data, "settings": {**settings, "statistic": "median of all calls"}}
        if isinstance(data, dict) and data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise ValueError(
                f"schema version {data['schema_version']!r}, but this nasprune reads version {SCHEMA_VERSION}; "
                "rebuild the table with 'nasprune lut build' (for another device: on that device)"
            )
        return data

    @model_validator(mode="after")
    def _check(self) -> LatencyTable:
        if self.device.fingerprint() != self.device_fingerprint:
            raise ValueError(
                f"the device profile does not match its fingerprint ({self.device.fingerprint()} != "
                f"{self.device_fingerprint}): the file was edited or is corrupt"
            )
        if self.space.digest() != self.space_digest:
            raise ValueError(
                f"the space definition does not match its digest ({self.space.digest()} != {self.space_digest}): "
                "the file was edited or is corrupt"
            )
        seen: set[OpKey] = set()
        for e in self.entries:
            if e.op in seen:
                raise ValueError(f"{e.op.describe()} is listed twice: the file is corrupt")
            seen.add(e.op)
            if self.correction.scale * max(0.0, e.median_ms) + e.adjust_ms < -NOISE_MS:
                raise ValueError(
                    f"{e.op.describe()}: adjust_ms {e.adjust_ms:g} makes its time negative "
                    f"(scale {self.correction.scale:g} x median_ms {e.median_ms:g}): the file is corrupt"
                )
        self._check_positive()
        return self

    def _check_positive(self) -> None:
        """Every subnet's predicted latency must be positive.

        This is the rule for the correction: ``intercept_ms`` may be negative (a fit can give a
        small negative constant), but not so negative that the fastest subnet (summed entries,
        scale and cache term included) would be predicted at 0 ms or less. Checked on the exact
        minimum over the space, which only needs entries for that subnet's ops.
        """
        try:
            low = self.min_latency()
        except LatencyTableError:
            return  # an incomplete table is allowed (``--extend``); its gaps are named when predicting
        if not low > 0:
            c = self.correction
            raise ValueError(
                f"correction (intercept_ms {c.intercept_ms:g}, scale {c.scale:g}) predicts {low:.6g} ms for the "
                "fastest subnet: every predicted latency must be positive"
            )

    def model_post_init(self, _ctx: Any) -> None:
        self._ms = {e.op: max(0.0, e.median_ms) for e in self.entries}
        self._adj = {e.op: e.adjust_ms for e in self.entries if e.adjust_ms}

    # -- construction --------------------------------------------------------------------------------------
    @classmethod
    def from_measurements(
        cls,
        space,
        device: DeviceProfile,
        entries: dict[OpKey, Timing],
        overhead: Timing,
        settings: ProfileSettings,
        precision: str = "fp32",
    ) -> LatencyTable:
        """An unfitted table: prediction = fixed call cost + sum of op times."""
        return cls(
            schema_version=SCHEMA_VERSION,
            precision=precision,
            space=space,
            space_digest=space.digest(),
            device=device,
            device_fingerprint=device.fingerprint(),
            built_at=_now(),
            settings=settings,
            correction=Correction(overhead_ms=overhead.median_ms, intercept_ms=overhead.median_ms),
            entries=[Entry.of(k, t) for k, t in entries.items()],
        )

    def _update(self, **changes) -> LatencyTable:
        return type(self)(**{**dict(self), **changes})

    def refit(self, samples: list[Sample]) -> LatencyTable:
        """The table with its correction fitted to ``samples`` (end-to-end measurements): constant,
        scale and cache term first, then the per-unit adjustments on what they leave."""
        raw = [e.model_copy(update={"adjust_ms": 0.0}) for e in self.entries]
        base = self._update(entries=raw, correction=fit_correction(self, samples), fit_samples=samples, error=None)
        adjust, ridge, loo, base_loo = fit_key_adjustments(base, samples)
        if adjust and not _fastest(base, base.correction, adjust) > 0:  # few noisy fit subnets (a busy machine)
            adjust, ridge, loo = {}, None, None  # would predict a subnet at <= 0 ms: the correction alone
        c = base.correction.model_copy(update={"key_ridge": ridge, "key_loo_ape": loo, "base_loo_ape": base_loo})
        entries = [e.model_copy(update={"adjust_ms": adjust.get(e.op, 0.0)}) for e in raw]
        fitted = base._update(entries=entries, correction=c)
        if samples and adjust:
            ape = [abs(fitted.predict(s.config) - s.measured_ms) / s.measured_ms * 100 for s in samples]
            fitted = fitted._update(correction=c.model_copy(update={"fit_median_ape": float(np.median(ape))}))
        return fitted

    def with_error(self, report: ErrorReport) -> LatencyTable:
        return self._update(error=report)

    def with_build_seconds(self, seconds: float, load: MachineLoad | None = None) -> LatencyTable:
        return self._update(build_seconds=seconds, build_load=load)

    def with_entries(self, entries: dict[OpKey, Timing], space=None) -> LatencyTable:
        """The table with more measured entries, e.g. for a space that gained choices (its error is reset)."""
        new = [Entry.of(k, t) for k, t in entries.items()]
        space = space or self.space
        return self._update(entries=[*self.entries, *new], space=space, space_digest=space.digest(), error=None)

    # -- reading -------------------------------------------------------------------------------------------
    def digest(self) -> str:
        """A short hash of the whole table (changes whenever any measurement or setting does)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LatencyTable) and self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]

    def __contains__(self, key: OpKey) -> bool:
        return key in self._ms

    def __len__(self) -> int:
        return len(self._ms)

    def op_ms(self, key: OpKey) -> float:
        """An op's own latency in ms (its entry's median, floored at 0)."""
        try:
            return self._ms[key]
        except KeyError:
            raise LatencyTableError(
                f"latency table for space '{self.space.name}' on device '{self.device.name}' has no entry for "
                f"{key.describe()}; measure the missing ops on that device with "
                f"'{build_command(self.space.name, self.device.name)} --extend' (or rebuild without --extend)"
            ) from None

    def missing(self, space=None) -> list[OpKey]:
        """Keys of ``space`` (default: the table's) that the table lacks."""
        return [k for k in all_ops(space or self.space) if k not in self._ms]

    def adjust_ms(self, key: OpKey) -> float:
        """The op's fitted per-unit adjustment (0 if none; see :class:`Correction`)."""
        return self._adj.get(key, 0.0)

    def predict_ops(self, ops: Iterable[OpKey]) -> float:
        ops = list(ops)
        base = self.correction.apply(sum(self.op_ms(k) for k in ops), sum(k.weights for k in ops))
        return base + sum(self._adj.get(k, 0.0) for k in ops)

    def predict(self, cfg: SubnetConfig | dict) -> float:
        """Predicted end-to-end latency of ``cfg`` in milliseconds on the table's device."""
        return self.predict_ops(ops_for(self.space, self.space.parse_config(cfg)))

    def breakdown(self, cfg: SubnetConfig | dict) -> list[tuple[str, OpKey, float]]:
        """``(block, key, own ms)`` per unit: where the time goes (before the correction)."""
        return [(b, k, self.op_ms(k)) for b, k in block_ops(self.space, self.space.parse_config(cfg))]

    # -- extremes ------------------------------------------------------------------------------------------
    def _extreme(self, pick) -> tuple[SubnetConfig, float]:
        if pick.__name__ not in self._extremes:
            c = self.correction
            self._extremes[pick.__name__] = extreme_config(
                self.space,
                lambda k: (self.op_ms(k), k.weights, self.adjust_ms(k)),
                pick,
                lambda v: c.apply(v[0], round(v[1])) + v[2],
            )
        return self._extremes[pick.__name__]

    def min_latency(self) -> float:
        """The smallest predicted latency of any subnet of the space (exact; no enumeration)."""
        return self._extreme(min)[1]

    def max_latency(self) -> float:
        """The largest predicted latency of any subnet of the space (exact)."""
        return self._extreme(max)[1]

    def min_config(self) -> SubnetConfig:
        """The subnet with the smallest predicted latency."""
        return self._extreme(min)[0]

    def max_config(self) -> SubnetConfig:
        """The subnet with the largest predicted latency."""
        return self._extreme(max)[0]

    # -- files ---------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        return self.model_dump_json(indent=1)

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON (atomically: readers never see a half-written file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(self.to_json() + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def from_json(cls, text: str, source: str = "<text>") -> LatencyTable:
        """Parse and check a table; every problem raises :class:`LatencyTableError` saying what to do."""
        hint = "delete it and rebuild it with 'nasprune lut build'"
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise LatencyTableError(f"latency table '{source}' is not valid JSON ({e}); {hint}") from None
        if not isinstance(raw, dict) or "schema_version" not in raw:
            raise LatencyTableError(f"'{source}' is not a nasprune latency table (it has no schema_version)")
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            what = format_validation_error(e)
            if "schema version" in what:
                raise LatencyTableError(f"latency table '{source}' has {what.split('error, ', 1)[-1]}") from None
            raise LatencyTableError(f"latency table '{source}' is corrupt: {what}; {hint}") from None

    @classmethod
    def load(cls, path: str | Path, space=None, device: DeviceProfile | None = None) -> LatencyTable:
        """Read a table file.

        With ``space``, the table must have been built for that definition of it, or one that runs the
        same ops (same :meth:`latency_digest`: other trained weights, another dataset); it then comes back
        as the table of ``space``. With ``device``, under that device profile (same fingerprint).
        """
        path = Path(path)
        if not path.is_file():
            raise LatencyTableError(f"latency table file '{path}' does not exist")
        table = cls.from_json(path.read_text(), str(path))
        if (
            space is not None
            and table.space.name == space.name
            and table.space_digest != space.digest()
            and table.space.latency_digest() == space.latency_digest()
        ):
            table = table._update(space=space, space_digest=space.digest())
        if space is not None and (table.space.name, table.space_digest) != (space.name, space.digest()):
            other = "another version of " if table.space.name == space.name else ""
            raise LatencyTableError(
                f"latency table '{path}' was built for {other}space '{table.space.name}' (digest "
                f"{table.space_digest}), not for '{space.name}' as it is now (digest {space.digest()}); "
                f"rebuild it with '{build_command(space.name, table.device.name)}' "
                "(add --extend to measure only the new ops)"
            )
        if device is not None and table.device_fingerprint != device.fingerprint():
            raise LatencyTableError(
                f"latency table '{path}' was measured on a different device or runtime than '{device.name}' "
                f"({'; '.join(table.device.differences(device))}); rebuild it with "
                f"'{build_command(table.space.name, device.name)}'"
            )
        return table


# -- the correction fit ------------------------------------------------------------------------------------


def _design(ops_ms: np.ndarray, weights: np.ndarray, free: float | None) -> np.ndarray:
    cols = [np.ones_like(ops_ms), ops_ms]
    if free is not None:
        cols.append(np.maximum(0.0, weights - free) / 1e6)
    return np.column_stack(cols)


def _solve(x: np.ndarray, y: np.ndarray, intercept_min: float = -np.inf) -> np.ndarray:
    """Least squares on relative error (rows weighted by 1/y), slope and cache term kept >= 0."""
    from scipy.optimize import lsq_linear

    w = 1.0 / y
    lower = [intercept_min, 1e-6] + [0.0] * (x.shape[1] - 2)
    return lsq_linear(x * w[:, None], y * w, bounds=(lower, np.inf)).x


def _fastest(table: LatencyTable, correction: Correction, adjust: dict) -> float:
    """The smallest latency over ``table``'s space predicted with ``correction`` and per-unit ``adjust``
    (exact, as :meth:`LatencyTable.min_latency`); +inf where the table lacks entries (nothing to check)."""
    try:
        return extreme_config(
            table.space,
            lambda k: (table.op_ms(k), k.weights, adjust.get(k, 0.0)),
            min,
            lambda v: correction.apply(v[0], round(v[1])) + v[2],
        )[1]
    except LatencyTableError:
        return math.inf


def fit_correction(table: LatencyTable, samples: list[Sample]) -> Correction:
    """Fit :class:`Correction` to end-to-end measurements.

    Constant + scale by least squares on relative error; the cache term's threshold is chosen among
    the sampled weight counts (or dropped) by leave-one-out error, so it is used only when it
    predicts held-out subnets better.
    """
    over = table.correction.overhead_ms
    if len(samples) < 3:
        return Correction(overhead_ms=over, intercept_ms=over, fit_subnets=len(samples))
    ops_ms = np.array([sum(table.op_ms(k) for k in ops_for(table.space, s.config)) for s in samples])
    weights = np.array([s.weights for s in samples], dtype=float)
    y = np.array([s.measured_ms for s in samples])
    candidates: list[float | None] = [None]
    if len(samples) >= 6:
        candidates += sorted({0.0, *np.quantile(weights, np.linspace(0.0, 0.8, 9)).round()})
    best: tuple[float, float | None] | None = None
    for free in candidates:
        x = _design(ops_ms, weights, free)
        errs = []
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            coef = _solve(x[keep], y[keep])
            errs.append(abs(x[i] @ coef - y[i]) / y[i])
        loo = float(np.mean(errs))
        if best is None or loo < best[0] - 1e-9:
            best = (loo, free)
    free = best[1]
    x = _design(ops_ms, weights, free)

    def correction(coef: np.ndarray) -> Correction:
        return Correction(
            overhead_ms=over,
            intercept_ms=float(coef[0]),
            scale=float(max(coef[1], 1e-6)),
            cache_ms_per_mweight=float(coef[2]) if free is not None else 0.0,
            cache_free_weights=int(free) if free is not None else 0,
            fit_subnets=len(samples),
            fit_median_ape=float(np.median(np.abs(x @ coef - y) / y * 100)),
        )

    fitted = correction(_solve(x, y))
    if not _fastest(table, fitted, {}) > 0:
        # A negative constant that would put the space's fastest subnet at <= 0 ms (a few fit subnets timed on a
        # busy machine can ask for it): the constant is kept >= 0 instead, so every prediction stays positive.
        fitted = correction(_solve(x, y, intercept_min=0.0))
    return fitted


MIN_KEY_FIT = 12
"""Fewer fit subnets than this: no per-unit adjustments (leave-one-out cannot choose their strength)."""
KEY_RIDGES = (1.0, 0.3, 0.1, 0.03)
"""Ridge strengths tried for the per-unit adjustments, strongest first."""
KEY_SIGMA_FLOOR_MS = 0.002
"""The prior scale of a unit's adjustment is its scaled time plus this (about the cost of dispatching a node)."""


def fit_key_adjustments(
    table: LatencyTable, samples: list[Sample]
) -> tuple[dict[OpKey, float], float | None, float | None, float | None]:
    """Per-unit corrections from end-to-end subnets: ``(adjust_ms per key, ridge, loo APE, base loo APE)``.

    A unit timed alone (warm caches, its own layout reorders, a producer in front) does not cost
    exactly ``scale`` times that inside a network, and the error differs per unit: on torchvision
    models the constant/scale/cache correction alone left 10-12% median error. Each subnet's residual
    after that correction is explained as a sum of per-unit adjustments ``d``, by least squares on
    relative error with a ridge penalty ``(ridge * d_k / sigma_k)^2`` pulling each towards 0
    (``sigma_k`` = the unit's scaled time + :data:`KEY_SIGMA_FLOOR_MS`, so a unit may move by about its
    own size) and ``d_k >= -scale * median_k`` (no unit costs less than nothing). The ridge is chosen
    among :data:`KEY_RIDGES` by leave-one-out APE over the fit subnets, and the adjustments are kept
    only if that beats the correction without them. Additive per unit, so the space's exact minimum
    and maximum stay exact.
    """
    if len(samples) < MIN_KEY_FIT:
        return {}, None, None, None
    from scipy.optimize import lsq_linear

    c = table.correction
    rows = [ops_for(table.space, s.config) for s in samples]
    keys = sorted({k for ops in rows for k in ops})
    col = {k: i for i, k in enumerate(keys)}
    n = np.zeros((len(samples), len(keys)))
    for r, ops in enumerate(rows):
        for k in ops:
            n[r, col[k]] += 1
    y = np.array([s.measured_ms for s in samples])
    base = np.array([table.predict_ops(ops) for ops in rows])
    scaled = np.array([c.scale * table.op_ms(k) for k in keys])
    sigma = scaled + KEY_SIGMA_FLOOR_MS
    lower, upper = -scaled, np.full(len(keys), np.inf)

    def solve(rows_: np.ndarray, ridge: float) -> np.ndarray:
        w = 1.0 / y[rows_]
        a = np.vstack([n[rows_] * w[:, None], np.diag(ridge / sigma)])
        b = np.concatenate([(y[rows_] - base[rows_]) * w, np.zeros(len(keys))])
        return lsq_linear(a, b, bounds=(lower, upper), method="bvls").x

    every = np.arange(len(y))
    base_loo = float(np.mean(np.abs(base - y) / y) * 100)
    best: tuple[float, float] | None = None
    for ridge in KEY_RIDGES:
        errs = []
        for i in every:
            d = solve(every[every != i], ridge)
            errs.append(abs(base[i] + n[i] @ d - y[i]) / y[i])
        loo = float(np.mean(errs) * 100)
        if best is None or loo < best[0]:
            best = (loo, ridge)
    if best[0] >= base_loo:
        return {}, None, best[0], base_loo
    d = solve(every, best[1])
    return {k: float(v) for k, v in zip(keys, d, strict=True) if v != 0.0}, best[1], best[0], base_loo


# -- a table against measurements -----------------------------------------------------------------


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


def compare(table: LatencyTable, cfgs: Sequence[SubnetConfig], timings: Sequence[Timing]) -> ErrorReport:
    """The table's predictions for ``cfgs`` against their measured ``timings``."""
    predicted = [table.predict(c) for c in cfgs]
    samples = [Sample.of(table.space, c, t, p) for c, t, p in zip(cfgs, timings, predicted, strict=True)]
    return error_report(predicted, [t.median_ms for t in timings], samples)
