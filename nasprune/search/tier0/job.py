"""Tier 0 inside a search job: the job's first result, before any supernet is trained.

:func:`source_of` says what a job's tier 0 prunes (the space's trained weights, else, for ``tier0:
only``, its trained supernet) or why it cannot; :func:`run` prunes to the job's budget with
:func:`~nasprune.search.tier0.deliver.deliver` (measured, stepped down while the measurement misses),
writes ``models/<id>.onnx`` and ``tier0.json`` in the job's folder, and returns the model as a
:class:`~nasprune.search.job.Candidate` with ``tier=0``. A resumed job reads ``tier0.json`` back
instead of pruning again. :func:`best_of_tiers` picks what the job delivers.
"""

from __future__ import annotations

import hashlib

from nasprune.paths import JobFiles
from nasprune.registry import create_supernet
from nasprune.search.job import Candidate, SearchJob
from nasprune.search.tier0 import Tier0
from nasprune.search.tier0.deliver import deliver
from nasprune.train import load_checkpoint, supernet_path


def candidate_id(subnet_key: str) -> str:
    """16 hex digits, derived from the subnet key so that it never names the search's own export of the
    same architecture (whose weights differ)."""
    return hashlib.sha256(f"tier0:{subnet_key}".encode()).hexdigest()[:16]


def source_of(job: SearchJob, space, data_dir) -> tuple[str | None, str | None]:
    """``(source, reason)``: ``"weights"`` or ``"supernet"`` (what tier 0 prunes), or None and why not."""
    if job.tier0 == "off":
        return None, "tier0 is 'off'"
    if space.weights is not None:
        return "weights", None
    if job.tier0 == "only":
        if supernet_path(space, data_dir, job.train_epochs).is_file():
            return "supernet", None
        return None, (
            f"tier0 'only' prunes trained weights, and space '{space.name}' names none and has no trained supernet "
            "yet: upload the model with its weights (POST /v1/models), use a space with 'weights', or run a search "
            "(tier0 'auto') once"
        )
    return None, f"space '{space.name}' names no trained weights (tier 0 runs first on a model with weights)"


def run(job: SearchJob, space, table, dataset, files: JobFiles, data_dir, verify=None, on_progress=lambda _m: None):
    """The job's tier-0 model (a :class:`Candidate`, ``tier=0``), pruned now or read back from ``files.tier0``."""
    record = files.tier0
    if record.is_file():
        cand = Candidate.model_validate_json(record.read_text())
        if files.candidate(cand.candidate_id).is_file():
            return cand
    source, why = source_of(job, space, data_dir)
    if source is None:
        raise ValueError(why)

    if source == "weights":
        model = create_supernet(space)
    else:
        model = load_checkpoint(supernet_path(space, data_dir, job.train_epochs), space)
    # a trained supernet keeps its channel order (its subnets were trained on it); a user's model is sorted
    pruner = Tier0(model, space, table, dataset, reorder=source == "weights")
    pending = files.candidate("tier0-pending")  # renamed to its id once the subnet is known
    pending.parent.mkdir(parents=True, exist_ok=True)
    got = deliver(pruner, job.latency_budget_ms, pending, verify=verify,
                  references_dir=files.latency_references, on_progress=on_progress)  # fmt: skip
    r = got.result
    cfg = r.config
    cid = candidate_id(cfg.key())
    path = files.candidate(cid)
    got.path.replace(path)
    cand = Candidate(
        candidate_id=cid,
        trial_number=-1,
        tier=0,
        config=cfg.model_dump(),
        accuracy=got.val_accuracy,
        latency_ms=r.predicted_ms,
        params=int(pruner.supernet.num_params(cfg)),
        macs=int(pruner.supernet.macs(cfg)),
        feasible=r.predicted_ms <= job.latency_budget_ms,
        verified=got.verified,
        measured_latency_ms=got.measured_ms,
        test_accuracy=got.test_accuracy,
        unverified_reason=got.unverified_reason,
    )
    record.write_text(cand.model_dump_json(indent=2))
    return cand


def best_of_tiers(searched: Candidate | None, tier0: Candidate | None, job: SearchJob) -> Candidate | None:
    """What the job delivers: the more accurate on validation of the search's recommendation and the tier-0
    model, among those verified within the budget (or, on a device that is not this machine, recommended
    unverified); the search's on a tie. A tier-0 model measured over the budget is never delivered."""
    if tier0 is None:
        return searched
    usable = tier0.verified or (tier0.measured_latency_ms is None and tier0.latency_ms <= job.latency_budget_ms)
    if not usable:
        return searched
    if searched is None or tier0.accuracy > searched.accuracy:
        return tier0
    return searched
