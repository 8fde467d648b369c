"""Finding a job's MLflow run, so the API can link to it.

The search records the parent run id of a job in ``<job dir>/mlflow_run_id`` and tags the run
with ``nasprune.job_id = <job id>`` (child runs, one per trial, carry ``mlflow.parentRunId``).
Only a tracking *server* has a UI to link to; for other tracking URIs the service does not look.

The job store keeps the run's place in the UI relative (``#/experiments/<id>/runs/<id>``); the link
is made when a job is read, from the tracking URI the service runs with *now*, so links survive a
restart on another port or host. Links stored absolute by older versions are rebuilt the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path

from nasprune.paths import job_files
from nasprune.tracking import UI_VIEW, public_uri, server_problem, terminate

JOB_ID_TAG = "nasprune.job_id"

log = logging.getLogger(__name__)


def is_server(tracking_uri: str | None) -> bool:
    return bool(tracking_uri) and tracking_uri.startswith(("http://", "https://"))


def run_path(experiment_id: str, run_id: str) -> str:
    """A run's place in the MLflow UI, relative to the UI's address (what the job store keeps)."""
    return f"#/experiments/{experiment_id}/runs/{run_id}"


def run_link(tracking_uri: str | None, stored: str | None) -> str | None:
    """The UI link of a stored run place on the server at ``tracking_uri`` (None without a server).

    ``stored`` is a :func:`run_path`, or an absolute link an older version stored: its address part
    (perhaps a port that no longer answers) is dropped and the current one put in its place.
    """
    if not stored or not is_server(tracking_uri):
        return None
    at = stored.find("#/")
    if at < 0:
        return None
    place = stored[at:].split("?", 1)[0]
    return f"{public_uri(tracking_uri).rstrip('/')}/{place}?{UI_VIEW}"


def find_job_run(tracking_uri: str, job_id: str, output_dir: Path | None = None) -> tuple[str, str] | None:
    """``(run_id, run_path)`` of the job's parent run on an MLflow server, or None if there is none (yet).

    The search writes the run id to ``JobFiles.run_id`` (``<output_dir>/mlflow_run_id``); without that file, the run is
    looked up by its ``nasprune.job_id`` tag.
    """
    if not is_server(tracking_uri):
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    marker = job_files(output_dir).run_id if output_dir is not None else None
    if marker is not None and marker.is_file():
        run = client.get_run(marker.read_text().strip())
        return run.info.run_id, run_path(run.info.experiment_id, run.info.run_id)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    runs = client.search_runs(
        experiment_ids=experiments,
        filter_string=f"tags.`{JOB_ID_TAG}` = '{job_id}'",
        order_by=["attributes.start_time ASC"],
        max_results=50,
    )
    for run in runs:
        if "mlflow.parentRunId" not in run.data.tags:
            return run.info.run_id, run_path(run.info.experiment_id, run.info.run_id)
    return None


def check_tracking(tracking_uri: str, timeout_s: float = 2.0) -> str | None:
    """None when the tracking store answers, else what is wrong in one line (for ``/readyz`` and job status)."""
    if is_server(tracking_uri):
        return server_problem(tracking_uri, timeout_s)
    if tracking_uri.startswith("sqlite:///"):
        parent = Path(tracking_uri.removeprefix("sqlite:///")).parent
        return None if parent.is_dir() else f"MLflow store folder {parent} does not exist"
    return None


def close_job_run(tracking_uri: str, output_dir: Path, status: str) -> None:
    """End the job's parent run (found by its marker file) with ``status``, if it is still running."""
    marker = job_files(output_dir).run_id
    if not is_server(tracking_uri) or not marker.is_file():
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    run_id = marker.read_text().strip()
    if client.get_run(run_id).info.status == "RUNNING":
        terminate(client, run_id, status)
