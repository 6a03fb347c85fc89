"""The built-in local CA gateway (type key ``local``): a root and an issuing CA kept in the platform."""

from __future__ import annotations

from sslclm.connectors.local_ca.config import LocalCAConfig
from sslclm.connectors.local_ca.gateway import LocalCAGateway

__all__ = ["LocalCAConfig", "LocalCAGateway"]
