"""For ``uvicorn --factory nasprune.service.api.main:app``: the service configured from ``NASPRUNE_*``."""

from __future__ import annotations

from fastapi import FastAPI

from nasprune.service.api.app import create_app
from nasprune.settings import Settings


def app() -> FastAPI:
    return create_app(Settings())
