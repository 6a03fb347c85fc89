"""The DigiCert CertCentral gateway (type key ``digicert``): orders through the Services API v2, pending
validation or approval collected later, revocation and listing for CA sync."""

from __future__ import annotations

from sslclm.connectors.digicert.config import DigiCertConfig
from sslclm.connectors.digicert.gateway import DigiCertGateway

__all__ = ["DigiCertConfig", "DigiCertGateway"]
