"""Building a latency table: time every op key, measure full subnets, fit the correction.

1. Every distinct :class:`~nasprune.latency.ops.OpKey` of the space gets a minimal ONNX graph
   (:mod:`nasprune.latency.graphs`) and an onnxruntime session under the device profile. All
   sessions, their baselines (the producers that feed feature maps, and an empty "null" graph that
   gives the fixed cost of a call) are timed against each other in rounds of random order
   (:func:`~nasprune.latency.timing.interleave_calls`), so drift and load bursts spread over all
   ops alike; a session's time is the minimum of its per-round medians (``ProfileSettings.statistic``).
   An entry is a key's time minus its baseline's.
2. ``n_fit`` subnets (the smallest, the largest and random ones) go through the real deployment
   path (``export_subnet`` -> onnxruntime session) and are timed end to end, again interleaved.
3. :func:`fit_correction` maps the summed op latencies to those end-to-end latencies (see
   :class:`~nasprune.latency.table.Correction`).
4. ``n_validate`` held-out random subnets (exported and timed in the same session as the fit ones,
   but not fitted on) measure the table's error (:mod:`nasprune.latency.validate`).

An ``int8`` table is built the same way from the same graphs, each quantized first
(:func:`nasprune.quantize.quantize_for_timing`: static QDQ, U8S8, per-channel, as deployed).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from nasprune.errors import LatencyTableError
from nasprune.export import export_subnet
from nasprune.latency.device import DeviceProfile
from nasprune.latency.graphs import (
    consumer_baseline,
    consumer_model,
    consumers_of,
    null_model,
    op_model,
    producer_model,
    producer_of,
)
from nasprune.latency.load import LoadProbe
from nasprune.latency.ops import OpKey, all_ops
from nasprune.latency.settings import ProfileSettings, check_precision
from nasprune.latency.table import LatencyTable, Sample, compare
from nasprune.latency.timing import Timing, feed_for, interleave_calls, make_session, time_session
from nasprune.quantize import quantize_for_timing
from nasprune.registry import create_supernet
from nasprune.space import SubnetConfig


def at_precision(models: Sequence, precision: str) -> list:
    """The models (bytes or paths) as they run at ``precision``: int8 ones quantized (as bytes)."""
    if check_precision(precision) == "fp32":
        return list(models)
    return [quantize_for_timing(m) for m in models]


def _bar(progress: bool, total: int, desc: str, unit: str = "it"):
    if not progress:
        return contextlib.nullcontext(None)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False)


def profile_ops(
    keys: Sequence[OpKey],
    device: DeviceProfile,
    settings: ProfileSettings,
    progress: bool = False,
    seed: int = 0,
    precision: str = "fp32",
) -> tuple[dict[OpKey, Timing], Timing]:
    """Every key's own latency, and the fixed cost of one onnxruntime call (the null graph).

    A key's minimal graph is timed against its baseline (its :class:`~nasprune.latency.graphs.Producer`
    alone, or the null graph) in the same interleaved rounds; its entry is the difference, so the
    cost of the call, of the producer and of reading the graph input cancel out. At ``int8`` every
    graph but the null one is quantized (the null graph is the fixed cost of a call, whatever runs).
    """
    check_runs_here(device)
    consumers = sorted({c for k in keys for c in consumers_of(k)})
    producers = sorted(
        {p for k in keys if (p := producer_of(k)) is not None} | {consumer_baseline(c) for c in consumers}
    )
    models = [op_model(k) for k in keys] + [producer_model(p) for p in producers]
    models += [consumer_model(c) for c in consumers]
    models = [*at_precision(models, precision), null_model()]
    timings = _time_all(
        models, device, settings, settings.op_rounds, settings.op_burst, seed, progress, f"timing {len(keys)} ops",
        flush_bytes=settings.flush_kb * 1024,
    )  # fmt: skip
    null = timings[-1]
    n_k, n_p = len(keys), len(producers)
    base = dict(zip(producers, timings[n_k : n_k + n_p], strict=True))
    # a consumer's own time: producer + consumer, minus the producer alone
    cons = {c: t.median_ms - base[consumer_baseline(c)].median_ms
            for c, t in zip(consumers, timings[n_k + n_p : -1], strict=True)}  # fmt: skip
    entries = {}
    for key, t in zip(keys, timings, strict=False):
        p = producer_of(key)
        b = (base[p] if p is not None else null).median_ms + sum(cons[c] for c in consumers_of(key))
        entries[key] = Timing(t.median_ms - b, t.p90_ms - b, t.count)
    return entries, null


def deployable_supernet(space):
    """An untrained supernet whose BatchNorms hold non-trivial statistics.

    Latency does not depend on weight values, but the exporter drops all-zero biases, which a
    freshly initialised BatchNorm would fold into; a trained network always has them.
    """
    net = create_supernet(space)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if getattr(m, "running_mean", None) is not None and getattr(m, "bias", None) is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
    return net.eval()


def export_all(supernet, cfgs: Sequence[SubnetConfig], folder: Path, progress: bool = False) -> list[Path]:
    """Export each config through the checked deployment path (``nasprune.export.export_subnet``).

    A file already in ``folder`` for the same space definition and subnet is reused.
    """
    paths = []
    with _bar(progress, len(cfgs), "exporting subnets", unit="subnet") as bar:
        for cfg in cfgs:
            path = folder / f"{supernet.space.digest()}-{cfg.key()}.onnx"
            if not path.exists():
                export_subnet(supernet, cfg, path)
            paths.append(path)
            if bar is not None:
                bar.update()
    return paths


def measure_models(
    paths: Sequence[Path],
    device: DeviceProfile,
    settings: ProfileSettings,
    progress: bool = False,
    seed: int = 1,
    precision: str = "fp32",
) -> list[Timing]:
    """End-to-end latency of exported models (quantized first at ``int8``), timed interleaved in
    sessions made as for deployment."""
    check_runs_here(device)
    return _time_all(
        at_precision(paths, precision),
        device,
        settings,
        settings.e2e_rounds,
        settings.e2e_burst,
        seed,
        progress,
        f"timing {len(paths)} subnets",
    )


def _time_all(
    models: Sequence,
    device: DeviceProfile,
    settings: ProfileSettings,
    rounds: int,
    burst: int,
    seed: int,
    progress: bool,
    desc: str,
    flush_bytes: int = 0,
) -> list[Timing]:
    """Sessions made as for deployment on ``device``, timed interleaved (see ``interleave_calls``), each one's
    calls summed up by ``settings.statistic``."""
    sessions = [make_session(m, device.threads, device.provider) for m in models]
    feeds = [feed_for(s, device.batch_size) for s in sessions]
    with _bar(progress, rounds, f"{desc}, round", unit="round") as bar:  # the total counts rounds, not models
        calls = interleave_calls(
            sessions,
            feeds,
            rounds=rounds,
            burst=burst,
            settle=settings.settle,
            warmup=settings.warmup,
            seed=seed,
            on_round=bar.update if bar is not None else None,
            flush_bytes=flush_bytes,
        )
    if settings.statistic == "median of all calls":
        return [Timing.of(c.ravel()) for c in calls]
    return [Timing.of_rounds(c) for c in calls]


@contextlib.contextmanager
def workdir(folder: str | Path | None) -> Iterator[Path]:
    """``folder`` (created) or a temporary folder removed afterwards."""
    if folder is not None:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        yield path
    else:
        with tempfile.TemporaryDirectory(prefix="nasprune-lut-") as tmp:
            yield Path(tmp)


def check_runs_here(device: DeviceProfile) -> None:
    """Refuse to measure for a device profile that is not this machine (under its own settings)."""
    here = DeviceProfile.this_machine(device.name, device.threads, device.batch_size, device.provider)
    if here.fingerprint() != device.fingerprint():
        raise LatencyTableError(
            f"device '{device.name}' is not this machine ({'; '.join(device.differences(here))}); "
            f"build and validate its table on that device ('nasprune lut build --device {device.name}' run there) "
            "and copy the file back"
        )


def sample_configs(space, n: int, rng: np.random.Generator, exclude: set[str] = frozenset()) -> list[SubnetConfig]:
    """``n`` distinct random configs whose keys are not in ``exclude`` (fewer if the space is smaller)."""
    out: dict[str, SubnetConfig] = {}
    for _ in range(50 * n + 100):
        if len(out) >= n:
            break
        cfg = space.sample(rng)
        if cfg.key() not in exclude:
            out.setdefault(cfg.key(), cfg)
    return list(out.values())


def fit_configs(space, n: int, rng: np.random.Generator) -> list[SubnetConfig]:
    """Configs for the correction fit: the extremes of the space, then uniformly random ones (like the
    held-out subnets; fit subnets spread over the space's size instead predicted resnet18's held-out
    ones no better: 7.1% vs 6.2% median APE, docs/results.md)."""
    if n <= 0:
        return []
    fixed = {c.key(): c for c in (space.smallest(), space.largest())}
    picked = list(fixed.values())[:n]
    return picked + sample_configs(space, n - len(picked), rng, exclude=set(fixed))


def build_table(
    space,
    device: DeviceProfile | None = None,
    *,
    n_fit: int = 20,
    n_validate: int = 20,
    settings: ProfileSettings | None = None,
    seed: int = 0,
    progress: bool = False,
    folder: str | Path | None = None,
    precision: str = "fp32",
):
    """Measure a latency table for ``space`` on this machine under ``device`` (default ``local-cpu``).

    ``precision`` ``int8``: every op graph and subnet is quantized before it is timed (the table
    predicts the latency of the int8 deployment of a subnet).

    ``n_fit`` subnets fit the correction (0: no fit, raw op sums), ``n_validate`` held-out subnets
    measure its error (0: unvalidated). Exported models go to ``folder`` (default: a temporary one).
    """
    device = device or DeviceProfile.local()
    settings = settings or ProfileSettings()
    check_runs_here(device)
    t0, probe = time.perf_counter(), LoadProbe()
    keys = all_ops(space)
    entries, overhead = profile_ops(keys, device, settings, progress=progress, seed=seed, precision=precision)
    table = LatencyTable.from_measurements(space, device, entries, overhead, settings, precision=precision)
    fit = fit_configs(space, n_fit, np.random.default_rng(seed))
    held = sample_configs(space, n_validate, np.random.default_rng(seed + 1), exclude={c.key() for c in fit})
    if fit or held:
        with workdir(folder) as tmp:
            paths = export_all(deployable_supernet(space), [*fit, *held], tmp, progress)
            # one interleaved session for both sets: drift between them cannot pose as prediction error
            timings = measure_models(paths, device, settings, progress, seed=seed + 2, precision=precision)
        if fit:
            table = table.refit([Sample.of(space, c, t) for c, t in zip(fit, timings, strict=False)])
        if held:
            table = table.with_error(compare(table, held, timings[len(fit) :]))
    return table.with_build_seconds(time.perf_counter() - t0, probe.read())


def extend_table(table, space=None, settings: ProfileSettings | None = None, progress: bool = False):
    """``table`` with entries for the ops of ``space`` (default: its own) that it lacks, measured here.

    For a space that gained width or depth choices: only the new ops are timed (entries are
    differences against a baseline timed alongside, so they line up with the old ones). The
    correction is kept; the error report is cleared (validate again).
    """
    space = space or table.space
    check_runs_here(table.device)
    missing = table.missing(space)
    if not missing:
        return table if space.digest() == table.space_digest else table.with_entries({}, space)
    entries, _ = profile_ops(
        missing, table.device, settings or table.settings, progress=progress, precision=table.precision
    )
    return table.with_entries(entries, space)


def measure_subnet(
    supernet,
    cfg: SubnetConfig | dict,
    device: DeviceProfile | None = None,
    runs: int = 500,
    warmup: int = 50,
    precision: str = "fp32",
) -> Timing:
    """Export ``cfg`` through the checked deployment path (quantized at ``int8``) and time it on this
    machine under ``device``.

    ``device`` (default ``local-cpu``) must describe this machine; its threads, batch size and
    execution provider are used.
    """
    device = device or DeviceProfile.local()
    check_runs_here(device)
    with tempfile.TemporaryDirectory(prefix="nasprune-measure-") as tmp:
        res = export_subnet(supernet, cfg, Path(tmp) / "subnet.onnx")
        sess = make_session(at_precision([res.path], precision)[0], device.threads, device.provider)
        return time_session(sess, feed_for(sess, device.batch_size), runs=runs, warmup=warmup)
