"""Python client for the nasprune service.

    from nasprune.client import Client

    with Client("http://127.0.0.1:8000", token=None) as c:
        job_id = c.submit("mlp_digits", latency_budget_ms=0.01, n_trials=50)  # c.spaces(): each latency range
        job = c.wait(job_id)                  # progress bar on stderr; raises JobFailed if it failed
        front = c.pareto(job_id)
        c.download_model(job_id, "model.onnx")

Answers are the API's JSON (dicts); errors are :class:`ServiceError` with the server's message.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import httpx

from nasprune.errors import NasPruneError
from nasprune.progress import progress_bar

DEFAULT_URL = "http://127.0.0.1:8000"
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


class ServiceError(NasPruneError):
    """The service answered with an error (``status`` is the HTTP status, ``code`` its error name)."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None, body: Any = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.body = body


class JobFailed(ServiceError):
    """``wait`` saw the job fail; ``job`` is its final state."""

    def __init__(self, job: dict):
        super().__init__(f"job {job['id']} failed: {job.get('error') or 'no error message'}", body=job)
        self.job = job


class Client:
    """A thin, typed-by-docstring wrapper over the HTTP API. Thread-safe (one ``httpx.Client``)."""

    def __init__(self, base_url: str | None = None, token: str | None = None, *, timeout_s: float = 30.0):
        self.base_url = (base_url or os.environ.get("NASPRUNE_URL") or DEFAULT_URL).rstrip("/")
        if token is None:  # a user's key (a server with users), else the server's shared token
            token = os.environ.get("NASPRUNE_API_KEY") or os.environ.get("NASPRUNE_API_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # plumbing -------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise ServiceError(
                f"cannot reach the nasprune service at {self.base_url}: {e} (start one with 'nasprune serve', or "
                "point at a running one with --url or NASPRUNE_URL)"
            ) from None
        if r.status_code >= 400:
            try:
                body = r.json()
                detail, code = body.get("detail", r.text), body.get("code")
            except ValueError:
                body, detail, code = r.text, r.text or r.reason_phrase, None
            raise ServiceError(f"{detail} (HTTP {r.status_code})", status=r.status_code, code=code, body=body)
        return r

    def _json(self, method: str, path: str, **kw) -> Any:
        return self._request(method, path, **kw).json()

    # jobs -----------------------------------------------------------------------------------------

    def submit(
        self,
        space: str,
        latency_budget_ms: float,
        *,
        device: str = "local-cpu",
        n_trials: int = 100,
        sampler: str = "nsga2",
        backend: str = "optuna",
        seed: int = 0,
        constraints: dict | None = None,
        **options: Any,
    ) -> str:
        """Submit a search; returns the job id. ``options``: other fields of the request (``timeout_s``...).

        The service's warnings about an accepted request (e.g. a budget every subnet fits) are issued
        as :class:`UserWarning`; :meth:`submit_job` returns them instead.
        """
        answer = self.submit_job(
            space,
            latency_budget_ms,
            device=device,
            n_trials=n_trials,
            sampler=sampler,
            backend=backend,
            seed=seed,
            constraints=constraints,
            **options,
        )
        for message in answer.get("warnings") or []:
            warnings.warn(message, UserWarning, stacklevel=2)
        return answer["id"]

    def submit_job(
        self,
        space: str,
        latency_budget_ms: float,
        *,
        device: str = "local-cpu",
        n_trials: int = 100,
        sampler: str = "nsga2",
        backend: str = "optuna",
        seed: int = 0,
        constraints: dict | None = None,
        **options: Any,
    ) -> dict:
        """Submit a search; returns the service's answer: ``{"id", "status", "links", "warnings"}``."""
        body = {
            "space": space,
            "latency_budget_ms": latency_budget_ms,
            "device": device,
            "n_trials": n_trials,
            "sampler": sampler,
            "backend": backend,
            "seed": seed,
            **({"constraints": constraints} if constraints else {}),
            **options,
        }
        return self._json("POST", "/v1/jobs", json=body)

    def job(self, job_id: str) -> dict:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def jobs(self, status: str | None = None, *, limit: int = 50, offset: int = 0) -> dict:
        """One page: ``{"items": [...], "total", "limit", "offset", "next"}``."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return self._json("GET", "/v1/jobs", params=params)

    def cancel(self, job_id: str) -> dict:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def wait(self, job_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None, progress: bool = True) -> dict:
        """Poll until the job has finished; returns its final state. ``JobFailed`` if it failed.

        With ``progress``, shows a bar (trials done of the total) and the stage on stderr.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        bar = None
        try:
            while True:
                job = self.job(job_id)
                p = job.get("progress") or {}
                if progress:
                    bar = self._update_bar(bar, job, p)
                if job["status"] in FINAL_STATUSES:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise ServiceError(f"job {job_id} is still {job['status']} after {timeout_s:g} s")
                time.sleep(poll_s)
        finally:
            if bar is not None:
                bar.close()
        if job["status"] == "failed":
            raise JobFailed(job)
        return job

    @staticmethod
    def _update_bar(bar, job: dict, p: dict):
        total = p.get("n_total") or job["spec"]["n_trials"]
        if bar is None:
            bar = progress_bar(total, job["status"], file=sys.stderr)
        bar.total = total
        bar.n = min(p.get("n_done", 0), total)
        best = job.get("best") or {}
        acc = f"best in budget {best['accuracy']:.2%}" if best.get("accuracy") is not None else ""
        bar.set_description(f"{job['status']}: {p.get('stage', '')}", refresh=False)
        bar.set_postfix_str(acc, refresh=False)
        bar.refresh()
        return bar

    # results --------------------------------------------------------------------------------------

    def trials(self, job_id: str, *, limit: int = 100, offset: int = 0) -> dict:
        """One page of the job's trials: ``{"items": [...], "total", "limit", "offset", "next"}``."""
        return self._json("GET", f"/v1/jobs/{job_id}/trials", params={"limit": limit, "offset": offset})

    def all_trials(self, job_id: str, page: int = 500) -> list[dict]:
        """Every trial of the job, in order (all pages)."""
        items: list[dict] = []
        while True:
            got = self.trials(job_id, limit=page, offset=len(items))
            items += got["items"]
            if not got["items"] or len(items) >= got["total"]:
                return items

    def pareto(self, job_id: str) -> dict:
        """The Pareto front: ``{"candidates": [...], "recommended_id", "latency_budget_ms", ...}``."""
        return self._json("GET", f"/v1/jobs/{job_id}/pareto")

    def download_model(self, job_id: str, path: str | Path, candidate_id: str | None = None) -> Path:
        """Save the recommended model (or candidate ``candidate_id``) as an ONNX file at ``path``."""
        route = f"/v1/jobs/{job_id}/model" if candidate_id is None else f"/v1/jobs/{job_id}/models/{candidate_id}"
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.part")
        try:
            with self._http.stream("GET", route) as r:
                if r.status_code >= 400:
                    r.read()
                    try:
                        detail = r.json().get("detail", r.text)
                    except ValueError:
                        detail = r.text
                    raise ServiceError(f"{detail} (HTTP {r.status_code})", status=r.status_code)
                with open(tmp, "wb") as f:
                    for chunk in r.iter_bytes():
                        f.write(chunk)
        except httpx.HTTPError as e:
            tmp.unlink(missing_ok=True)
            raise ServiceError(f"download from {self.base_url} failed: {e}") from None
        tmp.replace(path)
        return path

    # catalog and health ---------------------------------------------------------------------------

    def spaces(self) -> list[dict]:
        return self._json("GET", "/v1/spaces")

    def devices(self) -> list[dict]:
        return self._json("GET", "/v1/devices")

    def upload_device(self, name: str, table: str | Path | dict) -> dict:
        """Upload a latency table (a JSON file path or its parsed content) as device ``name``."""
        if not isinstance(table, dict):
            return self._json(
                "POST",
                "/v1/devices",
                params={"name": name},
                content=Path(table).read_bytes(),
                headers={"Content-Type": "application/json"},
            )
        return self._json("POST", "/v1/devices", params={"name": name}, json=table)

    # models ---------------------------------------------------------------------------------------

    def upload_model(
        self, architecture: str, weights: str | Path, num_classes: int, input_shape: str | tuple, dataset: str = ""
    ) -> dict:
        """Upload trained weights (a safetensors file, streamed) of a torchvision architecture
        (``torchvision:NAME``); the service derives its space. Returns the model (``id`` goes in a job's
        ``model``)."""
        path = Path(weights)
        shape = input_shape if isinstance(input_shape, str) else ",".join(map(str, input_shape))

        def chunks():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk

        params = {"architecture": architecture, "num_classes": num_classes, "input_shape": shape}
        return self._json(
            "POST",
            "/v1/models",
            params={**params, **({"dataset": dataset} if dataset else {})},
            content=chunks(),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(path.stat().st_size)},
        )

    def models(self) -> list[dict]:
        return self._json("GET", "/v1/models")

    def model(self, model_id: str) -> dict:
        return self._json("GET", f"/v1/models/{model_id}")

    def datasets(self) -> list[dict]:
        return self._json("GET", "/v1/datasets")

    def dataset(self, name: str) -> dict:
        return self._json("GET", f"/v1/datasets/{name}")

    def upload_dataset(self, name: str, path: str | Path, format: str, **options: Any) -> dict:
        """Upload a dataset file (streamed from disk) as ``name``; ``options``: ``size="32,32"``, ``mode``,
        ``label_column``, ``input_shape``, ``val``, ``test``, ``calib``, ``seed``, ``space`` (docs/data.md)."""
        path = Path(path)

        def chunks():
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    yield chunk

        return self._json(
            "POST",
            "/v1/datasets",
            params={"name": name, "format": format, **options},
            content=chunks(),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(path.stat().st_size)},
        )

    # users, keys, audit (a server with NASPRUNE_AUTH=users; all but ``me`` need an admin's key) ----------

    def me(self) -> dict:
        """Who this client's key (or token) acts for: ``{"mode", "name", "role", "team"}``."""
        return self._json("GET", "/v1/me")

    def add_user(self, name: str, role: str = "member", team: str | None = None, **limits: Any) -> dict:
        """Add a user; ``limits``: ``max_running``, ``max_queued``, ``max_storage_bytes``, ``priority``."""
        return self._json("POST", "/v1/users", json={"name": name, "role": role, "team": team, **limits})

    def users(self) -> list[dict]:
        return self._json("GET", "/v1/users")

    def update_user(self, name: str, **changes: Any) -> dict:
        """Change ``role``, ``team``, ``disabled``, limits or ``priority`` of a user."""
        return self._json("PATCH", f"/v1/users/{name}", json=changes)

    def create_key(self, user: str, label: str | None = None) -> dict:
        """A new API key of ``user``; the answer's ``key`` is shown this once."""
        return self._json("POST", f"/v1/users/{user}/keys", json={"label": label})

    def keys(self, user: str) -> list[dict]:
        return self._json("GET", f"/v1/users/{user}/keys")

    def revoke_key(self, key_id: str) -> dict:
        return self._json("DELETE", f"/v1/keys/{key_id}")

    def audit(self, *, user: str | None = None, action: str | None = None, limit: int = 100, offset: int = 0) -> dict:
        params = {
            k: v for k, v in {"user": user, "action": action, "limit": limit, "offset": offset}.items() if v is not None
        }
        return self._json("GET", "/v1/audit", params=params)

    def health(self) -> dict:
        return self._json("GET", "/healthz")

    def ready(self) -> dict:
        return self._json("GET", "/readyz")
