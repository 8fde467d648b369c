"""``JobTracker``: a search job's runs, queued so that an MLflow outage never stops the job."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from nasprune.paths import JobFiles
from nasprune.tracking.client import (
    DESCRIPTION_BUDGET,
    NOTE_TAG,
    PARENT_TAG,
    RECOMMENDED_ALIAS,
    MlflowTracker,
    _flat_params,
    describe_failure,
    get_or_create_experiment,
    public_uri,
    registered_model_name,
    server_problem,
    terminate,
)
from nasprune.tracking.model import log_onnx_model

log = logging.getLogger(__name__)


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S UTC")


@dataclass
class _Op:
    label: str
    fn: Callable[[], None]
    trial: int | None = None
    queued_at: float = field(default_factory=time.time)


class JobTracker:
    """MLflow records of one search job: a parent run, a child run per trial, artifacts at the end.

    Every record goes through one queue, in order, on a background thread, so the search never
    waits on the tracking server. A call that fails while the server is down is retried, from
    ``min_backoff_s`` doubling up to ``max_backoff_s``, until the server is back: the records behind
    it are then logged late. A call that fails while the server answers is dropped and reported.
    ``close()`` waits up to ``drain_timeout_s`` for the queue; what is still queued then is given up
    and stated in ``error``. On a resumed job the parent run is reused, child runs an interruption
    left RUNNING are closed as KILLED, and finished trials without a finished child run get one.
    """

    def __init__(
        self,
        tracker: MlflowTracker,
        experiment: str,
        *,
        marker: Path | None = None,
        min_backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        drain_timeout_s: float = 60.0,
    ):
        self.tracker = tracker
        self.experiment = experiment
        self.marker = marker
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.drain_timeout_s = drain_timeout_s
        self.parent: str | None = None
        self.children: dict[int, str] = {}
        self._exp_id: str | None = None
        self._best: float | None = None  # best feasible validation accuracy among the trials logged so far
        self._trial_values: dict[int, tuple[float, float]] = {}  # (val accuracy, predicted ms) per trial
        self.registered: tuple[str, str] | None = None  # (model name, version) of the delivered model
        self.tier0_run: str | None = None  # the tier-0 model's child run, once queued
        self.killed_children: list[str] = []
        self.down_since: float | None = None
        self.problem: str | None = None
        self.outages: list[tuple[float, float]] = []
        self.late_trials = 0
        self.dropped: list[str] = []
        self.unlogged: list[str] = []
        self._ops: deque[_Op] = deque()
        self._busy = False
        self._cv = threading.Condition()
        self._abandon = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._drain, name="mlflow-trials", daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return public_uri(self.tracker.tracking_uri)

    @property
    def error(self) -> str | None:
        """What is wrong with this job's tracking now, or what went wrong; None when all is logged."""
        parts = []
        if self.unlogged:
            since = f" since {_utc(self.down_since)}" if self.down_since else ""
            trials = [label for label in self.unlogged if label.startswith("trial ")]
            parts.append(
                f"MLflow tracking at {self.uri} was unreachable{since} ({self.problem}) when the job ended; "
                f"not logged: {len(trials)} trial(s) and {len(self.unlogged) - len(trials)} other record(s) "
                "(the trials are in the job's trial storage, the results in its output folder)"
            )
        elif self.down_since is not None:
            parts.append(
                f"MLflow tracking at {self.uri} is unreachable since {_utc(self.down_since)}: {self.problem}; "
                f"{self.pending()} record(s) wait and are logged when it is back"
            )
        for start, end in self.outages:
            parts.append(
                f"MLflow tracking at {self.uri} was unreachable for {end - start:.0f} s "
                f"({_utc(start)} to {_utc(end)}); "
                f"{self.late_trials} trial(s) were logged late"
            )
        if self.dropped:
            parts.append(f"MLflow refused {len(self.dropped)} record(s): {'; '.join(self.dropped[:3])}")
        if self.tracker.error:
            parts.append(self.tracker.error)
        return "; ".join(parts) or None

    @property
    def closed(self) -> bool:
        return self._closed

    def pending(self) -> int:
        with self._cv:
            return len(self._ops) + self._busy

    # -- the queue ------------------------------------------------------------------------------
    def _submit(self, label: str, fn: Callable[[], None], trial: int | None = None) -> None:
        with self._cv:
            self._ops.append(_Op(label, fn, trial))
            self._cv.notify_all()

    def _drain(self) -> None:
        while True:
            with self._cv:
                while not self._ops and not self._closed:
                    self._cv.wait()
                if not self._ops:
                    return
                op = self._ops.popleft()
                self._busy = True
            try:
                self._run(op)
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _run(self, op: _Op) -> None:
        backoff = self.min_backoff_s
        while True:
            if self._abandon.is_set():
                self.unlogged.append(op.label)
                return
            try:
                op.fn()
            except Exception as e:
                problem = server_problem(self.tracker.tracking_uri)
                if problem is None:  # the server answers: this record itself was refused
                    self.dropped.append(f"{op.label}: {describe_failure(e, self.tracker.tracking_uri)}")
                    log.warning("MLflow refused %s: %s", op.label, e)
                    return
                if self.down_since is None:
                    self.down_since = time.time()
                    log.warning("%s; %s and later records wait", problem, op.label)
                self.problem = problem
                self._abandon.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            if self.down_since is not None:
                with self._cv:
                    waiting = [o for o in self._ops if o.trial is not None and o.queued_at >= self.down_since]
                self.late_trials += len(waiting) + (op.trial is not None)
                self.outages.append((self.down_since, time.time()))
                log.warning("MLflow tracking at %s is back; logging what waited", self.uri)
                self.down_since = None
                self.problem = None
            return

    def flush(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued record is logged (or given up); False if ``timeout_s`` passed first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cv:
            while self._ops or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(left)
        return True

    # -- records --------------------------------------------------------------------------------
    def start(
        self,
        job_id: str,
        run_name: str,
        params: dict,
        existing_run_id: str | None = None,
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Queue the parent run: reused when ``existing_run_id`` still exists, else created."""
        self._submit(
            "the job's parent run", lambda: self._start_now(job_id, run_name, params, existing_run_id, metrics)
        )

    def _start_now(self, job_id, run_name, params, existing_run_id, metrics) -> None:
        from mlflow.entities import Metric, Param
        from mlflow.exceptions import MlflowException

        client = self.tracker.client
        exp_id = self._experiment_id()
        if existing_run_id:
            try:
                previous = client.get_run(existing_run_id)
                self.parent = existing_run_id
                self._best = previous.data.metrics.get("best_feasible_val_accuracy")
            except MlflowException as e:
                if server_problem(self.tracker.tracking_uri) is not None:
                    raise
                log.warning("the job's MLflow run %s is gone (%s); starting a new one", existing_run_id, e)
        if self.parent is not None:
            client.update_run(self.parent, "RUNNING")
            self._adopt_children(exp_id)
        else:
            tags = {"mlflow.runName": run_name, "nasprune.kind": "search-job", "nasprune.job_id": job_id}
            self.parent = client.create_run(exp_id, tags=tags, run_name=run_name).info.run_id
            flat = _flat_params("", params)
            if flat:
                client.log_batch(self.parent, params=[Param(k, v) for k, v in flat.items()])
        if self.marker is not None:
            self.marker.write_text(self.parent)
        if metrics:
            now = int(time.time() * 1000)
            batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None]
            client.log_batch(self.parent, metrics=batch)

    def _experiment_id(self) -> str:
        if self._exp_id is None:
            self._exp_id = get_or_create_experiment(self.tracker.client, self.experiment)
        return self._exp_id

    def _adopt_children(self, exp_id: str) -> None:
        """Finished child runs count as logged; runs an interruption left RUNNING are closed as KILLED."""
        runs = self.tracker.client.search_runs(
            [exp_id], f"tags.mlflow.parentRunId = '{self.parent}'", max_results=50000
        )
        for r in runs:
            if "nasprune.trial" not in r.data.tags:
                continue
            if r.info.status == "RUNNING":
                terminate(self.tracker.client, r.info.run_id, "KILLED")
                self.killed_children.append(r.info.run_id)
            elif r.info.status == "FINISHED":
                self.children[int(r.data.tags["nasprune.trial"])] = r.info.run_id

    def log_trial(self, rec) -> None:
        """Queue a child run for a finished trial (``TrialRecord``) and the parent's best-so-far point."""
        if rec.number in self.children:
            return
        self.children[rec.number] = ""  # reserved; filled in when logged
        self._trial_values[rec.number] = (rec.accuracy, rec.latency_ms)
        self._submit(f"trial {rec.number}", lambda: self._log_trial_now(rec), trial=rec.number)

    def _log_trial_now(self, rec) -> None:
        from mlflow.entities import Metric, Param

        if self.parent is None:
            return
        # on the queue's thread, in order: a resumed job's best so far was read back by _start_now
        if rec.feasible and (self._best is None or rec.accuracy > self._best):
            self._best = rec.accuracy
        best = self._best
        client = self.tracker.client
        run_id = self.children.get(rec.number)
        if not run_id:  # on a retry the run may exist already
            params = {f"depth.{k}": v for k, v in rec.config["depths"].items()}
            params.update({f"width.{k}": v for k, v in rec.config["widths"].items()})
            if getattr(rec, "precision", None) is not None:
                params["precision"] = rec.precision
            tags = {
                "mlflow.runName": f"trial-{rec.number}",
                PARENT_TAG: self.parent,
                "nasprune.trial": str(rec.number),
                "nasprune.subnet_key": rec.subnet_key,
                "feasible": str(rec.feasible).lower(),
                "pareto": "false",
                "verified": "false",
            }
            run_id = client.create_run(self._experiment_id(), tags=tags, run_name=f"trial-{rec.number}").info.run_id
            self.children[rec.number] = run_id
            client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items() if v is not None])
        now = int(time.time() * 1000)
        metrics = {
            "val_accuracy": rec.accuracy,
            "predicted_latency_ms": rec.latency_ms,
            "params": rec.params,
            "macs": rec.macs,
            "trial_seconds": rec.duration_s,
        }
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None])
        terminate(client, run_id, "FINISHED")
        # The search converging, one point per trial: MLflow charts it against the step (trial number).
        progress = {"best_feasible_val_accuracy": best, "trial_val_accuracy": rec.accuracy}
        client.log_batch(
            self.parent,
            metrics=[Metric(k, float(v), now, rec.number) for k, v in progress.items() if v is not None],
        )

    def log_tier0(self, cand, path: Path) -> None:
        """Queue the tier-0 model's run (a child run ``tier-0``, tag ``nasprune.tier`` 0): its figures, its
        config as params and the ONNX file as an artifact, as soon as it exists (the job's first result)."""
        self.tier0_run = ""
        self._submit("the tier-0 model", lambda: self._log_tier0_now(cand, Path(path)))

    def _log_tier0_now(self, cand, path: Path) -> None:
        from mlflow.entities import Param

        if self.parent is None:
            return
        client = self.tracker.client
        if not self.tier0_run:
            tags = {"mlflow.runName": "tier-0", PARENT_TAG: self.parent, "nasprune.tier": "0",
                    "nasprune.subnet_key": cand.candidate_id, "verified": str(cand.verified).lower()}  # fmt: skip
            self.tier0_run = client.create_run(self._experiment_id(), tags=tags, run_name="tier-0").info.run_id
            params = {f"depth.{k}": v for k, v in cand.config["depths"].items()}
            params.update({f"width.{k}": v for k, v in cand.config["widths"].items()})
            client.log_batch(self.tier0_run, params=[Param(k, str(v)) for k, v in params.items()])
        metrics, tags = candidate_figures(cand, (cand.accuracy, cand.latency_ms))
        metrics.update({"val_accuracy": cand.accuracy, "predicted_latency_ms": cand.latency_ms,
                        "params": cand.params, "macs": cand.macs})  # fmt: skip
        _log(client, self.tier0_run, metrics, tags)
        if path.is_file():
            client.log_artifact(self.tier0_run, str(path), "model")
        terminate(client, self.tier0_run, "FINISHED")

    def finish(
        self,
        result,
        files: JobFiles,
        *,
        input_example=None,
        extra_tags: dict[str, str] | None = None,
        trials: list | None = None,
    ) -> None:
        """Queue what a finished job adds (``SearchResult``, the files it wrote), then close.

        Front trials get their candidate's figures (measured latency, test accuracy, ...) on their own
        child runs, the recommended one a tag and a name that says so; the parent gets the summary,
        the front as a markdown table in its description, the plot, and the delivered ONNX model as an
        MLflow logged model (signature and ``input_example``, preprocessing in its metadata),
        registered under :func:`registered_model_name` with the alias ``recommended``.
        """
        rec = result.recommended
        for cand in result.pareto:
            self._submit(f"figures of trial {cand.trial_number}", lambda c=cand: self._log_candidate_now(c, rec))
        job = result.job
        summary = {
            "n_trials": result.n_trials,
            "pareto_size": len(result.pareto),
            "n_feasible_trials": sum(t.feasible for t in trials) if trials is not None else None,
        }
        tags = dict(extra_tags or {})
        if rec is not None:
            summary.update(
                {
                    "recommended_val_accuracy": rec.accuracy,
                    "recommended_test_accuracy": rec.test_accuracy,
                    "recommended_predicted_latency_ms": rec.latency_ms,
                    "recommended_measured_latency_ms": rec.measured_latency_ms,
                    "budget_use": result.budget_use,
                    **{f"table_in_use_{k}": v for k, v in (result.table_error_in_use or {}).items()},
                    "recommended_finetune_steps": rec.finetune_steps,
                    "recommended_tier": rec.tier,
                }
            )
            tags.update({"nasprune.recommended": rec.candidate_id, "nasprune.recommended_trial": str(rec.trial_number)})
        if result.table_drift:
            tags["nasprune.table_drift"] = result.table_drift
        if result.tier0 is not None:
            t0 = result.tier0
            summary.update({"tier0_val_accuracy": t0.accuracy, "tier0_test_accuracy": t0.test_accuracy,
                            "tier0_measured_latency_ms": t0.measured_latency_ms})  # fmt: skip
        self.on_parent("the job's summary", lambda c, p: _log(c, p, summary, tags))
        for path in (files.pareto_json, files.pareto_png):
            if path.is_file():
                self.on_parent(path.name, lambda c, p, path=path: c.log_artifact(p, str(path)))
        model = files.model
        if rec is not None and model.is_file():
            self.on_parent(
                "the delivered model",
                lambda c, p: self._log_model_now(c, p, model, job.space, input_example),
            )
        self.on_parent("the job's description", lambda c, p: c.set_tag(p, NOTE_TAG, self._describe(result)))
        self.close()

    def _log_candidate_now(self, cand, recommended) -> None:
        from mlflow.entities import Metric, RunTag

        run_id = self.children.get(cand.trial_number)
        if not run_id:
            return
        metrics, tags = candidate_figures(cand, self._trial_values.get(cand.trial_number))
        tags.update({"pareto": "true", "verified": str(cand.verified).lower()})
        is_rec = recommended is not None and cand.candidate_id == recommended.candidate_id
        if is_rec:
            tags["nasprune.recommended"] = "true"
        now = int(time.time() * 1000)
        self.tracker.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()],
        )
        if is_rec:
            self.tracker.client.update_run(run_id, name=f"trial-{cand.trial_number} (recommended)")

    def _log_model_now(self, client, parent: str, path: Path, space: str, input_example) -> None:
        self.registered = log_onnx_model(
            client, self._experiment_id(), parent, path, registered_model_name(space), input_example
        )

    def _describe(self, result) -> str:
        """The parent run's description: the job in a sentence, the recommendation, the front as a table."""
        job, rec = result.job, result.recommended
        exp = self._exp_id
        lines = [
            f"**{job.space}** on **{job.device}**, latency budget **{job.latency_budget_ms:.4g} ms**: "
            f"{result.n_trials} trials ({job.sampler}, {job.backend}).",
            "",
        ]
        if rec is None:
            lines.append("No recommendation: no candidate of the front was within the budget.")
        else:
            run = self.tier0_run if rec.tier == 0 else self.children.get(rec.trial_number)
            what = "the tier-0 model (pruned without training)" if rec.tier == 0 else f"trial {rec.trial_number}"
            where = f"[{what}](#/experiments/{exp}/runs/{run})" if run and exp else what
            lat = (
                f"measured {rec.measured_latency_ms:.4g} ms (predicted {rec.latency_ms:.4g} ms)"
                if rec.measured_latency_ms is not None
                else f"predicted {rec.latency_ms:.4g} ms (not measured: {rec.unverified_reason or 'not verified'})"
            )
            test = f", test accuracy {rec.test_accuracy:.2%}" if rec.test_accuracy is not None else ""
            lines.append(
                f"**Recommended: {where}**: validation accuracy {rec.accuracy:.2%}{test}, {lat} "
                f"({result.budget_use:.0%} of the budget), {rec.params:,} params."
            )
            if self.registered:
                name, version = self.registered
                lines.append(f"Registered as model `{name}` version {version} (alias `{RECOMMENDED_ALIAS}`).")
        t0 = result.tier0
        if t0 is not None and (rec is None or rec.tier != 0):
            lat = f"measured {t0.measured_latency_ms:.4g} ms" if t0.measured_latency_ms is not None else "not measured"
            lines.append(
                f"Tier 0 (pruned without training, the job's first result): validation accuracy {t0.accuracy:.2%}, "
                f"{lat}{'' if t0.verified else ' (' + (t0.unverified_reason or 'not verified') + ')'}."
            )
        lines += [
            "",
            "**Pareto front** (feasible, non-dominated trials; plot: `pareto.png` in the artifacts):",
            "",
            "| trial | val acc. | test acc. | predicted ms | measured ms | params | MACs | verified | |",
            "|---:|---:|---:|---:|---:|---:|---:|:---:|:---|",
        ]

        def pct(v):
            return "" if v is None else f"{v:.2%}"

        def ms(v):
            return "" if v is None else f"{v:.4g}"

        front = sorted(result.pareto, key=lambda c: c.latency_ms)
        for i, c in enumerate(front):
            if sum(len(line) + 1 for line in lines) > DESCRIPTION_BUDGET:  # a tag holds 8,000 characters
                lines.append(f"| ... {len(front) - i} more in `pareto.json` | | | | | | | | |")
                break
            run = self.children.get(c.trial_number)
            trial = f"[{c.trial_number}](#/experiments/{exp}/runs/{run})" if run and exp else str(c.trial_number)
            mark = "**recommended**" if rec is not None and c.candidate_id == rec.candidate_id else ""
            lines.append(
                f"| {trial} | {pct(c.accuracy)} | {pct(c.test_accuracy)} | {ms(c.latency_ms)} | "
                f"{ms(c.measured_latency_ms)} | {c.params:,} | {c.macs:,} | {'yes' if c.verified else 'no'} | {mark} |"
            )
        if rec is not None and rec.delivered == "fine-tuned":
            lines += [
                "",
                "The recommended subnet was fine-tuned after the search: its row shows the delivered weights' "
                "accuracy (`delivered_val_accuracy` on its run; `val_accuracy` there is what the search saw).",
            ]
        return "\n".join(lines)

    def on_parent(self, label: str, fn: Callable[[object, str], None]) -> None:
        """Queue ``fn(client, parent_run_id)`` (skipped when there is no parent run)."""

        def call():
            if self.parent is not None:
                fn(self.tracker.client, self.parent)

        self._submit(label, call)

    def close(self, status: str = "FINISHED") -> None:
        """End the parent run with ``status`` and wait (up to ``drain_timeout_s``) for the queue."""
        self.on_parent(f"the parent run's status ({status})", lambda c, p: terminate(c, p, status))
        if not self.flush(self.drain_timeout_s):
            self._abandon.set()
            self.flush()
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=30)


def _log(client, run_id: str, metrics: dict, tags: dict) -> None:
    """One batch of ``metrics`` (unset ones left out) and ``tags`` on ``run_id``."""
    from mlflow.entities import Metric, RunTag

    now = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items() if v is not None],
        tags=[RunTag(k, str(v)) for k, v in tags.items()],
    )


# How a candidate's fields are named on its trial's run: what each number is, said in its name.
_CANDIDATE_METRIC_NAMES = {
    "inherited_accuracy": "inherited_val_accuracy",
    "finetuned_accuracy": "finetuned_val_accuracy",
    "accuracy_se": "val_accuracy_se",
}
_CANDIDATE_SKIP = {"candidate_id", "trial_number", "config", "params", "macs", "feasible", "verified", "tier"}


def candidate_figures(cand, trial: tuple[float, float] | None) -> tuple[dict[str, float], dict[str, str]]:
    """``(metrics, tags)`` for a Pareto candidate's trial run; unset fields are left out.

    Numbers become metrics (``measured_latency_ms``, ``test_accuracy``, ...), words and flags tags
    (``nasprune.delivered``, ``nasprune.precision``, ...). The candidate's validation accuracy and
    predicted latency are the trial's own unless fine-tuning or another precision changed them: then
    they are logged as ``delivered_val_accuracy`` / ``delivered_predicted_latency_ms``.
    """
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for key, value in cand.model_dump().items():
        if value is None or key in _CANDIDATE_SKIP:
            continue
        if key in ("accuracy", "latency_ms"):
            own = None if trial is None else trial[0 if key == "accuracy" else 1]
            # a trial logged before a resume (own unknown): only fine-tuning is known to change it
            fine_tuned = key == "accuracy" and cand.delivered == "fine-tuned"
            if fine_tuned if own is None else abs(own - value) > 1e-12:
                metrics["delivered_val_accuracy" if key == "accuracy" else "delivered_predicted_latency_ms"] = value
        elif isinstance(value, bool):
            tags[f"nasprune.{key}"] = str(value).lower()
        elif isinstance(value, int | float):
            metrics[_CANDIDATE_METRIC_NAMES.get(key, key)] = value
        elif isinstance(value, str):
            tags[f"nasprune.{key}"] = value
        elif key == "accuracy_ci95" and len(value) == 2:
            metrics["val_accuracy_ci95_low"], metrics["val_accuracy_ci95_high"] = value
        else:
            tags[f"nasprune.{key}"] = json.dumps(value)
    return metrics, tags
