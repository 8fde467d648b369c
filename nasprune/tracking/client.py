"""The MLflow client side: names, links, the server check, and ``MlflowTracker`` (training runs)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

# Fail fast when the server is down instead of MLflow's default minutes of retries. These are
# process-wide (MLflow reads its HTTP retry and timeout settings from the environment on every
# request; neither MlflowClient nor its store takes them), so they are defaults only, set once at
# import: a value the user or the application set wins, and no thread ever changes them later.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
# No "View run ... at: <URL>" line on stdout whenever a client call ends a run (one per trial in a
# service's log otherwise); nasprune ends its runs through :func:`terminate`, which never prints.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"  # the run's (or experiment's) description, markdown, shown by the UI
# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, sessions): a search
# job is classic model development (runs, metrics, charts, models).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_DEVELOPMENT = "custom_model_development"
RECOMMENDED_ALIAS = "recommended"
DESCRIPTION_BUDGET = 7000  # characters of the parent's description before the front table is cut short
# MLflow 3.17's UI picks its view from this query parameter (else the browser's last choice, GenAI by
# default), not from the experiment kind: links to a run ask for the model-training view.
UI_VIEW = "workflowType=machine_learning"


def registered_model_name(space: str) -> str:
    """The model registry name under which a space's delivered models are versioned."""
    return f"nasprune-{space}"


def job_run_name(space: str, budget_ms: float, device: str, job_id: str) -> str:
    """The parent run's name: what was searched, for which budget, on which device (and the job)."""
    return f"{space} \u2264{budget_ms:.4g}ms {device} [{job_id[:8]}]"


def get_or_create_experiment(client, name: str) -> str:
    """The id of experiment ``name``, created (or left) with the model-development kind set."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: MODEL_DEVELOPMENT})
    if EXPERIMENT_KIND_TAG not in exp.tags:  # made by an older nasprune: the UI would open it as GenAI
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, MODEL_DEVELOPMENT)
    return exp.experiment_id


def public_uri(uri: str) -> str:
    """``uri`` without its user info: a tracking URI may carry the service's own MLflow credentials."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def redact(text: str, uri: str) -> str:
    """``text`` with ``uri``'s credentials removed wherever they appear."""
    parts = urlsplit(uri)
    text = text.replace(uri, public_uri(uri))
    if "@" in parts.netloc:
        for secret in (parts.netloc.rsplit("@", 1)[0], parts.password):
            if secret:
                text = text.replace(secret, "***")
    return text


def server_problem(uri: str, timeout_s: float = 2.0) -> str | None:
    """What is wrong with the tracking server at ``uri`` in one clear line; None when it answers (or is no server)."""
    if not uri.startswith(("http://", "https://")):
        return None
    import httpx

    where = f"MLflow server at {public_uri(uri)}"
    try:
        r = httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout_s)
    except httpx.ConnectError:
        return f"{where} is unreachable: it refuses connections (is it running?)"
    except httpx.TimeoutException:
        return f"{where} is unreachable: no answer within {timeout_s:g} s"
    except httpx.HTTPError as e:
        return redact(f"{where} is unreachable ({type(e).__name__})", uri)
    return None if r.status_code == 200 else f"{where} answers {r.status_code} to /health"


def terminate(client, run_id: str, status: str = "FINISHED") -> None:
    """End a run with ``status``, like ``MlflowClient.set_terminated`` but silent.

    ``set_terminated`` prints "View run ... at: <tracking URI>" to stdout, credentials of the URI
    included, and reads the run back to do it; only a process-wide variable turns that off.
    """
    from mlflow.entities import RunStatus

    client._tracking_client.store.update_run_info(
        run_id, run_status=RunStatus.from_string(status), end_time=int(time.time() * 1000), run_name=None
    )


def describe_failure(e: Exception, uri: str) -> str:
    """A tracking call's failure in one line: the server's state when it is down, else the call's own error."""
    problem = server_problem(uri)
    if problem is not None:
        return problem
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return redact(f"{type(e).__name__}: {first[:200]}", uri)


def _flat_params(prefix: str, d: dict) -> dict[str, str]:
    """``d`` flattened to ``a.b`` keys; unset (None) values are left out, not logged as "None"."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if v is None:
            continue
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
            self.error = (
                f"MLflow tracking at {public_uri(self.tracking_uri)} failed: {describe_failure(e, self.tracking_uri)}"
            )
            log.warning("%s; continuing without tracking", self.error)
            return None

    def experiment_id(self, name: str) -> str | None:
        return self._safe(get_or_create_experiment, self.client, name)

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
            self._safe(terminate, self.client, run_id, status)

    def run_url(self, run_id: str | None) -> str | None:
        """The UI link of a run, when tracking goes to an HTTP server."""
        if run_id is None or not self.tracking_uri.startswith("http"):
            return None
        run = self._safe(self.client.get_run, run_id)
        if run is None:
            return None
        base = public_uri(self.tracking_uri).rstrip("/")
        return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run_id}?{UI_VIEW}"

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
