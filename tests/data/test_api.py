"""/v1/datasets through a real uvicorn server: streamed, size-limited uploads in every format; listing;
records; and jobs that name a dataset checked at submit."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from tests.data.helpers import blobs, image_zip
from tests.service.fakes import instant_runner
from tests.service.server import running, wait_for

OCTET = {"content-type": "application/octet-stream"}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from nasprune.settings import Settings

    s = Settings(data_dir=tmp_path_factory.mktemp("datasets-api"), max_trials_per_job=50)
    with running(s, instant_runner) as (client, app):
        yield client, app, s


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _leftovers(settings) -> list[str]:
    root = settings.data_dir / "datasets"
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_upload_every_format_then_list_and_describe(api, tmp_path):
    import pandas as pd

    client, _, settings = api
    x, y = blobs(shape=(64,), k=10, n_per_class=12)
    r = client.post("/v1/datasets", params={"name": "vec", "format": "npz", "space": "mlp_digits"},
                    content=_npz(x=x, y=y), headers=OCTET)  # fmt: skip
    assert r.status_code == 201, r.text
    rec = r.json()
    assert rec["input_shape"] == [64] and rec["num_classes"] == 10 and len(rec["content_hash"]) == 64
    assert rec["normalization"]["axis"] == "feature" and rec["sizes"]["train"] > 0
    zipped = image_zip(tmp_path / "pets.zip").read_bytes()
    r = client.post("/v1/datasets", params={"name": "pets", "format": "images", "size": "8,8", "mode": "RGB"},
                    content=zipped, headers=OCTET)  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["input_shape"] == [3, 8, 8] and r.json()["class_names"] == ["cat", "dog"]
    df = pd.DataFrame(x[:, :5], columns=list("abcde")).assign(label=y)
    r = client.post("/v1/datasets", params={"name": "tab", "format": "csv"}, content=df.to_csv(index=False).encode(),
                    headers=OCTET)  # fmt: skip
    assert r.status_code == 201, r.text
    pq = io.BytesIO()
    df.to_parquet(pq)
    r = client.post("/v1/datasets", params={"name": "tab_pq", "format": "parquet"}, content=pq.getvalue(),
                    headers=OCTET)  # fmt: skip
    assert r.status_code == 201, r.text
    r = client.post("/v1/datasets", params={"name": "arrays", "format": "npy"}, content=_npy_tar(x, y),
                    headers=OCTET)  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["content_hash"] == rec["content_hash"]  # same samples, labels and split: same content
    listed = {d["name"]: d for d in client.get("/v1/datasets").json()}
    assert {"mnist5k", "digits", "mnist1d", "vec", "pets", "tab", "tab_pq", "arrays"} <= set(listed)
    assert listed["vec"]["samples"] == 120 and listed["digits"]["builtin"]
    assert client.get("/v1/datasets/pets").json()["class_counts"]["train"] == [8, 8]
    digits = client.get("/v1/datasets/digits").json()
    assert digits["builtin"] and digits["input_shape"] == [64] and len(digits["normalization"]["mean"]) == 64
    r = client.get("/v1/datasets/nothing")
    assert r.status_code == 404 and r.json()["code"] == "dataset_not_found"
    assert _leftovers(settings) == []


def _npy_tar(x, y) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, arr in (("x.npy", x), ("y.npy", y)):
            b = io.BytesIO()
            np.save(b, arr)
            info = tarfile.TarInfo(name)
            info.size = len(b.getvalue())
            tf.addfile(info, io.BytesIO(b.getvalue()))
    return buf.getvalue()


def test_size_limit_on_bytes_read_and_bad_files_leave_nothing(api):
    client, app, settings = api
    uploads = app.state.services.datasets
    limit, uploads.limit = uploads.limit, 4096
    try:

        def chunks():  # no Content-Length: only counting the bytes read can stop it
            for _ in range(10):
                yield b"\0" * 1024

        r = client.post("/v1/datasets", params={"name": "big", "format": "npz"}, content=chunks(), headers=OCTET)
        assert r.status_code == 413 and "larger than this server accepts" in r.json()["detail"]
    finally:
        uploads.limit = limit
    x, y = blobs()
    x[5, 0, 2] = np.nan
    cases = [
        ({"name": "n1", "format": "npz"}, _npz(x=x, y=y), 422, "sample 5 (label '0') has NaN"),
        ({"name": "n2", "format": "npz"}, b"not a zip", 422, "not a readable .npz"),
        ({"name": "n3", "format": "images"}, b"x", 422, "images need a declared size"),
        ({"name": "n4", "format": "images", "size": "8,8"}, b"PK\x05\x06" + b"\0" * 18, 422, "holds no images"),
        ({"name": "n5", "format": "npz"}, b"", 422, "the request body is empty"),
        ({"name": "Bad-Name", "format": "npz"}, b"x", 422, "name"),
        ({"name": "mnist1d", "format": "npz"}, b"x", 409, "taken by a built-in"),
        ({"name": "n6", "format": "npz", "space": "resnet_mnist"}, _npz(x=np.nan_to_num(x)[:, :, :4], y=y), 422,
         "takes inputs of shape (1, 28, 28)"),
    ]  # fmt: skip
    for params, body, status, message in cases:
        r = client.post("/v1/datasets", params=params, content=body, headers=OCTET)
        assert r.status_code == status, (params, r.text)
        assert message in r.json()["detail"], (params, r.text)
    assert _leftovers(settings) == []
    names = {d["name"] for d in client.get("/v1/datasets").json()}
    assert not names & {"big", "n1", "n2", "n3", "n4", "n5", "n6"}


def test_jobs_name_a_dataset_checked_at_submit(api):
    client, _, _ = api
    x, y = blobs(shape=(64,), k=10, n_per_class=12)
    assert client.post("/v1/datasets", params={"name": "vec64", "format": "npz"}, content=_npz(x=x, y=y),
                       headers=OCTET).status_code == 201  # fmt: skip
    x3, y3 = blobs(shape=(64,), k=3)
    assert client.post("/v1/datasets", params={"name": "three", "format": "npz"}, content=_npz(x=x3, y=y3),
                       headers=OCTET).status_code == 201  # fmt: skip
    job = {"space": "mlp_digits", "latency_budget_ms": 1.0, "n_trials": 3}
    r = client.post("/v1/jobs", json={**job, "dataset": "vec64"})
    assert r.status_code == 202, r.text
    done = wait_for(client, r.json()["id"], ("succeeded",))
    assert done["spec"]["dataset"] == "vec64"
    for dataset, message in [
        ("three", "has 3 classes but space 'mlp_digits' (nasprune.models.mlp_digits:mlp_digits) outputs 10"),
        ("mnist5k", "has samples of shape (1, 28, 28) but space 'mlp_digits'"),
        ("nothing", "unknown dataset 'nothing'"),
    ]:
        r = client.post("/v1/jobs", json={**job, "dataset": dataset})
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["field"] == "dataset" and message in r.json()["detail"], r.text


def test_python_client_uploads_and_reads_datasets(api, tmp_path):
    from nasprune.client import Client

    client, _, _ = api
    zipped = image_zip(tmp_path / "pets.zip")
    with Client(str(client.base_url)) as c:
        rec = c.upload_dataset("pets_client", zipped, "images", size="8,8")
        assert rec["input_shape"] == [1, 8, 8]
        assert c.dataset("pets_client")["content_hash"] == rec["content_hash"]
        assert "pets_client" in {d["name"] for d in c.datasets()}
