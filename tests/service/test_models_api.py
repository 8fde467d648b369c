"""POST /v1/models through a real uvicorn server: torchvision weights in, a derived space out, jobs by id."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from safetensors.torch import save, save_file

from nasprune.graph import build_model
from nasprune.paths import models_dir
from nasprune.registry import create_supernet, load_space
from tests.service.fakes import instant_runner
from tests.service.server import running, wait_for

ARCH = "torchvision:squeezenet1_1"
PARAMS = {"architecture": ARCH, "num_classes": 10, "input_shape": "3,48,48"}
OCTET = {"content-type": "application/octet-stream"}


def _weights(num_classes: int = 10, seed: int = 0) -> tuple[torch.nn.Module, bytes]:
    torch.manual_seed(seed)
    model = build_model(ARCH, {"num_classes": num_classes}).eval()
    return model, save({k: v.contiguous() for k, v in model.state_dict().items()})


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from nasprune.settings import Settings

    s = Settings(data_dir=tmp_path_factory.mktemp("models-api"), max_trials_per_job=50)
    with running(s, instant_runner) as (client, app):
        yield client, app, s


def test_upload_derives_the_space_and_jobs_name_the_model(api):
    client, _, settings = api
    model, blob = _weights()
    r = client.post("/v1/models", params=PARAMS, content=blob, headers=OCTET)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"].startswith("m_") and body["groups"] > 10 and body["frozen"] == []
    assert body["kept_full_width"] == {"classifier.1": "network output"}
    # content-addressed: the same upload is the same model
    again = client.post("/v1/models", params=PARAMS, content=blob, headers=OCTET).json()
    assert again["id"] == body["id"]
    assert client.get(f"/v1/models/{body['id']}").json() == body
    assert [m["id"] for m in client.get("/v1/models").json()] == [body["id"]]
    # the stored space builds a supernet from the uploaded weights: it computes what the model does
    space = load_space(models_dir(settings.data_dir) / f"{body['id']}.yaml")
    net = create_supernet(space).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(net(x), model(x))
    # a job names the model instead of a space
    r = client.post("/v1/jobs", json={"model": body["id"], "latency_budget_ms": 1.0, "n_trials": 5})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "dataset"  # no data to train on: refused now
    assert f"model {body['id']} was uploaded without a dataset" in r.json()["detail"]
    x = torch.randn(200, 3, 48, 48).numpy()  # data that fits it
    blob = io.BytesIO()
    np.savez(blob, x=x, y=np.repeat(np.arange(10), 20))
    r = client.post("/v1/datasets", params={"name": "tiles", "format": "npz", "calib": 20}, content=blob.getvalue(),
                    headers=OCTET)  # fmt: skip
    assert r.status_code == 201, r.text
    r = client.post("/v1/jobs", json={"model": body["id"], "dataset": "tiles", "latency_budget_ms": 1.0, "n_trials": 5})
    assert r.status_code == 202, r.text
    job = wait_for(client, r.json()["id"], ("succeeded",))
    assert job["spec"]["model"] == job["spec"]["space"] == body["id"]


def test_weights_that_do_not_fit_name_the_tensor_and_both_shapes(api):
    client, _, _ = api
    _, blob = _weights(num_classes=7)
    r = client.post("/v1/models", params=PARAMS, content=blob, headers=OCTET)
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert "tensor 'classifier.1.weight' has shape (7, 512, 1, 1) in the weights but (10, 512, 1, 1)" in detail


@pytest.mark.parametrize(
    ("params", "body", "status", "message"),
    [
        (PARAMS, b"", 422, "the request body is empty"),
        (PARAMS, b"\x80\x03pickle-bytes-not-safetensors", 422, "is not a readable safetensors file"),
        ({**PARAMS, "architecture": "torchvision:resnet99"}, b"x", 422, "'resnet99' is not a torchvision"),
        ({**PARAMS, "architecture": "mypkg.evil:build"}, b"x", 422, "architecture"),
        ({**PARAMS, "num_classes": "ten"}, b"x", 422, "num_classes"),
        ({**PARAMS, "input_shape": "3,48,x"}, b"x", 422, "input_shape"),
        ({**PARAMS, "dataset": "digits"}, None, 422, "dataset 'digits' has inputs (64,)"),
    ],
)
def test_bad_uploads_get_a_clear_4xx_and_leave_nothing(api, params, body, status, message):
    client, _, settings = api
    before = sorted(p.name for p in models_dir(settings.data_dir).iterdir())
    content = _weights()[1] if body is None else body
    r = client.post("/v1/models", params=params, content=content, headers=OCTET)
    assert r.status_code == status, r.text
    assert message in r.text
    assert sorted(p.name for p in models_dir(settings.data_dir).iterdir()) == before  # no temp files left


def test_the_size_limit_holds_on_bytes_read_even_when_chunked(tmp_path):
    from nasprune.settings import Settings

    with running(Settings(data_dir=tmp_path), instant_runner) as (client, app):
        app.state.services.models.limit = 1000

        def chunks():
            for _ in range(100):
                yield b"\0" * 100  # no Content-Length: a chunked body of 10,000 bytes

        r = client.post("/v1/models", params=PARAMS, content=chunks(), headers=OCTET)
        assert r.status_code == 413 and "larger than this server accepts" in r.text
        assert not [p for p in models_dir(tmp_path).iterdir()]


def test_unknown_model_in_a_job_is_a_404_naming_the_id(api):
    client, _, _ = api
    r = client.post("/v1/jobs", json={"model": "m_0123456789abcdef", "latency_budget_ms": 1.0, "n_trials": 5})
    assert r.status_code == 404, r.text
    assert "no model with id 'm_0123456789abcdef'" in r.json()["detail"]
    r = client.post("/v1/jobs", json={"model": "m_0123456789abcdef", "space": "mlp_digits", "latency_budget_ms": 1})
    assert r.status_code == 422 and "either 'space' or 'model'" in r.text


def test_pickles_are_never_loaded_from_disk(tmp_path):
    from nasprune.errors import GraphError
    from nasprune.graph import load_weights

    model, _ = _weights()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(GraphError, match="safetensors files only"):
        load_weights(model, tmp_path / "w.pt")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(GraphError, match="weights lack tensor"):
        load_weights(model, tmp_path / "w.safetensors")
