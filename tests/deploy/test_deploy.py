"""The deployment files, checked without a container engine: they parse, configure nasprune only
through settings it reads, run commands that exist (parsed by the real nasprune, ``ray start`` and
``mlflow server`` command lines) and use one image built the way ``make install`` installs.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from nasprune.cli import build_parser
from nasprune.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
NASPRUNE_ROLES = {"api", "worker"}  # compose services and k8s Deployments that run `nasprune ...`


def settings_env_vars() -> set[str]:
    return {f"NASPRUNE_{name.upper()}" for name in Settings.model_fields}


def package_env_vars() -> set[str]:
    """``NASPRUNE_*`` names the package reads outside ``Settings`` (e.g. the search-space path)."""
    found: set[str] = set()
    for folder in ("nasprune", "services"):
        for path in (ROOT / folder).rglob("*.py"):
            found |= set(re.findall(r"environ(?:\.get)?\(?\[?\s*\"(NASPRUNE_[A-Z_]+)\"", path.read_text()))
    return found


KNOWN_VARS = settings_env_vars() | package_env_vars()


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def manifests() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in manifests() if d["kind"] == kind}


def interpolate(value: str) -> str:
    """Compose's ``${VAR:-default}`` with the defaults (and ``$$`` -> ``$``)."""
    value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))
    return value.replace("$$", "$")


def nasprune_argv(command: list[str] | str, entrypoint: list[str] | None) -> list[str]:
    """The arguments after ``nasprune`` in a container's command (a list, or a ``sh -c`` script)."""
    entrypoint = entrypoint or ["nasprune"]
    if isinstance(command, str) or entrypoint[0].endswith("sh"):
        script = command if isinstance(command, str) else command[-1]
        for part in script.split("&&"):
            words = shlex.split(part)
            if words[:1] == ["exec"]:
                words = words[1:]
            if words[:1] == ["nasprune"]:
                return words[1:]
        raise AssertionError(f"no 'nasprune' command in {script!r}")
    assert entrypoint == ["nasprune"], entrypoint
    return list(command)


def ray_start_scripts(script: str) -> list[list[str]]:
    return [shlex.split(p)[2:] for p in script.split("&&") if shlex.split(p)[:2] == ["ray", "start"]]


def check_ray_start(args: list[str]) -> None:
    from ray.scripts.scripts import start

    start.make_context("start", [a.replace("$NASPRUNE_RAY_ADDRESS", "ray-head:6379") for a in args])


def check_mlflow_server(args: list[str]) -> dict:
    from mlflow.cli import server

    return server.make_context("server", args).params


# Compose ---------------------------------------------------------------------------------------


def test_compose_has_every_part_on_one_image():
    c = compose()
    assert set(c["services"]) >= {"api", "worker", "mlflow", "postgres", "minio", "ray-head", "ray-worker"}
    ours = {n: s for n, s in c["services"].items() if n in NASPRUNE_ROLES | {"mlflow", "ray-head", "ray-worker"}}
    assert {interpolate(s["image"]) for s in ours.values()} == {"nasprune:0.1.0"}
    for name, service in c["services"].items():
        deps = service.get("depends_on", [])
        assert set(deps) <= set(c["services"]), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), volume
            else:
                assert source in c["volumes"], volume
    # the API and the workers share the data dir
    assert "nasprune-data:/data" in c["services"]["api"]["volumes"]
    assert "nasprune-data:/data" in c["services"]["worker"]["volumes"]


def _compose_nasprune_env(service: str) -> dict[str, str]:
    env = compose()["services"][service]["environment"]
    return {k: interpolate(v) for k, v in env.items()}


@pytest.mark.parametrize("service", sorted(NASPRUNE_ROLES))
def test_compose_configures_nasprune_through_settings(service, monkeypatch):
    env = _compose_nasprune_env(service)
    names = {k for k in env if k.startswith("NASPRUNE_")}
    assert names <= KNOWN_VARS, names - KNOWN_VARS
    assert {"NASPRUNE_DATABASE_URL", "NASPRUNE_TRACKING_URI", "NASPRUNE_RAY_ADDRESS", "NASPRUNE_DATA_DIR"} <= names
    for key in list(__import__("os").environ):
        if key.startswith("NASPRUNE_"):
            monkeypatch.delenv(key)
    for key in names:
        monkeypatch.setenv(key, env[key])
    s = Settings()
    assert s.db_url.startswith("postgresql+psycopg://") and s.trial_storage_url == s.db_url
    assert s.tracking_uri == "http://mlflow:5000" and s.ray_address == "ray-head:6379"
    assert s.host == "0.0.0.0" and s.api_token is None


def test_compose_commands_exist():
    c = compose()["services"]
    parser = build_parser()
    for name in NASPRUNE_ROLES:
        argv = nasprune_argv(c[name]["command"], c[name].get("entrypoint"))
        assert argv[0] == name
        parser.parse_args(argv)
    # the worker joins the Ray cluster as a node without CPUs, then runs jobs
    (join,) = ray_start_scripts(c["worker"]["command"][-1])
    assert "--num-cpus=0" in join and any(a.startswith("--address=") for a in join)
    check_ray_start(join)
    for name in ("ray-head", "ray-worker"):
        assert c[name]["entrypoint"] == ["ray"] and c[name]["command"][0] == "start"
        check_ray_start([interpolate(a) for a in c[name]["command"][1:]])
    assert "--num-cpus=0" in c["ray-head"]["command"]


def test_compose_mlflow_server_matches_the_tested_one():
    """The tests run ``mlflow server`` as ``tests.cluster.mlflow_server_command``; compose runs the same."""
    from tests.cluster import mlflow_server_command

    service = compose()["services"]["mlflow"]
    assert service["entrypoint"] == ["mlflow"]
    ours = check_mlflow_server([interpolate(a) for a in service["command"][1:]])
    tested = check_mlflow_server(mlflow_server_command("postgresql+psycopg://u@h/db", "s3://b/a", "h", 1)[2:])
    assert ours["backend_store_uri"].startswith("postgresql+psycopg://")
    assert ours["artifacts_destination"].startswith("s3://") and ours["serve_artifacts"]
    assert tested["serve_artifacts"] and tested["artifacts_destination"].startswith("s3://")
    assert "mlflow:5000" in ours["allowed_hosts"].split(",")  # clients call it by its service name
    env = service["environment"]
    assert {"MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)


# Kubernetes ------------------------------------------------------------------------------------


def test_manifests_parse_and_kustomization_lists_them_all():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    for doc in manifests():
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert kustomization["images"] == [{"name": "nasprune", "newName": "nasprune", "newTag": version}]


def _pod_specs() -> dict[str, dict]:
    out = {}
    for kind in ("Deployment", "StatefulSet"):
        for name, d in by_kind(kind).items():
            out[name] = d
    return out


def test_workloads_services_and_references_fit_together():
    workloads = _pod_specs()
    config_maps, secrets = by_kind("ConfigMap"), by_kind("Secret")
    claims = by_kind("PersistentVolumeClaim")
    for name, w in workloads.items():
        labels = w["spec"]["template"]["metadata"]["labels"]
        assert w["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        pod = w["spec"]["template"]["spec"]
        for c in pod["containers"]:
            for ref in c.get("envFrom", []):
                if "configMapRef" in ref:
                    assert ref["configMapRef"]["name"] in config_maps
                if "secretRef" in ref:
                    assert ref["secretRef"]["name"] in secrets
            for e in c.get("env", []):
                key_ref = e.get("valueFrom", {}).get("secretKeyRef")
                if key_ref:
                    assert key_ref["key"] in secrets[key_ref["name"]]["stringData"]
            port_names = {p["name"] for p in c.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                port = c.get(probe, {}).get("httpGet", {}).get("port")
                assert port is None or port in port_names, (name, probe)
        for v in pod.get("volumes", []):
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps
    for name, svc in by_kind("Service").items():
        selector = svc["spec"]["selector"].items()
        selected = [w for w in workloads.values() if selector <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert selected, f"service {name} selects no pods"
        names = {p["name"] for w in selected for c in w["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names, name


def _container(workload: str) -> dict:
    (c,) = _pod_specs()[workload]["spec"]["template"]["spec"]["containers"]
    return c


def test_api_and_worker_run_nasprune_with_probes_and_settings(monkeypatch):
    config = by_kind("ConfigMap")["nasprune-config"]["data"]
    secret = by_kind("Secret")["nasprune-secrets"]["stringData"]
    port = int(config["NASPRUNE_PORT"])
    parser = build_parser()
    for workload, role in (("nasprune-api", "api"), ("nasprune-worker", "worker")):
        c = _container(workload)
        assert c["image"] == "nasprune"
        argv = nasprune_argv(c.get("args", []), c.get("command"))
        assert argv[0] == role
        parser.parse_args(argv)
        assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": port}
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert {"/data"} <= {m["mountPath"] for m in c["volumeMounts"]}
    (join,) = ray_start_scripts(_container("nasprune-worker")["args"][-1])
    assert "--num-cpus=0" in join
    check_ray_start(join)

    names = {k for k in {**config, **secret} if k.startswith("NASPRUNE_")}
    assert names <= KNOWN_VARS, names - KNOWN_VARS
    for key in list(__import__("os").environ):
        if key.startswith("NASPRUNE_"):
            monkeypatch.delenv(key)
    for key in names:
        monkeypatch.setenv(key, {**config, **secret}[key])
    s = Settings()
    assert s.db_url.startswith("postgresql+psycopg://") and s.trial_storage_url == s.db_url
    assert s.tracking_uri == "http://mlflow:5000" and s.port == port and s.api_token is None


def test_raycluster_matches_the_installed_ray_and_the_configured_address():
    import ray

    (cluster,) = by_kind("RayCluster").values()
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    groups = spec["workerGroupSpecs"]
    assert groups and all(g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in groups)
    for pod in [head["template"]] + [g["template"] for g in groups]:
        assert {c["image"] for c in pod["spec"]["containers"]} == {"nasprune"}
    check_ray_start(["--head"] + [f"--{k}={v}" for k, v in head["rayStartParams"].items()])
    for group in groups:
        check_ray_start([f"--{k}={v}" for k, v in group["rayStartParams"].items()])
    address = by_kind("ConfigMap")["nasprune-config"]["data"]["NASPRUNE_RAY_ADDRESS"]
    assert address == f"{cluster['metadata']['name']}-head-svc:6379"  # the Service KubeRay creates


def test_mlflow_deployment_runs_the_compose_command():
    c = _container("mlflow")
    assert c["image"] == "nasprune" and c["command"] == ["mlflow"]
    params = check_mlflow_server(c["args"][1:])
    assert params["serve_artifacts"] and "mlflow:5000" in params["allowed_hosts"].split(",")
    secret = by_kind("Secret")["mlflow-secrets"]["stringData"]
    assert secret["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    assert secret["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
    assert config_tracking_uri() == "http://mlflow:5000"


def config_tracking_uri() -> str:
    return by_kind("ConfigMap")["nasprune-config"]["data"]["NASPRUNE_TRACKING_URI"]


# The image -------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def test_dockerfile_installs_like_make_and_runs_the_package_entrypoint():
    steps = dockerfile()
    assert steps[0][0] == "FROM" and steps[0][1].startswith("python:3.11")
    installs = [rest for ins, rest in steps if ins == "RUN" and "pip install" in rest]
    assert installs and all("-c constraints.txt" in r for r in installs)
    torch_pin = next(line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch=="))
    assert torch_pin in installs[0] and "download.pytorch.org/whl/cpu" in dockerfile_text()
    assert any('".[s3]"' in r for r in installs)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry = [yaml.safe_load(rest) for ins, rest in steps if ins == "ENTRYPOINT"]
    assert entry == [list(scripts)]
    for ins, rest in steps:
        if ins == "COPY":
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), source
    env = {}
    for ins, rest in steps:
        if ins == "ENV":
            env.update(dict(w.split("=", 1) for w in shlex.split(rest)))
    names = {k for k in env if k.startswith("NASPRUNE_")}
    assert names <= KNOWN_VARS, names - KNOWN_VARS
    # The built-in spaces ship inside the package (package data): no path to set, nothing to copy beside it.
    assert "NASPRUNE_SPACES_PATH" not in env and ("COPY", "nasprune ./nasprune") in steps
    assert ("EXPOSE", env["NASPRUNE_PORT"]) in steps
    assert any(ins == "RUN" and "install" in rest and " wget" in rest for ins, rest in steps)  # KubeRay's probes
    # The build context sends nothing but what the image copies (not the 2 GB .venv).
    ignore = [ln for ln in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines() if ln and ln[0] != "#"]
    kept = {ln[1:].rstrip("/") for ln in ignore if ln.startswith("!")}
    copied = {src.rstrip("/") for ins, rest in steps if ins == "COPY" for src in rest.split()[:-1]}
    assert ignore[0] == "*" and copied <= kept, copied - kept


def dockerfile_text() -> str:
    return (DEPLOY / "Dockerfile").read_text()


def test_the_image_install_layout_works(tmp_path):
    """Install the package as the image does (a wheel, not editable) and run its entrypoints from
    elsewhere: the CLI with the built-in spaces and the job-store migrations, both shipped in the wheel."""
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(wheels)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    target = tmp_path / "site"
    (wheel,) = wheels.glob("nasprune-*.whl")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(target)}
    code = (
        "import nasprune, sys\n"
        "assert nasprune.__file__.startswith(sys.argv[1]), nasprune.__file__\n"
        "from nasprune.cli import main\n"
        "from nasprune.service.jobs import JobStore\n"
        "store = JobStore('sqlite:///' + sys.argv[2]); store.migrate(); print(store.schema_version())\n"
        "main(['spaces', 'list'])\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(target), str(tmp_path / "jobs.db")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "mlp_digits" in run.stdout and "resnet_mnist" in run.stdout and "cnn1d_mnist1d" in run.stdout
    assert run.stdout.splitlines()[0].strip() == "0003"


# Docs ------------------------------------------------------------------------------------------


def test_deploy_doc_lists_every_setting():
    text = (ROOT / "docs" / "deploy.md").read_text()
    mentioned = set(re.findall(r"NASPRUNE_[A-Z_]+[A-Z]", text))
    assert settings_env_vars() <= mentioned, settings_env_vars() - mentioned
    assert mentioned <= KNOWN_VARS, mentioned - KNOWN_VARS
