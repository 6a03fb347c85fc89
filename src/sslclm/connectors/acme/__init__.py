"""The built-in ACME gateway (type key ``acme``): RFC 8555 issuance with http-01 or dns-01 validation,
revocation, and ACME Renewal Information (RFC 9773) where the server offers it."""

from __future__ import annotations

from sslclm.connectors.acme.challenges import http01_response
from sslclm.connectors.acme.config import AcmeConfig, Dns01Config, HookConfig, Http01Config, Rfc2136Config
from sslclm.connectors.acme.gateway import AcmeGateway

__all__ = [
    "AcmeConfig",
    "AcmeGateway",
    "Dns01Config",
    "HookConfig",
    "Http01Config",
    "Rfc2136Config",
    "http01_response",
]
