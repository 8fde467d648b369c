"""The delivered model as an MLflow logged model, registered with the alias ``recommended``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from nasprune.tracking.client import RECOMMENDED_ALIAS


def log_onnx_model(
    client, experiment_id: str, run_id: str, path: Path, name: str, input_example=None
) -> tuple[str, str]:
    """Log the ONNX file ``path`` as an MLflow logged model of ``run_id`` and register it as ``name``.

    What ``mlflow.onnx.log_model(..., registered_model_name=name)`` does, through ``client`` alone
    (``log_model`` reads the process-wide tracking URI and active run; a service runs several jobs
    against its own URI at once): ``mlflow.onnx.save_model`` writes the MLmodel folder (ONNX
    flavor and pyfunc, CPU execution provider, signature inferred from ``input_example`` and the
    model's output on it, the model's ``nasprune.*`` metadata, preprocessing included), then the
    logged model is created, filled, linked to the run as its output and marked ready, and a new
    version of ``name`` gets the alias ``recommended``. Returns ``(name, version)``.
    """
    import mlflow.onnx
    import onnx
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model, infer_signature

    from nasprune.export import read_metadata

    meta = read_metadata(path)
    metadata = {"nasprune": {k: _json_or_str(v) for k, v in meta.items()}}
    signature = None
    if input_example is not None:
        from nasprune.onnxrt import make_session

        (logits,) = make_session(path).run(None, {"input": input_example})
        signature = infer_signature(input_example, logits)
    params = {k: meta[k] for k in ("space", "subnet_key", "precision", "delivered") if k in meta}
    model = client.create_logged_model(
        experiment_id, name="model", source_run_id=run_id, params=params, model_type="onnx"
    )
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model"
        mlflow_model = Model(
            artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id, model_id=model.model_id
        )
        mlflow.onnx.save_model(
            onnx.load(str(path)),
            str(local),
            mlflow_model=mlflow_model,
            signature=signature,
            input_example=input_example,
            metadata=metadata,
            pip_requirements=mlflow.onnx.get_default_pip_requirements(),  # no inference subprocess
            onnx_execution_providers=["CPUExecutionProvider"],
            save_as_external_data=False,
        )
        client.log_model_artifacts(model.model_id, str(local))
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    try:
        client.create_registered_model(name, description=f"Subnets nasprune delivered for '{meta.get('space')}'")
    except MlflowException as e:
        if e.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    version = client.create_model_version(
        name, f"models:/{model.model_id}", run_id=run_id, model_id=model.model_id, await_creation_for=0
    )
    client.set_registered_model_alias(name, RECOMMENDED_ALIAS, version.version)
    return name, str(version.version)


def _json_or_str(value: str):
    try:
        return json.loads(value)
    except ValueError:
        return value
