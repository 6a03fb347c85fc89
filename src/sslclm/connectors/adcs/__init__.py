"""The Microsoft AD CS gateway (type key ``adcs``): enrollment through the Certification Authority Web
Enrollment pages (certsrv) with NTLM or Basic authentication, requests awaiting a CA manager collected
later by request id. Certsrv offers no revocation, so the gateway does not declare it."""

from __future__ import annotations

from sslclm.connectors.adcs.config import AdcsConfig
from sslclm.connectors.adcs.gateway import AdcsGateway

__all__ = ["AdcsConfig", "AdcsGateway"]
