"""The Entrust Certificate Services gateway (type key ``entrust``): requests through the ECS Enterprise
API v2 with a client certificate and HTTP Basic, pending approvals collected later, revocation and
listing for CA sync."""

from __future__ import annotations

from sslclm.connectors.entrust.config import EntrustConfig
from sslclm.connectors.entrust.gateway import EntrustGateway

__all__ = ["EntrustConfig", "EntrustGateway"]
