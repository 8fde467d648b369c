"""Real distributed engines on loopback for the scale-out tests and ``benchmarks/scale.py``.

- :func:`ray_cluster`: a Ray cluster started with the ``ray`` CLI, as on real machines: ``ray start
  --head`` plus ``ray start --address`` per worker node, each node with its own CPUs, a custom
  resource naming it, and its own temp dir. Every ``ray start --block`` runs in its own session
  and is stopped by signalling that session only, so Ray instances of other processes on the
  machine are left alone (``ray stop`` would end every Ray process of the machine).
- :func:`s3_server`: an S3-compatible object store (moto's server) with one bucket.
- :func:`mlflow_server`: ``mlflow server`` with a PostgreSQL backend store and artifacts in S3,
  started with the same options as the ``mlflow`` service of ``deploy/compose.yaml``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from nasprune.mlflow_server import MlflowServer, free_port, server_command, start_mlflow_server

RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
S3_KEY, S3_SECRET, S3_REGION = "nasprune-test", "nasprune-test-secret", "us-east-1"


def _bin(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    return str(exe) if exe.exists() else name


def _kill_session(proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM every process of the session ``proc`` leads (``ray start --block`` then stops its Ray
    processes), SIGKILL whatever is left after ``timeout_s``."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 10.0)):
        for pid in _session_pids(proc.pid):
            with suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _session_pids(proc.pid):
                return
            time.sleep(0.2)
    proc.poll()


def _session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of session ``sid``."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state ppid pgrp session ...
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


@dataclass
class RayNode:
    name: str
    num_cpus: int
    process: subprocess.Popen
    log: Path
    node_id: str | None = None


@dataclass
class RayCluster:
    address: str
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def node_ids(self) -> dict[str, str]:
        """Node name ('head', 'worker1', ...) -> Ray node id."""
        return {n.name: n.node_id for n in self.nodes}

    def path_exists_on_nodes(self, path: Path, timeout_s: float = 120.0) -> dict[str, bool]:
        """Whether a Ray task on each node sees ``path``: node name -> bool."""
        code = (
            "import json, os, ray, sys\n"
            "ray.init(address=sys.argv[1], log_to_driver=False)\n"
            "names, path = sys.argv[3].split(','), sys.argv[2]\n"
            "seen = ray.get([ray.remote(num_cpus=0, resources={'nasprune_' + n: 0.01})(os.path.exists).remote(path)"
            " for n in names])\n"
            "print(json.dumps(dict(zip(names, seen))))\n"
        )
        names = [n.name for n in self.nodes]
        out = _driver(code, self, str(path), ",".join(names), timeout_s=timeout_s)
        if out.returncode != 0:
            raise RuntimeError(f"could not ask the nodes: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def can_hide_paths() -> bool:
    """Whether nodes can be started in a mount namespace of their own (root, or a permissive sandbox)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", "mount -t tmpfs none /mnt"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


# Loaded by every Python process of a node (PYTHONPATH); in Ray worker processes only, it gives
# each accuracy evaluation (one trial) a minimum duration, spent sleeping or computing, and, with a
# rendezvous, makes each trial wait (before it returns) until a trial has begun on every node.
_TRIAL_FLOOR_SITECUSTOMIZE = """
import os, sys, time

_floor = float(os.environ.get("NASPRUNE_TEST_TRIAL_FLOOR_S") or 0)
_meet = os.environ.get("NASPRUNE_TEST_RENDEZVOUS_DIR")
_slow_start = float(os.environ.get("NASPRUNE_TEST_WORKER_START_S") or 0)
if _slow_start and any(a.endswith("default_worker.py") for a in sys.argv):
    time.sleep(_slow_start)  # a Ray worker process that starts slowly, as on a loaded machine
if (_floor or _meet) and any(a.endswith("default_worker.py") for a in sys.argv):
    import nasprune.evaluate

    _accuracy = nasprune.evaluate.Evaluator.accuracy
    _burn = os.environ.get("NASPRUNE_TEST_TRIAL_FLOOR_MODE") == "burn"
    _all = os.environ.get("NASPRUNE_TEST_RENDEZVOUS_NODES", "").split(",")
    _timeout = float(os.environ.get("NASPRUNE_TEST_RENDEZVOUS_TIMEOUT_S") or 600)

    def _rendezvous():
        open(os.path.join(_meet, os.environ["NASPRUNE_TEST_NODE"]), "a").close()
        deadline = time.monotonic() + _timeout
        while not all(os.path.exists(os.path.join(_meet, n)) for n in _all) and time.monotonic() < deadline:
            time.sleep(0.05)

    def accuracy(self, *args, **kwargs):
        end = time.perf_counter() + _floor
        value = _accuracy(self, *args, **kwargs)
        if _meet:
            _rendezvous()
        while _burn and time.perf_counter() < end:
            pass
        time.sleep(max(0.0, end - time.perf_counter()))
        return value

    nasprune.evaluate.Evaluator.accuracy = accuracy
"""


# Mount an empty tmpfs over each path given before "--", then become the command after it.
_HIDE_SCRIPT = (
    'while [ "$1" != -- ]; do mount -t tmpfs -o size=1m nasprune-hidden "$1" || exit 97; shift; done; shift; exec "$@"'
)


def _start_node(
    name: str, args: list[str], root: Path, timeout_s: float, hide: tuple[Path, ...] = (), env: dict | None = None
) -> tuple[subprocess.Popen, Path]:
    temp = Path(tempfile.mkdtemp(prefix=f"r{name[0]}", dir=root))  # short: Ray puts unix sockets in it
    log = root / f"{name}.log"
    ray_cmd = [
        _bin("ray"),
        "start",
        "--block",
        "--disable-usage-stats",
        "--node-ip-address=127.0.0.1",
        f"--temp-dir={temp}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        *args,
    ]
    cmd = ray_cmd
    if hide:
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _HIDE_SCRIPT, "sh"]
        cmd += [*map(str, hide), "--", *ray_cmd]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **RAY_ENV, **(env or {})},
            start_new_session=True,
        )
    deadline = time.monotonic() + timeout_s
    while "Ray runtime started" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill_session(proc)
            raise RuntimeError(f"ray node '{name}' did not start; its log ends:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)
    return proc, log


def _driver(code: str, cluster: RayCluster, *args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess:
    """Run ``code`` in a short-lived Python process connected to the cluster (``sys.argv[1]`` = address)."""
    return subprocess.run(
        [sys.executable, "-c", code, cluster.address, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, **RAY_ENV},
    )


def _resolve_node_ids(cluster: RayCluster, timeout_s: float) -> None:
    """Ask the cluster (from a short-lived driver process) which node id carries which node's resource."""
    code = (
        "import json, ray, sys\n"
        "ray.init(address=sys.argv[1], log_to_driver=False)\n"
        "print(json.dumps([{'id': n['NodeID'], 'alive': n['Alive'], 'resources': n['Resources']} "
        "for n in ray.nodes()]))\n"
    )
    deadline = time.monotonic() + timeout_s
    while True:
        out = _driver(code, cluster, timeout_s=timeout_s)
        if out.returncode == 0:
            alive = [n for n in json.loads(out.stdout.strip().splitlines()[-1]) if n["alive"]]
            for node in cluster.nodes:
                for n in alive:
                    if n["resources"].get(f"nasprune_{node.name}"):
                        node.node_id = n["id"]
            if all(node.node_id for node in cluster.nodes):
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Ray cluster did not show all its nodes: {out.stdout[-1000:]} {out.stderr[-2000:]}")
        time.sleep(1)


@contextmanager
def ray_cluster(
    worker_cpus: list[int],
    head_cpus: int = 1,
    object_store_mb: int = 200,
    timeout_s: float = 120.0,
    hide: tuple[Path, ...] = (),
    trial_floor_s: float = 0.0,
    trial_floor_mode: str = "sleep",
    rendezvous: bool = False,
    slow_start_s: dict[str, float] | None = None,
) -> Iterator[RayCluster]:
    """A head node with ``head_cpus`` CPUs and one worker node per entry of ``worker_cpus``.

    Node ``name`` carries the custom resource ``nasprune_<name>`` (``nasprune_head``,
    ``nasprune_worker1``, ...), so tests can tell nodes apart even though all share 127.0.0.1.
    ``hide``: folders the nodes must not see, as if they ran on other machines (each node runs in a
    mount namespace with an empty tmpfs over them; needs :func:`can_hide_paths`).

    ``trial_floor_s``: every trial evaluated on the nodes lasts at least this long (``sleep``, or
    ``burn`` to spend it computing). A trial of the small test space takes milliseconds, far less
    than a Ray actor takes to start (a process importing torch, ~3 s); Ray Tune's actor reuse then
    hands every trial to the first actor up and other nodes get none. Real spaces' trials take
    about a second; the floor makes the test's trials that long.

    ``rendezvous``: no trial returns before a trial has begun on every node (each node's first
    trial leaves a mark in a folder all nodes see, then waits for the others' marks; up to 10
    minutes). On a busy machine a node's first actor can take longer to start than the whole search
    takes on another node's actor, however long the floor; with every CPU taken by a waiting trial,
    Ray has to start an actor on each node, so a search with at least as many concurrent trials as
    nodes runs trials on every node whatever the load.

    ``slow_start_s``: node name -> seconds each Ray worker process of that node sleeps as it starts
    (the load that made a node's actors late, made deterministic).
    """
    root = Path(tempfile.mkdtemp(prefix="nasprune-ray-", dir="/tmp"))
    port = free_port()
    cluster = RayCluster(address=f"127.0.0.1:{port}")
    memory = str(object_store_mb * 1024 * 1024)
    env: dict[str, str] = {}
    specs = [("head", head_cpus)] + [(f"worker{i + 1}", c) for i, c in enumerate(worker_cpus)]
    if trial_floor_s or rendezvous or slow_start_s:
        (root / "sitecustomize.py").write_text(_TRIAL_FLOOR_SITECUSTOMIZE)
        path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
        env = {
            "PYTHONPATH": path,
            "NASPRUNE_TEST_TRIAL_FLOOR_S": str(trial_floor_s),
            "NASPRUNE_TEST_TRIAL_FLOOR_MODE": trial_floor_mode,
        }
    if rendezvous:
        meet = root / "rendezvous"
        meet.mkdir()
        env["NASPRUNE_TEST_RENDEZVOUS_DIR"] = str(meet)
        env["NASPRUNE_TEST_RENDEZVOUS_NODES"] = ",".join(name for name, cpus in specs if cpus > 0)
    try:
        with ExitStack() as stack:
            for name, cpus in specs:
                args = [
                    f"--num-cpus={cpus}",
                    f"--resources={json.dumps({f'nasprune_{name}': 1})}",
                    f"--object-store-memory={memory}",
                ]
                if name == "head":
                    args += ["--head", f"--port={port}", "--include-dashboard=false"]
                else:
                    args += [f"--address={cluster.address}"]
                node_env = {**env, "NASPRUNE_TEST_NODE": name}
                if slow_start_s and slow_start_s.get(name):
                    node_env["NASPRUNE_TEST_WORKER_START_S"] = str(slow_start_s[name])
                proc, log = _start_node(name, args, root, timeout_s, hide, node_env)
                stack.callback(_kill_session, proc)
                cluster.nodes.append(RayNode(name=name, num_cpus=cpus, process=proc, log=log))
            _resolve_node_ids(cluster, timeout_s)
            yield cluster
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class S3Server:
    endpoint: str
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        """What an S3 client (the MLflow server's boto3) needs to reach this store."""
        return {
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": S3_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_DEFAULT_REGION": S3_REGION,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=S3_KEY,
            aws_secret_access_key=S3_SECRET,
            region_name=S3_REGION,
        )

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@contextmanager
def s3_server(bucket: str = "mlflow") -> Iterator[S3Server]:
    """moto's S3-compatible server on a free loopback port, with ``bucket`` created."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        s3 = S3Server(endpoint=f"http://{host}:{port}", bucket=bucket)
        s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        server.stop()


def mlflow_server_command(backend_store_uri: str, artifacts: str, host: str, port: int) -> list[str]:
    """``mlflow server`` as ``deploy/compose.yaml`` runs it: database store, proxied artifacts, one worker."""
    return server_command(backend_store_uri, artifacts, host, port, serve_artifacts=True)


@contextmanager
def mlflow_server(backend_store_uri: str, s3: S3Server, root: Path, timeout_s: float = 90.0) -> Iterator[MlflowServer]:
    """An MLflow tracking server on PostgreSQL with its artifacts in ``s3`` (clients never see S3)."""
    server = start_mlflow_server(
        root / "mlflow-server",
        backend_store_uri=backend_store_uri,
        artifacts_destination=f"s3://{s3.bucket}/artifacts",
        env=s3.env,
        timeout_s=timeout_s,
    )
    try:
        yield server
    finally:
        server.stop()
