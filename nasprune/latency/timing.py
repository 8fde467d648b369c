"""Timing ONNX models with onnxruntime: sessions pinned to a thread count, robust statistics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nasprune.onnxrt import make_session

__all__ = [
    "Timing",
    "feed_for",
    "interleave_calls",
    "make_session",
    "measure_model",
    "time_interleaved",
    "time_session",
]


@dataclass(frozen=True)
class Timing:
    """A model's latency: ``median_ms`` its typical call, ``p90_ms`` the 90th percentile of its calls."""

    median_ms: float
    p90_ms: float
    count: int

    @classmethod
    def of(cls, samples_ms: list[float] | np.ndarray) -> Timing:
        """Calls timed one after the other: their median and p90."""
        a = np.asarray(samples_ms, dtype=float)
        return cls(float(np.median(a)), float(np.percentile(a, 90)), int(a.size))

    @classmethod
    def of_rounds(cls, calls_ms: np.ndarray) -> Timing:
        """Calls timed in interleaved rounds (``(rounds, burst)``, from :func:`interleave_calls`): ``median_ms`` is
        the *minimum of the per-round medians*, the typical call in the machine's fastest state; ``p90_ms`` the
        90th percentile of all calls.

        Why the minimum: this VM's speed moves between rounds and between minutes, and other processes take
        rounds away; a round's median is a typical call at that moment, and the fastest round is what the
        machine can do. Measured (``benchmarks/lut_under_load.py``, docs/results.md): the same held-out subnets
        timed in two quiet builds minutes apart differed by up to 24% with the median of all calls, by <= 1%
        with this statistic, and by <= 1% between a quiet build and one with two busy processes beside it.
        """
        a = np.asarray(calls_ms, dtype=float)
        if a.ndim != 2 or a.size == 0:
            raise ValueError(f"expected calls as a (rounds, burst) array, got shape {a.shape}")
        return cls(float(np.median(a, axis=1).min()), float(np.percentile(a, 90)), int(a.size))


def feed_for(session, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs for every graph input, with the dynamic batch axis set to ``batch``: float32, or for a
    token model (int64 ``input_ids`` and ``attention_mask``) ids below 100 and a mask of ones (any other
    integer input, a latency unit's ids or mask: ones), at the
    sequence length its metadata records (``nasprune.max_length``); a boolean input (a mask) all true."""
    rng = np.random.default_rng(seed)
    meta = session.get_modelmeta().custom_metadata_map
    length = int(meta.get("nasprune.max_length", 0)) or None
    feed = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) else batch if i == 0 else length for i, d in enumerate(inp.shape)]
        if None in shape:
            raise ValueError(f"input '{inp.name}' has a dynamic axis other than the batch and no nasprune.max_length")
        if inp.type in ("tensor(int64)", "tensor(int32)"):
            ids = inp.name == "input_ids"  # a mask, or a latency unit's integer input (ids, mask): ones
            dtype = np.int64 if inp.type == "tensor(int64)" else np.int32
            feed[inp.name] = rng.integers(0, 100, shape).astype(dtype) if ids else np.ones(shape, dtype)
        elif inp.type == "tensor(bool)":  # a mask (a latency unit's input inside a token model)
            feed[inp.name] = np.ones(shape, bool)
        else:
            feed[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def time_session(session, feed: dict[str, np.ndarray], runs: int = 200, warmup: int = 20) -> Timing:
    """Median and p90 of ``runs`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        session.run(None, feed)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        session.run(None, feed)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return Timing.of(samples)


def measure_model(
    model: str | Path | bytes, threads: int = 1, batch: int = 1, runs: int = 200, warmup: int = 20
) -> Timing:
    """End-to-end latency of an ONNX model on this machine."""
    sess = make_session(model, threads)
    return time_session(sess, feed_for(sess, batch), runs=runs, warmup=warmup)


def interleave_calls(
    sessions: list,
    feeds: list[dict[str, np.ndarray]],
    rounds: int,
    burst: int = 1,
    settle: int = 0,
    warmup: int = 10,
    seed: int = 0,
    on_round=None,
    flush_bytes: int = 0,
) -> list[np.ndarray]:
    """Time several sessions against each other: every round visits them all in a fresh random order.

    Each visit makes ``settle`` untimed then ``burst`` timed calls. Interleaving spreads machine
    drift and bursts of load evenly over the sessions, so none of them is biased by when it ran.
    ``on_round()`` is called after each round (for progress bars). ``flush_bytes`` > 0: that much
    memory is written before every timed call (untimed), so a small graph's weights are no longer in
    the core's private caches, as inside a network whose other layers have just run.

    Returns each session's call times in ms as a ``(rounds, burst)`` array, round by round.
    """
    rng = np.random.default_rng(seed)
    flush = np.zeros(flush_bytes // 8) if flush_bytes > 0 else None
    for sess, feed in zip(sessions, feeds, strict=True):
        for _ in range(warmup):
            sess.run(None, feed)
    samples = [np.empty((rounds, burst)) for _ in sessions]
    for r in range(rounds):
        for i in rng.permutation(len(sessions)):
            sess, feed, out = sessions[i], feeds[i], samples[i][r]
            for _ in range(settle):
                sess.run(None, feed)
            for b in range(burst):
                if flush is not None:
                    flush += 1.0
                t0 = time.perf_counter_ns()
                sess.run(None, feed)
                out[b] = (time.perf_counter_ns() - t0) / 1e6
        if on_round is not None:
            on_round()
    return samples


def time_interleaved(sessions: list, feeds: list[dict[str, np.ndarray]], rounds: int, **kw) -> list[Timing]:
    """:func:`interleave_calls` (the same arguments), each session's calls summed up by :meth:`Timing.of_rounds`
    (the minimum of its per-round medians)."""
    return [Timing.of_rounds(c) for c in interleave_calls(sessions, feeds, rounds, **kw)]
