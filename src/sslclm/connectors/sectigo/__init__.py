"""The Sectigo Certificate Manager gateway (type key ``sectigo``): enrollment through the SCM REST API
with the configured certificate type, collection once ready, revocation and listing for CA sync."""

from __future__ import annotations

from sslclm.connectors.sectigo.config import SectigoConfig
from sslclm.connectors.sectigo.gateway import SectigoGateway

__all__ = ["SectigoConfig", "SectigoGateway"]
