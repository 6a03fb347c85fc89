"""Liveness and readiness for load balancers: public by design, they reveal nothing."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from sslclm import __version__
from sslclm.api.deps import PlatformDep
from sslclm.errors import SslClmError

router = APIRouter(tags=["health"])
PUBLIC_PATHS = frozenset({"/api/v1/health", "/api/v1/ready"})


class NotReadyError(SslClmError):
    """The platform is not ready: the database is unreachable."""

    http_status = 503
    code = "not-ready"


@router.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get("/ready")
def ready(platform: PlatformDep) -> dict[str, str]:
    try:
        with platform.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        raise NotReadyError(f"database unreachable: {type(exc).__name__}") from exc
    return {"status": "ready", "database": platform.engine.dialect.name}
