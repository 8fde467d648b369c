"""The OpenAPI document of one app, made to say what that server does.

FastAPI's document is generated from the routes; this adjusts what it cannot know:

- every error answer is ``ErrorBody`` (``detail`` is a sentence; FastAPI declares 422 as its own
  list shape, which this server never sends);
- a route with a JSON body also answers 400 (not JSON), 413 (too large) and 415 (not
  ``application/json``);
- ``n_trials``'s maximum is this server's ``max_trials_per_job``;
- bearer auth appears only when the server has a token (``create_app`` adds the dependency that
  declares it only then), and with it a 401 on every ``/v1`` route (none without a token).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from nasprune.settings import Settings

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
JSON_BODY_ERRORS = {
    "400": "the body is not valid JSON (code invalid_json, with the reason)",
    "413": "the body is larger than the server accepts",
    "415": "the body is not sent as application/json",
}


def _error_response(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}


def adjust(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """``schema`` (FastAPI's document) changed in place as described above; returned."""
    for path, item in schema.get("paths", {}).items():
        for op in item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            responses = op["responses"]
            if "422" in responses:
                responses["422"] = _error_response(
                    responses["422"].get("description", "invalid request").replace("Validation Error", "invalid input")
                )
            body = op.get("requestBody", {}).get("content", {})
            if "application/json" in body:
                for status, description in JSON_BODY_ERRORS.items():
                    responses.setdefault(status, _error_response(description))
            if settings.api_token is None:
                responses.pop("401", None)  # a server without a token never answers 401
            elif path.startswith("/v1/"):
                responses.setdefault("401", _error_response("missing or wrong API token"))
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    n_trials = components.get("JobCreate", {}).get("properties", {}).get("n_trials")
    if n_trials is not None:
        n_trials["maximum"] = settings.max_trials_per_job
        n_trials["description"] = f"trials to run (this server allows at most {settings.max_trials_per_job})"
    return schema


def install(app: FastAPI, settings: Settings) -> None:
    """Serve the adjusted document (built once, on first request)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = adjust(generate(), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
