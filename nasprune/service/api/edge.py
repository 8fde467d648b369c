"""What every request passes before a route sees it: the token, the body's size, its media type and JSON.

- ``TokenGate`` (pure ASGI): with an API token configured, a request to ``/v1/...`` or to the
  proxied MLflow server (``/mlflow...``) without it is answered 401 before anything else happens;
  its body is never read. With users (``NASPRUNE_AUTH=users``) it takes a user's API key instead,
  read from the database on every request, and hands the routes the ``Principal`` it stands for.
- ``BodyLimit`` (pure ASGI): a body is refused (413) when its ``Content-Length`` says it is too
  large, and, for every body (chunked ones included), as soon as the bytes actually *read* pass the
  limit; the rest is never handed to the application.
- ``JsonRoute`` (route class): a route that takes a JSON body refuses other media types (415) and
  parses the body strictly: invalid UTF-8 and nesting deeper than the parser allows are
  ``invalid_json`` errors with the reason, like any other malformed JSON.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nasprune.service.api import errors

MAX_BODY_BYTES = 64 * 1024 * 1024
API_PREFIX = "/v1/"
MLFLOW_PREFIX = "/mlflow"


class TokenGate:
    """Answer 401 to ``/v1/...`` and ``/mlflow...`` requests without the app's API token, first.

    ``/mlflow`` (the proxied MLflow server) also takes the token as the password of HTTP basic auth
    (any user name), which a browser prompts for, and ``internal`` (the service's own tracking
    client's secret) in the same way.
    """

    def __init__(
        self,
        app: ASGIApp,
        token: Callable[[], str | None],
        internal: str | None = None,
        authenticate: Callable[[str], tuple[Any, str | None]] | None = None,
    ):
        self.app = app
        self.token = token
        self.internal = internal
        self.authenticate = authenticate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        mlflow = path == MLFLOW_PREFIX or path.startswith(MLFLOW_PREFIX + "/")
        if self.authenticate is not None and (path.startswith(API_PREFIX) or mlflow):
            await self._as_user(scope, receive, send, mlflow)
            return
        token = self.token() if path.startswith(API_PREFIX) or mlflow else None
        if token is not None:
            authorization = Headers(scope=scope).get("authorization")
            problem = token_problem(authorization, token)
            if problem is not None and mlflow:
                problem = basic_problem(authorization, [token, *([self.internal] if self.internal else [])])
            if problem is not None:
                challenge = 'Basic realm="nasprune MLflow"' if mlflow else "Bearer"
                response = errors._error(401, "unauthorized", problem, {"WWW-Authenticate": challenge})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _as_user(self, scope: Scope, receive: Receive, send: Send, mlflow: bool) -> None:
        """Users mode: the request's API key (bearer, or basic-auth password on ``/mlflow``) must be a valid key
        of an enabled user; ``/mlflow`` is for admins only (MLflow itself does not separate users' runs)."""
        import anyio.to_thread

        authorization = Headers(scope=scope).get("authorization")
        scheme, _, credentials = (authorization or "").partition(" ")
        key = credentials.strip() if scheme.lower() == "bearer" else None
        if mlflow and scheme.lower() == "basic":
            if self.internal and basic_problem(authorization, [self.internal]) is None:
                await self.app(scope, receive, send)
                return
            key = _basic_password(credentials)
        challenge = 'Basic realm="nasprune MLflow"' if mlflow else "Bearer"
        if not key:
            why = "this server needs a user's API key: send 'Authorization: Bearer <key>'"
            await errors._error(401, "unauthorized", why, {"WWW-Authenticate": challenge})(scope, receive, send)
            return
        principal, why = await anyio.to_thread.run_sync(self.authenticate, key)
        if principal is None:
            await errors._error(401, "unauthorized", why, {"WWW-Authenticate": challenge})(scope, receive, send)
            return
        if mlflow and not principal.is_admin:
            why = "the MLflow server shows every user's runs: only admins may use it (see docs/api.md)"
            await errors._error(403, "forbidden", why)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)


def _basic_password(credentials: str) -> str | None:
    import base64
    import binascii

    try:
        return base64.b64decode(credentials.strip(), validate=True).decode().partition(":")[2] or None
    except (binascii.Error, UnicodeDecodeError):
        return None


def basic_problem(authorization: str | None, secrets_: list[str]) -> str | None:
    """Why ``authorization`` is neither the bearer token nor basic auth with one of ``secrets_`` as password."""
    import base64
    import binascii

    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() == "basic" and credentials:
        try:
            _, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return "malformed basic credentials"
        if any(secrets.compare_digest(password.encode(), s.encode()) for s in secrets_):
            return None
        return "the API token is not valid"
    return (
        "this server needs an API token: send 'Authorization: Bearer <token>', or the token as the password of "
        "HTTP basic auth"
    )


def token_problem(authorization: str | None, token: str) -> str | None:
    """Why ``authorization`` (the header) does not carry ``token``; None when it does."""
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        return "this server needs an API token: send 'Authorization: Bearer <token>'"
    if not secrets.compare_digest(credentials.strip().encode(), token.encode()):
        return "the API token is not valid"
    return None


class BodyLimit:
    """Refuse request bodies larger than ``limit`` bytes with 413 ``payload_too_large``.

    A ``Content-Length`` over the limit is answered before anything is read. Otherwise the bytes
    are counted as the application receives them: the message that passes the limit raises
    :class:`~nasprune.service.api.errors.BodyTooLarge` inside the application (a route reading its body
    stops there; the error handler answers 413), and the application is never handed more. Should
    that error escape the application before it answered, it is answered here.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        announced = Headers(scope=scope).get("content-length")
        if announced is not None and announced.isdigit() and int(announced) > self.limit:
            await self._too_large(scope, receive, send, f"its Content-Length is {int(announced)} bytes")
            return
        read = 0
        started = False

        async def counted() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.limit:
                    raise errors.BodyTooLarge(self.limit, f"more than {self.limit} bytes were sent")
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except errors.BodyTooLarge as e:
            if started:
                raise
            await errors._error(413, "payload_too_large", e.detail)(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, why: str) -> None:
        await errors._error(413, "payload_too_large", errors.BodyTooLarge(self.limit, why).detail)(scope, receive, send)


# JSON bodies --------------------------------------------------------------------------------------


def parse_json(body: bytes) -> Any:
    """``json.loads`` of a UTF-8 body; every failure is a ``json.JSONDecodeError`` that says why."""
    try:
        text = body.decode("utf-8")  # json.loads(bytes) would also guess UTF-16 and UTF-32
    except UnicodeDecodeError as e:
        raise json.JSONDecodeError(f"invalid UTF-8 at byte {e.start}", "", 0) from None
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply (arrays or objects inside each other)", "", 0) from None


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class JsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class JsonRoute(APIRoute):
    """A route whose JSON body (if it has one) must be ``application/json`` and is parsed strictly."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def route(request: Request) -> Response:
            content_type = request.headers.get("content-type")
            empty = request.headers.get("content-length") == "0"
            if not (empty or (content_type is not None and _is_json(content_type))):
                got = f"got {content_type!r}" if content_type else "no Content-Type was sent"
                raise errors.UnsupportedMediaType(
                    f"the body must be JSON, sent with 'Content-Type: application/json' ({got})"
                )
            return await handler(JsonRequest(request.scope, request.receive))

        return route
