"""The ``tls-scan`` discovery source: target expansion, the handshake engine, STARTTLS, offline trust.

Everything here is database-free and imports only the plugin surface (``sslclm.spi``, ``pki``,
``errors``), so an agent can run it: it turns target specs into endpoints and endpoints into
:class:`ScanResult` values. The platform (``sslclm.discovery``) and the job system decide what to
keep; :class:`TlsScanSource` offers the same engine as an SPI discovery source.
"""

from __future__ import annotations

from sslclm.connectors.tls_scan.results import ErrorKind, Protocol, ScanResult, ScanTarget, TrustError
from sslclm.connectors.tls_scan.scanner import ScanOptions, TlsScanner, scan
from sslclm.connectors.tls_scan.source import TlsScanConfig, TlsScanSource
from sslclm.connectors.tls_scan.targets import (
    DEFAULT_MAX_TARGETS,
    TargetSet,
    TargetSpec,
    parse_ports,
    parse_targets,
)
from sslclm.connectors.tls_scan.trust import TrustResult, TrustStore, TrustVerifier

__all__ = [
    "DEFAULT_MAX_TARGETS",
    "ErrorKind",
    "Protocol",
    "ScanOptions",
    "ScanResult",
    "ScanTarget",
    "TargetSet",
    "TargetSpec",
    "TlsScanConfig",
    "TlsScanSource",
    "TlsScanner",
    "TrustError",
    "TrustResult",
    "TrustStore",
    "TrustVerifier",
    "parse_ports",
    "parse_targets",
    "scan",
]
