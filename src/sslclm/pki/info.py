"""Plain facts extracted from one X.509 certificate."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """Everything the inventory records about a certificate, independent of where it was found.

    Datetimes are timezone-aware UTC. SANs are typed strings: ``DNS:example.com``,
    ``IP:192.0.2.1``, ``email:a@example.com``, ``URI:https://...``, ``other:...``.
    """

    fingerprint_sha256: str  # lowercase hex of SHA-256 over the DER
    fingerprint_sha1: str
    serial: str  # lowercase hex, no leading zeros beyond one
    subject: str  # RFC 4514 string
    issuer: str  # RFC 4514 string
    common_name: str | None
    not_before: datetime
    not_after: datetime
    key_algorithm: str  # RSA, EC, Ed25519, Ed448, DSA
    key_size: int | None  # bits
    key_curve: str | None  # e.g. secp256r1
    signature_algorithm: str  # e.g. sha256WithRSAEncryption, ecdsa-with-SHA256
    sans: tuple[str, ...] = ()
    key_usage: tuple[str, ...] = ()  # digital_signature, key_encipherment, ...
    extended_key_usage: tuple[str, ...] = ()  # serverAuth, clientAuth, or dotted OIDs
    is_ca: bool = False
    path_length: int | None = None
    authority_key_id: str | None = None  # lowercase hex
    subject_key_id: str | None = None
    crl_distribution_points: tuple[str, ...] = ()
    ocsp_urls: tuple[str, ...] = ()
    ca_issuer_urls: tuple[str, ...] = ()
    self_signed: bool = False
    public_key_sha256: str = ""  # SHA-256 of the SubjectPublicKeyInfo DER, to match private keys
    der: bytes = field(default=b"", repr=False)

    @property
    def dns_names(self) -> tuple[str, ...]:
        return tuple(s[4:] for s in self.sans if s.startswith("DNS:"))
