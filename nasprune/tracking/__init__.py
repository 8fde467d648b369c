"""MLflow tracking through ``MlflowClient(tracking_uri)``: no process-global mlflow state.

Tracking never breaks the work it records. ``MlflowTracker`` (training runs, :mod:`.client`) keeps its
first failure in ``tracker.error`` and skips later calls. ``JobTracker`` (search jobs, :mod:`.job`)
rides out an outage: its records wait in order in a queue, are retried with a bounded back-off while
the server is down and logged late once it is back; ``error`` says what is wrong while it lasts (for
the job's status) and, at the end, what happened or what was never logged. :mod:`.model` logs the
delivered ONNX model as a registered MLflow logged model.
"""

from nasprune.tracking.client import (
    NOTE_TAG,
    PARENT_TAG,
    RECOMMENDED_ALIAS,
    UI_VIEW,
    MlflowTracker,
    describe_failure,
    get_or_create_experiment,
    job_run_name,
    public_uri,
    redact,
    registered_model_name,
    server_problem,
    terminate,
)
from nasprune.tracking.job import JobTracker, candidate_figures
from nasprune.tracking.model import log_onnx_model

__all__ = [
    "NOTE_TAG",
    "PARENT_TAG",
    "RECOMMENDED_ALIAS",
    "UI_VIEW",
    "JobTracker",
    "MlflowTracker",
    "candidate_figures",
    "describe_failure",
    "get_or_create_experiment",
    "job_run_name",
    "log_onnx_model",
    "public_uri",
    "redact",
    "registered_model_name",
    "server_problem",
    "terminate",
]
