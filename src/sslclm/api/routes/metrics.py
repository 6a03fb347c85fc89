"""Prometheus metrics; authenticated like every other route (scrape with a viewer's bearer token).

Served at ``/metrics``, where Prometheus looks by default, and at ``/api/v1/metrics``.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from sslclm.api.deps import PlatformDep, require
from sslclm.auth.permissions import Permission
from sslclm.reporting.metrics import MetricsCache

router = APIRouter(tags=["metrics"])
# Mounted without the API prefix.
root_router = APIRouter(tags=["metrics"])


@router.get("/metrics", dependencies=[Depends(require(Permission.CERT_READ))], summary="Prometheus metrics")
@root_router.get(
    "/metrics", dependencies=[Depends(require(Permission.CERT_READ))], summary="Prometheus metrics"
)
def metrics(request: Request, platform: PlatformDep) -> Response:
    cache = getattr(request.app.state, "metrics_cache", None)
    if cache is None:
        cache = request.app.state.metrics_cache = MetricsCache()
    return Response(cache.render(platform), media_type=CONTENT_TYPE_LATEST)
