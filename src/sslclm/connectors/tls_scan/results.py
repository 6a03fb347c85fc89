"""The values a TLS scan consumes and produces: one endpoint in, one frozen result out."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Protocol(StrEnum):
    """How the TLS handshake is reached on a port: directly or after a STARTTLS dialogue."""

    TLS = "tls"
    SMTP = "smtp"
    IMAP = "imap"
    POP3 = "pop3"
    LDAP = "ldap"
    FTP = "ftp"
    POSTGRES = "postgres"


# Ports whose services start in clear text and upgrade; every other port gets a direct handshake.
# 465, 993, 995 and 636 are the implicit-TLS twins of these and need no entry.
STARTTLS_PORTS: dict[int, Protocol] = {
    21: Protocol.FTP,
    25: Protocol.SMTP,
    587: Protocol.SMTP,
    110: Protocol.POP3,
    143: Protocol.IMAP,
    389: Protocol.LDAP,
    5432: Protocol.POSTGRES,
}


def protocol_for_port(port: int) -> Protocol:
    return STARTTLS_PORTS.get(port, Protocol.TLS)


@dataclass(frozen=True, slots=True)
class ScanTarget:
    """One endpoint to scan.

    ``host`` is what the scanner connects to: an IP literal or a DNS name (resolved at scan time).
    ``sni`` is the server name sent in the handshake and the name the certificate is checked
    against; ``None`` sends no SNI and checks the certificate against the IP address.
    """

    host: str
    port: int
    sni: str | None = None
    protocol: Protocol = Protocol.TLS

    @property
    def is_address(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def expected_name(self) -> str:
        """The name the served certificate must match."""
        return self.sni if self.sni is not None else self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        label = f"{host}:{self.port}"
        if self.sni is not None and self.sni != self.host:
            label += f" (sni {self.sni})"
        if self.protocol is not Protocol.TLS:
            label = f"{self.protocol.value}://{label}"
        return label


class ErrorKind(StrEnum):
    """Why an endpoint gave no certificate; stable keys for reports and policies."""

    REFUSED = "refused"
    TIMEOUT = "timeout"
    RESET = "reset"
    CLOSED = "closed"  # the peer closed the connection cleanly before the handshake finished
    UNREACHABLE = "unreachable"
    DNS = "dns"
    NOT_TLS = "not-tls"
    HANDSHAKE = "handshake-failure"
    STARTTLS = "starttls"
    ERROR = "error"


class TrustError(StrEnum):
    """Why a served chain does not build to a trusted root."""

    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    SELF_SIGNED = "self-signed"
    UNTRUSTED_ROOT = "untrusted-root"
    MISSING_INTERMEDIATE = "missing-intermediate"
    EXPIRED_INTERMEDIATE = "expired-intermediate"
    WEAK_ALGORITHM = "weak-algorithm"  # SHA-1/MD5 signature or RSA key under 2048 bits on the path
    INVALID = "invalid"  # anything else path validation rejects: weak algorithm, constraints, EKU, ...
    UNPARSABLE = "unparsable"


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What one endpoint served, or why it served nothing.

    ``chain`` is every certificate the server sent, leaf first, as DER (``leaf`` is ``chain[0]``).
    ``trusted`` says whether that chain builds to a root of the scan's trust store at the scan's
    time; when it does not, ``trust_error_kind``/``trust_error`` say why. ``hostname_match``
    compares the leaf with :attr:`ScanTarget.expected_name` (``None`` when nothing was served).
    Times are seconds; ``handshake_time`` includes any STARTTLS dialogue.
    """

    target: ScanTarget
    scanned_at: datetime
    ok: bool
    address: str | None = None  # the peer address actually connected to
    error_kind: ErrorKind | None = None
    error: str | None = None
    chain: tuple[bytes, ...] = ()
    tls_version: str | None = None
    cipher: str | None = None
    alpn: str | None = None
    trusted: bool = False
    trust_error_kind: TrustError | None = None
    trust_error: str | None = None
    hostname_match: bool | None = None
    connect_time: float | None = None
    handshake_time: float | None = None

    @property
    def leaf(self) -> bytes | None:
        return self.chain[0] if self.chain else None
