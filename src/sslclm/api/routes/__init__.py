"""Every API router, in the order they appear in the OpenAPI document."""

from __future__ import annotations

from fastapi import APIRouter

from sslclm.api.routes import (
    audit,
    auth,
    certificates,
    discovery,
    health,
    jobs,
    sightings,
    system,
    tokens,
    users,
    workflows,
)

ROUTERS: list[APIRouter] = [
    health.router,
    auth.router,
    certificates.router,
    sightings.router,
    jobs.router,
    workflows.router,
    discovery.router,
    users.router,
    tokens.router,
    audit.router,
    system.router,
]
