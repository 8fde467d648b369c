"""For ``uvicorn --factory services.api.main:app``: the service configured from ``NASPRUNE_*``."""

from __future__ import annotations

from fastapi import FastAPI

from nasprune.settings import Settings
from services.api.app import create_app


def app() -> FastAPI:
    return create_app(Settings())
