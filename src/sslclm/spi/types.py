"""Request and result objects of the SPI.

Every connector method takes one frozen request and returns one frozen result, so fields can be added
later (with defaults) without breaking any connector. Requests validate themselves on construction and
raise :class:`~sslclm.errors.InvalidInputError` naming the field; sequences are stored as tuples and
mappings as read-only views so nothing a connector receives can be changed under another's feet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sslclm.errors import InvalidInputError
from sslclm.spi._frozen import empty_mapping, freeze_mapping, freeze_tuple, require_aware


class IssueStatus(StrEnum):
    ISSUED = "issued"
    PENDING = "pending"


class CertificatePurpose(StrEnum):
    """Extended key usages the platform asks for."""

    SERVER_AUTH = "server-auth"
    CLIENT_AUTH = "client-auth"


class RevocationReason(StrEnum):
    """RFC 5280 CRL reason codes (``removeFromCRL`` is not a reason to revoke and is left out)."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "key-compromise"
    CA_COMPROMISE = "ca-compromise"
    AFFILIATION_CHANGED = "affiliation-changed"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessation-of-operation"
    CERTIFICATE_HOLD = "certificate-hold"
    PRIVILEGE_WITHDRAWN = "privilege-withdrawn"
    AA_COMPROMISE = "aa-compromise"

    @property
    def code(self) -> int:
        """The integer reason code (as in CRLs and the ACME revokeCert ``reason`` field)."""
        return _REASON_CODES[self]

    @classmethod
    def from_code(cls, code: int) -> RevocationReason:
        for reason, value in _REASON_CODES.items():
            if value == code:
                return reason
        raise InvalidInputError(f"unknown revocation reason code {code}", field="reason")


_REASON_CODES: dict[RevocationReason, int] = {
    RevocationReason.UNSPECIFIED: 0,
    RevocationReason.KEY_COMPROMISE: 1,
    RevocationReason.CA_COMPROMISE: 2,
    RevocationReason.AFFILIATION_CHANGED: 3,
    RevocationReason.SUPERSEDED: 4,
    RevocationReason.CESSATION_OF_OPERATION: 5,
    RevocationReason.CERTIFICATE_HOLD: 6,
    RevocationReason.PRIVILEGE_WITHDRAWN: 9,
    RevocationReason.AA_COMPROMISE: 10,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class IssueRequest:
    """Issue one certificate for a CSR.

    ``names`` (DNS names and IP addresses) are authoritative: the platform has already checked them
    against policy, and a gateway puts exactly these in the subjectAltName. ``idempotency_key`` is
    stable across retries of the same logical issuance: a gateway answers a repeated key with the
    certificate (or pending reference) it produced the first time, never with a second certificate.
    """

    csr_pem: bytes = field(repr=False)
    idempotency_key: str
    names: tuple[str, ...] = ()
    common_name: str | None = None
    validity_days: int | None = None  # None: the CA's or profile's default
    purposes: tuple[CertificatePurpose, ...] = (CertificatePurpose.SERVER_AUTH,)
    # Profile options passed through to the gateway (e.g. an ACME profile name, a DigiCert product id).
    profile: Mapping[str, Any] = field(default_factory=empty_mapping)

    def __post_init__(self) -> None:
        freeze_tuple(self, "names")
        freeze_tuple(self, "purposes")
        freeze_mapping(self, "profile")
        if not self.idempotency_key:
            raise InvalidInputError("an idempotency key is required", field="idempotency_key")
        if not self.names and not self.common_name:
            raise InvalidInputError("at least one name or a common name is required", field="names")
        if self.validity_days is not None and self.validity_days < 1:
            raise InvalidInputError("validity must be at least one day", field="validity_days")
        if not self.purposes:
            raise InvalidInputError("at least one purpose is required", field="purposes")


@dataclass(frozen=True, slots=True, kw_only=True)
class IssueResult:
    """Either the issued certificate (with its chain) or a reference to collect it later."""

    status: IssueStatus
    certificate_pem: bytes | None = None
    # Intermediates from the issuing CA upwards, without the leaf; may include the root.
    chain_pem: tuple[bytes, ...] = ()
    serial: str | None = None  # lowercase hex, no separators
    pending_ref: str | None = None
    retry_after: timedelta | None = None

    def __post_init__(self) -> None:
        freeze_tuple(self, "chain_pem")
        if self.status is IssueStatus.ISSUED and not self.certificate_pem:
            raise InvalidInputError("an issued result needs the certificate", field="certificate_pem")
        if self.status is IssueStatus.PENDING and not self.pending_ref:
            raise InvalidInputError("a pending result needs a reference to collect", field="pending_ref")

    @classmethod
    def issued(
        cls, certificate_pem: bytes, chain_pem: tuple[bytes, ...] = (), *, serial: str | None = None
    ) -> IssueResult:
        return cls(
            status=IssueStatus.ISSUED, certificate_pem=certificate_pem, chain_pem=chain_pem, serial=serial
        )

    @classmethod
    def pending(cls, pending_ref: str, retry_after: timedelta | None = None) -> IssueResult:
        return cls(status=IssueStatus.PENDING, pending_ref=pending_ref, retry_after=retry_after)


@dataclass(frozen=True, slots=True, kw_only=True)
class CollectRequest:
    """Ask again for a certificate whose issuance answered *pending*."""

    pending_ref: str
    idempotency_key: str

    def __post_init__(self) -> None:
        if not self.pending_ref:
            raise InvalidInputError("a pending reference is required", field="pending_ref")


@dataclass(frozen=True, slots=True, kw_only=True)
class RevokeRequest:
    """Revoke one certificate, named by its PEM (preferred) or its serial number in hex."""

    certificate_pem: bytes | None = None
    serial: str | None = None
    reason: RevocationReason = RevocationReason.UNSPECIFIED

    def __post_init__(self) -> None:
        if self.certificate_pem is None and not self.serial:
            raise InvalidInputError("name the certificate to revoke", field="serial")
        if self.serial is not None:
            normalized = self.serial.replace(":", "").lower().lstrip("0") or "0"
            try:
                int(normalized, 16)
            except ValueError:
                raise InvalidInputError("the serial must be hexadecimal", field="serial") from None
            object.__setattr__(self, "serial", normalized)


@dataclass(frozen=True, slots=True, kw_only=True)
class RevokeResult:
    serial: str
    revoked_at: datetime
    already_revoked: bool = False  # the certificate was revoked before this call; not an error


@dataclass(frozen=True, slots=True, kw_only=True)
class RenewalInfoRequest:
    """Ask the CA when it suggests renewing this certificate (ACME Renewal Information, RFC 9773)."""

    certificate_pem: bytes
    chain_pem: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        freeze_tuple(self, "chain_pem")


@dataclass(frozen=True, slots=True, kw_only=True)
class RenewalInfoResult:
    window_start: datetime
    window_end: datetime
    explanation_url: str | None = None
    retry_after: timedelta | None = None  # when to ask again

    def __post_init__(self) -> None:
        require_aware(self.window_start, "window_start")
        require_aware(self.window_end, "window_end")
        if self.window_end < self.window_start:
            raise InvalidInputError("the renewal window ends before it starts", field="window_end")


@dataclass(frozen=True, slots=True, kw_only=True)
class ListIssuedRequest:
    """One page of the certificates the CA issued; ``cursor`` comes from the previous page."""

    cursor: str | None = None
    limit: int = 100
    issued_since: datetime | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= 10_000:
            raise InvalidInputError("limit must be between 1 and 10000", field="limit")
        require_aware(self.issued_since, "issued_since")


@dataclass(frozen=True, slots=True, kw_only=True)
class IssuedCertificate:
    serial: str
    certificate_pem: bytes
    revoked_at: datetime | None = None
    revocation_reason: RevocationReason | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ListIssuedResult:
    certificates: tuple[IssuedCertificate, ...] = ()
    next_cursor: str | None = None  # None: this was the last page

    def __post_init__(self) -> None:
        freeze_tuple(self, "certificates")


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainRequest:
    """Ask for the CA's own certificates (issuing CA upwards)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainResult:
    # The issuing CA first, then each parent; the root last if the CA knows it.
    chain_pem: tuple[bytes, ...]
    root_pem: bytes | None = None  # the trust anchor, when the CA has one to offer

    def __post_init__(self) -> None:
        freeze_tuple(self, "chain_pem")


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckRequest:
    """Verify configuration, credentials and reachability, changing nothing."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    ok: bool
    message: str
    details: Mapping[str, Any] = field(default_factory=empty_mapping)

    def __post_init__(self) -> None:
        freeze_mapping(self, "details")
