"""Network TLS scanning: target expansion, the handshake engine, STARTTLS and offline trust checks.

Everything here is database-free: it turns target specs into endpoints and endpoints into
:class:`ScanResult` values. The inventory and the job system decide what to keep.
"""

from __future__ import annotations

from sslclm.connectors.tls_scan.results import ErrorKind, Protocol, ScanResult, ScanTarget, TrustError
from sslclm.connectors.tls_scan.scanner import ScanOptions, TlsScanner, scan
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
    "TlsScanner",
    "TrustError",
    "TrustResult",
    "TrustStore",
    "TrustVerifier",
    "parse_ports",
    "parse_targets",
    "scan",
]
