"""The data dir's layout and a job's, in one place: what nasprune builds once and reuses
(checkpoints, latency tables, uploaded devices and models) and what a job writes.

``NASPRUNE_DATA_DIR`` sets the root (default ``./.nasprune`` in the working directory)::

    checkpoints/                    trained supernets
    latency_tables/<space>__<device>[__int8].json
    devices/<device>/<space>[__int8].json   tables uploaded for another device
    datasets/<name>/                added datasets
    models/<id>.yaml, <id>.safetensors      uploaded models
    spaces/<name>.yaml              spaces the CLI derived from a model
    trials.journal                  the trials of local searches (Optuna journal)
    jobs/<job id>/                  a job's outputs (:class:`JobFiles`)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

FP32 = "fp32"
DEVICES = "devices"
JOBS = "jobs"
TRIALS_JOURNAL = "trials.journal"
"""The Optuna journal of a data dir's trials (SQLite deployments and the CLI's local searches)."""
FINETUNED = ".finetuned.onnx"
"""The suffix of a fine-tuned candidate's file beside its inherited-weights ``<candidate id>.onnx``."""


def data_dir(override: str | Path | None = None) -> Path:
    root = Path(override or os.environ.get("NASPRUNE_DATA_DIR", ".nasprune")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _sub(name: str, override: str | Path | None) -> Path:
    d = data_dir(override) / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def checkpoints_dir(override: str | Path | None = None) -> Path:
    return _sub("checkpoints", override)


def tables_dir(override: str | Path | None = None) -> Path:
    return _sub("latency_tables", override)


def models_dir(override: str | Path | None = None) -> Path:
    """Uploaded models: ``<id>.yaml`` (the derived space) and ``<id>.safetensors`` (its weights)."""
    return _sub("models", override)


def model_space_file(model_id: str, override: str | Path | None = None) -> Path:
    """An uploaded model's derived space (its weights lie beside it)."""
    return models_dir(override) / f"{model_id}.yaml"


def spaces_dir(override: str | Path | None = None) -> Path:
    """Spaces the CLI derived from a user's model (``nasprune search --model``) or tied to weights."""
    return _sub("spaces", override)


def datasets_dir(override: str | Path | None = None) -> Path:
    """Added datasets: one folder each (``x.npy``, ``y.npy``, ``split.npy``, ``calib.npy``, ``info.json``)."""
    return _sub("datasets", override)


def devices_dir(override: str | Path | None = None) -> Path:
    """Latency tables uploaded for other devices: ``<devices_dir>/<device>/<space>[__int8].json``."""
    return _sub(DEVICES, override)


def jobs_dir(override: str | Path | None = None) -> Path:
    return _sub(JOBS, override)


# -- latency table files ---------------------------------------------------------------------------
def precision_suffix(precision: str) -> str:
    """What a table file's name adds for its precision: nothing for fp32, ``__int8`` for int8."""
    return "" if precision == FP32 else f"__{precision}"


def table_file_name(space: str, device: str, precision: str = FP32) -> str:
    """A built table's file name: ``<space>__<device>.json`` (``...__int8.json`` for int8)."""
    return f"{space}__{device}{precision_suffix(precision)}.json"


def table_file_device(path: Path) -> str:
    """The device of a built table's file (``<space>__<device>[__int8].json``)."""
    return path.stem.split("__")[1]


def uploaded_table_name(space: str, precision: str = FP32) -> str:
    """An uploaded table's file name in its device's folder: ``<space>.json`` (``<space>__int8.json``)."""
    return f"{space}{precision_suffix(precision)}.json"


def uploaded_table_space(path: Path) -> tuple[str, str]:
    """``(space, precision)`` of an uploaded table's file (:func:`uploaded_table_name` read back)."""
    space, _, precision = path.stem.partition("__")
    return space, precision or FP32


# -- a job's outputs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobFiles:
    """What a job writes in its output folder: the delivered model, the result, the front, the
    candidates' ONNX files, the MLflow run id (so a restarted job reuses its run)."""

    root: Path

    @property
    def model(self) -> Path:
        """The delivered model (``model.onnx``)."""
        return self.root / "model.onnx"

    @property
    def result(self) -> Path:
        return self.root / "result.json"

    @property
    def pareto_json(self) -> Path:
        return self.root / "pareto.json"

    @property
    def pareto_png(self) -> Path:
        return self.root / "pareto.png"

    @property
    def run_id(self) -> Path:
        """The job's MLflow run id, written when the run is created."""
        return self.root / "mlflow_run_id"

    @property
    def models(self) -> Path:
        """The exported candidates (``<candidate id>.onnx``, ``<candidate id>.finetuned.onnx``)."""
        return self.root / "models"

    def candidate(self, candidate_id: str, suffix: str = ".onnx") -> Path:
        """A candidate's ONNX file (``suffix`` :data:`FINETUNED` for its fine-tuned one)."""
        return self.models / f"{candidate_id}{suffix}"

    @property
    def int8(self) -> Path:
        """Quantized architectures scored for the int8 front, and their scores."""
        return self.root / "int8"

    @property
    def tier0(self) -> Path:
        """The tier-0 model's record (a restarted job reuses it)."""
        return self.root / "tier0.json"

    @property
    def latency_references(self) -> Path:
        """Reference subnets timed beside the candidates (the table checked in use)."""
        return self.root / "latency_references"


def job_files(output_dir: str | Path) -> JobFiles:
    return JobFiles(Path(output_dir))
