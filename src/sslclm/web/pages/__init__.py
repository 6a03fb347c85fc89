"""The console's pages, one module per area; ``ROUTERS`` is mounted under ``/ui``."""

from __future__ import annotations

from fastapi import APIRouter

from sslclm.web.pages import (
    admin,
    audit,
    certificate,
    connectors,
    dashboard,
    discovery,
    inventory,
    jobs,
    managed,
    policies,
    reports,
)

ROUTERS: list[APIRouter] = [
    dashboard.router,
    inventory.router,
    certificate.router,
    managed.router,
    jobs.router,
    discovery.router,
    connectors.router,
    policies.router,
    reports.router,
    audit.router,
    admin.router,
]
