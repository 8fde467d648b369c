"""The HTTP API of nasprune (FastAPI). Build it with ``create_app(settings)``."""

from nasprune.service.api.app import create_app

__all__ = ["create_app"]
