"""Every API router, in the order they appear in the OpenAPI document."""

from __future__ import annotations

from fastapi import APIRouter

from sslclm.api.routes import (
    agent_stores,
    agents,
    audit,
    auth,
    ca_sync,
    certificates,
    discovery,
    health,
    jobs,
    key_exports,
    metrics,
    notifications,
    policies,
    reports,
    sightings,
    stores,
    system,
    tokens,
    users,
    workflows,
)

ROUTERS: list[APIRouter] = [
    health.router,
    auth.router,
    certificates.router,
    key_exports.router,
    sightings.router,
    jobs.router,
    workflows.router,
    ca_sync.router,
    stores.router,
    agent_stores.router,
    agents.router,
    discovery.router,
    policies.router,
    reports.router,
    notifications.router,
    metrics.router,
    users.router,
    tokens.router,
    audit.router,
    system.router,
]
