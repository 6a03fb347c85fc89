"""The platform's app for ``uvicorn --factory bench.asgi:create --workers 2``, configured from SSLCLM_*.

``sslclm serve`` runs one process; the throughput benchmark needs several workers, which
uvicorn can only spawn from an importable factory.
"""

from __future__ import annotations

from fastapi import FastAPI

from sslclm.api.app import create_app
from sslclm.core.config import Settings


def create() -> FastAPI:
    return create_app(Settings())
