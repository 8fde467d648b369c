"""MLflow tracking through ``MlflowClient(tracking_uri)``: no process-global mlflow state.

Tracking never breaks the work it records: the first failure (server down, timeout) is kept in
``tracker.error`` and later calls are skipped, so a training run or a search completes and can
report that tracking failed.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Fail fast when the server is down instead of MLflow's default minutes of retries. These are
# process-wide (MLflow reads its HTTP retry and timeout settings from the environment on every
# request; neither MlflowClient nor its store takes them), so they are defaults only, set once at
# import: a value the user or the application set wins, and no thread ever changes them later.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

PARENT_TAG = "mlflow.parentRunId"


def _flat_params(prefix: str, d: dict) -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_params(f"{key}.", v))
        else:
            out[key] = str(v)[:6000]
    return out


class MlflowTracker:
    """Logs runs to one MLflow tracking server (or store URI)."""

    def __init__(self, tracking_uri: str):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.error: str | None = None

    # -- plumbing --------------------------------------------------------------------------------
    def _safe(self, fn, *args, **kwargs):
        if self.error is not None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # any failure of the tracking server must not stop the work
            self.error = f"MLflow tracking at {self.tracking_uri} failed: {type(e).__name__}: {str(e)[:300]}"
            log.warning("%s; continuing without tracking", self.error)
            return None

    def experiment_id(self, name: str) -> str | None:
        def get_or_create():
            exp = self.client.get_experiment_by_name(name)
            return exp.experiment_id if exp else self.client.create_experiment(name)

        return self._safe(get_or_create)

    def start_run(
        self,
        experiment: str,
        run_name: str,
        params: dict | None = None,
        tags: dict | None = None,
        parent_run_id: str | None = None,
    ) -> str | None:
        exp_id = self.experiment_id(experiment)
        if exp_id is None:
            return None
        all_tags = {"mlflow.runName": run_name, **{k: str(v) for k, v in (tags or {}).items()}}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id

        def create():
            from mlflow.entities import Param

            run = self.client.create_run(exp_id, tags=all_tags, run_name=run_name)
            flat = _flat_params("", params or {})
            if flat:
                self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in flat.items()])
            return run.info.run_id

        return self._safe(create)

    def log_metrics(self, run_id: str | None, metrics: dict[str, float], step: int = 0) -> None:
        if run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        self._safe(self.client.log_batch, run_id, metrics=batch)

    def set_tags(self, run_id: str | None, tags: dict[str, object]) -> None:
        if run_id is None:
            return
        from mlflow.entities import RunTag

        self._safe(self.client.log_batch, run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str | None, path: str | Path, artifact_path: str | None = None) -> None:
        if run_id is not None:
            self._safe(self.client.log_artifact, run_id, str(path), artifact_path)

    def log_json(self, run_id: str | None, data: object, name: str) -> None:
        if run_id is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / name
            p.write_text(json.dumps(data, indent=2, default=str))
            self.log_artifact(run_id, p)

    def end_run(self, run_id: str | None, status: str = "FINISHED") -> None:
        if run_id is not None:
            self._safe(self.client.set_terminated, run_id, status)

    def run_url(self, run_id: str | None) -> str | None:
        """The UI link of a run, when tracking goes to an HTTP server."""
        if run_id is None or not self.tracking_uri.startswith("http"):
            return None
        run = self._safe(self.client.get_run, run_id)
        if run is None:
            return None
        return f"{self.tracking_uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"

    # -- training --------------------------------------------------------------------------------
    def start_training_run(self, space, recipe) -> str | None:
        return self.start_run(
            f"nasprune/{space.name}/train",
            f"train-{space.name}",
            params={"space": space.name, "space_digest": space.digest(), **recipe.model_dump()},
            tags={"nasprune.kind": "supernet-training"},
        )

    def log_epoch(self, run_id: str | None, rec: dict) -> None:
        self.log_metrics(run_id, {k: v for k, v in rec.items() if k != "epoch"}, step=int(rec["epoch"]))

    def end_training_run(self, run_id: str | None, result) -> None:
        self.log_metrics(run_id, {"train_seconds": result.seconds})
        if result.checkpoint:
            self.log_artifact(run_id, result.checkpoint, "checkpoint")
        self.end_run(run_id)


class JobTracker:
    """MLflow records of one search job: a parent run, a child run per trial, artifacts at the end.

    Trials are logged from a background thread so the search never waits on the tracking server;
    ``close()`` drains the queue. On a resumed job the parent run is reused and any finished trial
    that has no child run yet (the process died between the two) gets one in ``reconcile``.
    """

    def __init__(self, tracker: MlflowTracker, experiment: str):
        import queue
        import threading

        self.tracker = tracker
        self.experiment = experiment
        self.parent: str | None = None
        self.children: dict[int, str] = {}
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._drain, name="mlflow-trials", daemon=True)
        self._thread.start()

    @property
    def error(self) -> str | None:
        return self.tracker.error

    def _drain(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                fn, args = item
                fn(*args)
            finally:
                self._queue.task_done()

    def start(self, job_id: str, run_name: str, params: dict, existing_run_id: str | None = None) -> str | None:
        if existing_run_id:
            run = self.tracker._safe(self.tracker.client.get_run, existing_run_id)
            if run is not None:
                self.parent = existing_run_id
                self.tracker._safe(self.tracker.client.update_run, existing_run_id, "RUNNING")
                self.children = self._existing_children()
                return self.parent
        self.parent = self.tracker.start_run(
            self.experiment, run_name, params=params, tags={"nasprune.kind": "search-job", "nasprune.job_id": job_id}
        )
        return self.parent

    def _existing_children(self) -> dict[int, str]:
        runs = self.tracker._safe(
            self.tracker.client.search_runs,
            [self.tracker.experiment_id(self.experiment)],
            f"tags.mlflow.parentRunId = '{self.parent}'",
            max_results=50000,
        )
        return {
            int(r.data.tags["nasprune.trial"]): r.info.run_id for r in runs or [] if "nasprune.trial" in r.data.tags
        }

    def log_trial(self, rec) -> None:
        """Queue a child run for a finished trial (``TrialRecord``)."""
        if self.parent is None or rec.number in self.children:
            return
        self.children[rec.number] = ""  # reserved; the worker fills in the id
        self._queue.put((self._log_trial_now, (rec,)))

    def _log_trial_now(self, rec) -> None:
        params = {f"depth.{k}": v for k, v in rec.config["depths"].items()}
        params.update({f"width.{k}": v for k, v in rec.config["widths"].items()})
        run_id = self.tracker.start_run(
            self.experiment,
            f"trial-{rec.number}",
            params=params,
            parent_run_id=self.parent,
            tags={
                "nasprune.trial": rec.number,
                "nasprune.subnet_key": rec.subnet_key,
                "feasible": str(rec.feasible).lower(),
                "pareto": "false",
                "verified": "false",
            },
        )
        metrics = {"accuracy": rec.accuracy, "latency_ms": rec.latency_ms, "params": rec.params, "macs": rec.macs}
        self.tracker.log_metrics(run_id, metrics)
        self.tracker.end_run(run_id)
        if run_id:
            self.children[rec.number] = run_id

    def flush(self) -> None:
        self._queue.join()

    def tag_trial(self, number: int, tags: dict) -> None:
        run_id = self.children.get(number)
        if run_id:
            self.tracker.set_tags(run_id, tags)

    def close(self, status: str = "FINISHED") -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(timeout=30)
        self.tracker.end_run(self.parent, status)
