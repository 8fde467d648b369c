"""Timing ONNX models with onnxruntime: sessions pinned to a thread count, robust statistics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nasprune.onnxrt import make_session

__all__ = ["Timing", "feed_for", "make_session", "measure_model", "time_interleaved", "time_session"]


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p90_ms: float
    count: int

    @classmethod
    def of(cls, samples_ms: list[float] | np.ndarray) -> Timing:
        a = np.asarray(samples_ms, dtype=float)
        return cls(float(np.median(a)), float(np.percentile(a, 90)), int(a.size))


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


def time_interleaved(
    sessions: list,
    feeds: list[dict[str, np.ndarray]],
    rounds: int,
    burst: int = 1,
    settle: int = 0,
    warmup: int = 10,
    seed: int = 0,
    on_round=None,
    flush_bytes: int = 0,
) -> list[Timing]:
    """Time several sessions against each other: every round visits them all in a fresh random order.

    Each visit makes ``settle`` untimed then ``burst`` timed calls. Interleaving spreads machine
    drift and bursts of load evenly over the sessions, so none of them is biased by when it ran.
    ``on_round()`` is called after each round (for progress bars). ``flush_bytes`` > 0: that much
    memory is written before every timed call (untimed), so a small graph's weights are no longer in
    the core's private caches, as inside a network whose other layers have just run.
    """
    rng = np.random.default_rng(seed)
    flush = np.zeros(flush_bytes // 8) if flush_bytes > 0 else None
    for sess, feed in zip(sessions, feeds, strict=True):
        for _ in range(warmup):
            sess.run(None, feed)
    samples: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for i in rng.permutation(len(sessions)):
            sess, feed, out = sessions[i], feeds[i], samples[i]
            for _ in range(settle):
                sess.run(None, feed)
            for _ in range(burst):
                if flush is not None:
                    flush += 1.0
                t0 = time.perf_counter_ns()
                sess.run(None, feed)
                out.append((time.perf_counter_ns() - t0) / 1e6)
        if on_round is not None:
            on_round()
    return [Timing.of(s) for s in samples]
