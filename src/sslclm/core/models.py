"""Imports every model module so the metadata is complete (for Alembic and tests)."""

from __future__ import annotations

from sslclm.agents import models as agents_models
from sslclm.audit import models as audit_models
from sslclm.auth import models as auth_models
from sslclm.core.db import Base
from sslclm.deployments import models as deployments_models
from sslclm.discovery import models as discovery_models
from sslclm.inventory import models as inventory_models
from sslclm.jobs import models as jobs_models
from sslclm.notifications import models as notifications_models
from sslclm.policies import models as policies_models
from sslclm.reporting import models as reporting_models
from sslclm.workflows import models as workflows_models

__all__ = [
    "Base",
    "agents_models",
    "audit_models",
    "auth_models",
    "deployments_models",
    "discovery_models",
    "inventory_models",
    "jobs_models",
    "notifications_models",
    "policies_models",
    "reporting_models",
    "workflows_models",
]
