"""The MLflow server that ``nasprune serve`` starts, served through the API under ``/mlflow``.

That server listens on a Unix socket in a folder only this user can enter, so it has no TCP port
anyone on the machine could reach; every request to it passes this proxy, behind the API's own
token when one is set (``TokenGate`` checks ``/mlflow`` like ``/v1``). Why a proxy rather than
MLflow's basic-auth app: one credential for the whole service (the API token, as a bearer token or
as the password of HTTP basic auth, which browsers prompt for), no user database to keep next to
the API's, no extra package (MLflow's auth app needs Flask-WTF), and the MLflow process holds no
secret at all.

The service's own tracking client reaches MLflow through this proxy too, over loopback; with a
token set it authenticates with a random secret made at start-up (``internal_secret``), never the
API token, and that secret is removed from every message and link (``nasprune.tracking.public_uri``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

PREFIX = "/mlflow"
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    "content-length",
}


@dataclass(frozen=True)
class MlflowProxy:
    """Where the MLflow server listens, and the secret this process's own tracking client uses."""

    socket_path: Path
    internal_secret: str | None = None

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(self.socket_path)),
            base_url="http://localhost",
            timeout=httpx.Timeout(60.0, connect=5.0),
        )


class Forwarder:
    """Forwards requests to the MLflow server as they are, but for the host and the credentials."""

    def __init__(self, proxy: MlflowProxy):
        self.proxy = proxy
        self._client: httpx.AsyncClient | None = None

    def router(self) -> APIRouter:
        r = APIRouter(include_in_schema=False)
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
        r.add_api_route(PREFIX, self.forward, methods=methods)
        r.add_api_route(PREFIX + "/{path:path}", self.forward, methods=methods)
        return r

    async def forward(self, request: Request, path: str = ""):
        if self._client is None:
            self._client = self.proxy.client()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP]
        upstream = self._client.build_request(
            request.method,
            request.url.path,
            params=request.url.query,
            headers=[*headers, ("host", "localhost")],
            content=await request.body(),
        )
        try:
            resp = await self._client.send(upstream, stream=True)
        except httpx.HTTPError as e:
            return _unavailable(e)
        out = {k: v for k, v in resp.headers.items() if k.lower() not in _HOP_BY_HOP - {"content-length"}}
        return StreamingResponse(
            resp.aiter_raw(), status_code=resp.status_code, headers=out, background=BackgroundTask(resp.aclose)
        )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def _unavailable(e: Exception):
    from nasprune.service.api.errors import _error

    return _error(503, "mlflow_unavailable", f"the MLflow server does not answer ({type(e).__name__}); it is restarted")
