"""The console's pages, one module per area; ``ROUTERS`` is mounted under ``/ui``."""

from __future__ import annotations

from fastapi import APIRouter

from sslclm.web.pages import (
    admin,
    agent_stores,
    agents,
    audit,
    certificate,
    certificate_actions,
    connectors,
    dashboard,
    discovery,
    inventory,
    jobs,
    managed,
    notifications,
    policies,
    policy_forms,
    reports,
    schedules,
)

ROUTERS: list[APIRouter] = [
    dashboard.router,
    inventory.router,
    certificate.router,
    certificate_actions.router,
    managed.router,
    jobs.router,
    discovery.router,
    schedules.router,
    connectors.router,
    agent_stores.router,
    agents.router,
    notifications.router,
    policy_forms.router,
    policies.router,
    reports.router,
    audit.router,
    admin.router,
]
