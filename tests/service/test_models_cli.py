"""``nasprune model upload``, ``models list`` and ``submit --model/--dataset/--weights`` against a real server."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from safetensors.torch import save_file

from nasprune.cli import main
from nasprune.graph import build_model
from tests.service.fakes import instant_runner
from tests.service.server import running, wait_for

ARCH = "torchvision:squeezenet1_1"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from nasprune.settings import Settings

    s = Settings(data_dir=tmp_path_factory.mktemp("models-cli") / "data", poll_s=0.05)
    with running(s, instant_runner) as (client, _):
        yield client, str(client.base_url).rstrip("/")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "squeeze.safetensors"
    save_file({k: v.contiguous() for k, v in build_model(ARCH, {"num_classes": 10}).state_dict().items()}, str(path))
    return path


def test_upload_list_and_submit_by_id(served, weights, tmp_path, capsys):
    client, url = served
    rc = main(["model", "upload", ARCH, str(weights), "--num-classes", "10", "--input-shape", "3,48,48", "--url", url])
    out = capsys.readouterr().out
    assert rc == 0, out
    first = re.search(r"^model (m_[0-9a-f]{16}): torchvision:squeezenet1_1, input 3,48,48, 10 classes$", out, re.M)
    model_id = first[1]
    assert f"next: nasprune submit --model {model_id} --dataset NAME --budget-ms MS" in out

    assert main(["models", "list", "--url", url]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^{model_id}\s+torchvision:squeezenet1_1\s+3,48,48\s+10\s", out, re.M), out
    assert main(["models", "list", "--json", "--url", url]) == 0
    assert [m["id"] for m in json.loads(capsys.readouterr().out)] == [model_id]

    rc = main(["submit", "--model", model_id, "--budget-ms", "1", "--trials", "5", "--url", url])
    err = capsys.readouterr().err
    assert rc == 2 and f"--dataset: model {model_id} was uploaded without a dataset" in err, err
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiles.npz", x=rng.normal(size=(200, 3, 48, 48)).astype(np.float32), y=np.repeat(range(10), 20))
    assert main(["data", "add", "tiles", str(tmp_path / "tiles.npz"), "--calib", "20", "--url", url]) == 0
    capsys.readouterr()
    rc = main(["submit", "--model", model_id, "--dataset", "tiles", "--budget-ms", "1", "--trials", "5", "--url", url])
    job_id = capsys.readouterr().out.strip()
    assert rc == 0 and re.fullmatch(r"[0-9a-f]{32}", job_id)
    job = wait_for(client, job_id, ("succeeded",))
    assert job["spec"]["model"] == model_id and job["spec"]["n_trials"] == 5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "mymodel:make_model"], "--model mymodel:make_model: the service runs no code of yours"),
        (["--model", ARCH], f"--model {ARCH} needs --weights FILE.safetensors and --dataset NAME"),
        (["--space", "mlp_digits", "--weights", "W"], "--weights goes with --model torchvision:NAME"),
        (["--model", "m_0123456789abcdef"], "m_0123456789abcdef"),  # the service's 404, in one line
        (["--space", "mlp_digits", "--dataset", "mnist1d"], "--dataset: dataset 'mnist1d' has samples of shape"),
        (["--space", "my.yaml"], "--space my.yaml: a service searches its own spaces"),
    ],
)
def test_submit_errors_name_the_flag(served, weights, capsys, argv, message):
    _, url = served
    argv = [str(weights) if a == "W" else a for a in argv]
    rc = main(["submit", *argv, "--budget-ms", "1", "--url", url])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


def test_upload_errors_are_clear(served, weights, capsys):
    _, url = served
    rc = main(["model", "upload", ARCH, str(weights), "--num-classes", "7", "--input-shape", "3,48,48", "--url", url])
    err = capsys.readouterr().err
    assert rc == 2 and "has shape (10, 512, 1, 1) in the weights but (7, 512, 1, 1)" in err, err
    rc = main(["model", "upload", "mymodel:make_model", str(weights), "--url", url])
    assert rc == 2 and "the service builds torchvision architectures only" in capsys.readouterr().err
    rc = main(["model", "upload", ARCH, str(weights), "--url", url])
    assert rc == 2 and "give --dataset (its input shape and classes) or both" in capsys.readouterr().err
    rc = main(["model", "upload", ARCH, str(weights), "--dataset", "no_such_data", "--url", url])
    assert rc == 2 and "no_such_data" in capsys.readouterr().err


def test_submit_sets_training_length_and_dataset(served, capsys):
    client, url = served
    rc = main(["submit", "--space", "mlp_digits", "--dataset", "digits", "--budget-ms", "1", "--trials", "4",
               "--train-epochs", "3", "--url", url])  # fmt: skip
    job_id = capsys.readouterr().out.strip()
    assert rc == 0
    spec = wait_for(client, job_id, ("succeeded",))["spec"]
    assert spec["train_epochs"] == 3 and spec["dataset"] == "digits" and spec["n_trials"] == 4
    rc = main(["submit", "--space", "mlp_digits", "--budget-ms", "1", "--train-epochs", "0", "--url", url])
    err = capsys.readouterr().err
    assert rc == 2 and "--train-epochs: " in err and "greater than or equal to 1" in err, err


def test_data_add_and_list_on_the_service(served, tmp_path, capsys):
    """POST /v1/datasets and GET /v1/datasets from the command line: 'data add/list --url'."""
    import numpy as np

    client, url = served
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(120, 64)).astype(np.float32), y=np.repeat(np.arange(4), 30))
    rc = main(["data", "add", "vecs", str(tmp_path / "d.npz"), "--calib", "20", "--space", "mlp_digits", "--url", url])
    err = capsys.readouterr()
    assert rc == 2 and "4 classes but space 'mlp_digits'" in err.err and "Traceback" not in err.err, err
    rc = main(["data", "add", "vecs", str(tmp_path / "d.npz"), "--calib", "20", "--url", url])
    out = capsys.readouterr().out
    assert rc == 0 and f"uploaded dataset 'vecs' (npz) to {url}: 120 samples of shape (64,), 4 classes" in out, out
    assert client.get("/v1/datasets/vecs").json()["num_classes"] == 4
    assert main(["data", "list", "--url", url]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^vecs\s+npz\s+64\s+4\s+120\s", out, re.M) and re.search(r"^mnist1d\s+builtin\s+1x40", out, re.M)
    assert main(["data", "show", "vecs", "--url", url]) == 0  # GET /v1/datasets/vecs
    out = capsys.readouterr().out
    assert "vecs: classification, npz, hash" in out and "input (64,) (features), 4 classes" in out, out
    assert main(["data", "show", "nothing_here", "--url", url]) == 2
    assert "nothing_here" in capsys.readouterr().err


def test_spaces_list_on_the_service(served, capsys):
    _, url = served
    assert main(["spaces", "list", "--url", url]) == 0  # GET /v1/spaces
    out = capsys.readouterr().out
    assert re.search(r"^mlp_digits\s+nasprune\.models\.mlp_digits:mlp_digits\s+digits\s+64\s", out, re.M), out
    assert "local-cpu" in out
