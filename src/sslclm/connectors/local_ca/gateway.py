"""The ``local`` CA gateway: issues, revokes and lists certificates, and builds the CRL it points to.

State entries (the connector's own key-value store):

- ``ca`` — the sealed root and issuing CA (see :mod:`.authority`);
- ``issue/<sha256 of idempotency key>`` — the certificate answered for that key, so a retried
  issuance returns it instead of signing again;
- ``cert/<serial, 40 hex digits>`` — every issued certificate, for revocation and listing;
- ``revoked/<serial>`` — revocation time and reason; the CRL is built from these entries only.

Serials are zero-padded so key order is numeric order, which gives list_issued a stable cursor.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar, cast

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from pydantic import BaseModel

from sslclm.errors import CARejectedError, ConnectorError, InvalidInputError, SslClmError
from sslclm.pki import certificate_to_pem, sign_csr
from sslclm.pki.ca_tools import (
    RevokedEntry,
    build_crl,
    certificate_serial,
    csr_names,
    normalize_names,
    random_serial,
    subject_name,
)
from sslclm.spi import (
    CAGateway,
    Capability,
    CertificatePurpose,
    ChainRequest,
    ChainResult,
    CheckRequest,
    CheckResult,
    ConnectorContext,
    IssuedCertificate,
    IssueRequest,
    IssueResult,
    ListIssuedRequest,
    ListIssuedResult,
    RevocationReason,
    RevokeRequest,
    RevokeResult,
)
from sslclm.spi.base import CHECK
from sslclm.spi.ca import CHAIN

from .authority import STATE_KEY, Authority, create_record, load_record
from .config import LocalCAConfig

_SERIAL_DIGITS = 40  # 20 octets, the RFC 5280 maximum
_CURSOR = re.compile(r"^[0-9a-f]{40}$")
_MAX_CN = 64
_EKU = {CertificatePurpose.SERVER_AUTH: "serverAuth", CertificatePurpose.CLIENT_AUTH: "clientAuth"}
_SCAN_PAGE = 1000


def _issue_key(request: IssueRequest) -> str:
    return hashlib.sha256(request.idempotency_key.encode()).hexdigest()


def _padded(serial: int) -> str:
    return f"{serial:0{_SERIAL_DIGITS}x}"


def _hex(serial: int) -> str:
    return f"{serial:x}"


def _rejected(exc: InvalidInputError, field: str) -> CARejectedError:
    return CARejectedError(exc.message, field=field)


def _parse_csr(data: bytes) -> x509.CertificateSigningRequest:
    """The CSR, parsed only: ``sign_csr`` verifies its signature before signing, and a second
    verification here would be the most expensive step of an issuance after the signature itself."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_csr(data)
        return x509.load_der_x509_csr(data)
    except (ValueError, UnsupportedAlgorithm):
        raise CARejectedError(
            "the CSR is not a valid PEM or DER certificate signing request", field="csr_pem"
        ) from None


def _asked_names(
    csr: x509.CertificateSigningRequest, names: Sequence[str], wanted: frozenset[str]
) -> frozenset[str]:
    """``csr_names(csr)``. A CSR that spells its names exactly as the request does (the platform's
    own CSRs do) normalises to the request's names, already known: the work is not done twice."""
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        spelled = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
        spelled.update(san.get_values_for_type(x509.DNSName))
    except (x509.ExtensionNotFound, ValueError):
        spelled = None  # csr_names says what it makes of it
    if spelled is not None and spelled == set(names):
        return wanted
    try:
        return csr_names(csr)
    except InvalidInputError as exc:
        raise _rejected(exc, "csr_pem") from None


class LocalCAGateway(CAGateway):
    """The platform's embedded CA: a root and an issuing CA created on first use, keys sealed at rest."""

    type_key: ClassVar[str] = "local"
    display_name: ClassVar[str] = "Built-in local CA"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.ISSUE, Capability.REVOKE, Capability.LIST}
    )
    Config: ClassVar[type[BaseModel]] = LocalCAConfig

    def __init__(self, config: BaseModel, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.settings = cast(LocalCAConfig, config)  # the base class checked the type
        self._authority: Authority | None = None
        self._lock = threading.Lock()

    # --- the hierarchy --------------------------------------------------------------------------

    def _load(self) -> Authority:
        """The hierarchy, created on first use; cached for the life of this instance."""
        with self._lock:
            if self._authority is None:
                state = self.context.state
                raw = state.get(STATE_KEY)
                if raw is None:
                    fresh = create_record(self.settings, self.context, self.context.now())
                    winner = state.put_if_absent(STATE_KEY, fresh)
                    raw = fresh if winner is None else winner
                    if winner is None:
                        self.context.logger.info(
                            "created local CA hierarchy for %s", self.context.connection_id
                        )
                self._authority = load_record(raw, self.context)
            return self._authority

    # --- SPI ------------------------------------------------------------------------------------

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        """Whether the stored hierarchy can be unsealed and is in date; creates nothing."""
        raw = self.context.state.get(STATE_KEY)
        if raw is None:
            return CheckResult(
                ok=True,
                message="the root and issuing CA will be created on first use",
                details={"key_type": self.settings.key_type},
            )
        try:
            authority = load_record(raw, self.context)
        except ConnectorError as exc:
            return CheckResult(ok=False, message=exc.message)
        details = authority.describe()
        now = self.context.now()
        expires = authority.issuing_certificate.not_valid_after_utc
        if expires <= now:
            return CheckResult(
                ok=False, message=f"the issuing CA expired on {expires:%Y-%m-%d}", details=details
            )
        return CheckResult(ok=True, message=f"issuing CA valid until {expires:%Y-%m-%d}", details=details)

    def get_chain(self, request: ChainRequest = CHAIN) -> ChainResult:
        """The issuing CA and the root (creating them on first use); the root is the trust anchor."""
        authority = self._load()
        return ChainResult(chain_pem=(authority.issuing_pem, authority.root_pem), root_pem=authority.root_pem)

    def issue(self, request: IssueRequest) -> IssueResult:
        """Sign the CSR for exactly ``request.names``.

        Raises ``CARejectedError`` when the CSR does not parse or its signature does not verify, when
        the CSR asks for other names than the request, when the validity exceeds the configured
        maximum, or when the idempotency key was used before for a different CSR.
        """
        authority = self._load()
        key_id = _issue_key(request)
        previous = self.context.state.get(f"issue/{key_id}")
        return self._issue(request, authority, key_id, previous)

    def issue_many(self, requests: Sequence[IssueRequest]) -> list[IssueResult | SslClmError]:
        """``issue`` for each request, reading the earlier answers of all of them in one call.

        For the platform's batch renewals: each entry is the result, or the error ``issue`` would
        have raised for that request (a refusal of one request does not stop the others).
        """
        authority = self._load()
        key_ids = [_issue_key(request) for request in requests]
        previous = self.context.state.get_many([f"issue/{key_id}" for key_id in key_ids])
        results: list[IssueResult | SslClmError] = []
        for request, key_id in zip(requests, key_ids, strict=True):
            try:
                results.append(self._issue(request, authority, key_id, previous.get(f"issue/{key_id}")))
            except SslClmError as exc:
                results.append(exc)
        return results

    def _issue(
        self, request: IssueRequest, authority: Authority, key_id: str, previous: bytes | None
    ) -> IssueResult:
        state = self.context.state
        csr_digest = hashlib.sha256(request.csr_pem.strip()).hexdigest()
        if previous is not None:
            return self._replay(previous, key_id, csr_digest, authority)

        csr = _parse_csr(request.csr_pem)
        try:
            wanted = normalize_names(request.names)
        except InvalidInputError as exc:
            raise _rejected(exc, "names") from None
        asked = _asked_names(csr, request.names, wanted)
        if asked != wanted:
            raise CARejectedError(
                f"the CSR asks for {sorted(asked) or 'no names'} but the request is for {sorted(wanted)}",
                field="names",
            )
        validity = request.validity_days or self.settings.default_validity_days
        if validity > self.settings.max_validity_days:
            raise CARejectedError(
                f"validity of {validity} days exceeds this CA's maximum of {self.settings.max_validity_days}",
                field="validity_days",
            )
        common_name = request.common_name
        if common_name is None and request.names and len(request.names[0]) <= _MAX_CN:
            common_name = request.names[0]
        try:
            subject = subject_name(common_name)
        except InvalidInputError as exc:
            raise _rejected(exc, "common_name") from None
        now = self.context.now()
        try:
            certificate = sign_csr(
                authority.issuing_key,
                authority.issuing_certificate,
                csr,
                valid_days=validity,
                extended_key_usage=tuple(_EKU[p] for p in request.purposes),
                subject=subject,
                crl_urls=(self.settings.crl_url,) if self.settings.crl_url else (),
                serial_number=random_serial(),
                now=now,
            )
        except InvalidInputError as exc:
            raise _rejected(exc, "csr_pem" if exc.field == "csr" else exc.field or "csr_pem") from None

        certificate_pem = certificate_to_pem(certificate)
        serial = certificate.serial_number
        record = {"serial": _hex(serial), "csr_sha256": csr_digest, "certificate": certificate_pem.decode()}
        winner = state.put_if_absent(f"issue/{key_id}", json.dumps(record).encode())
        if winner is not None:
            # Another worker issued for the same key in the meantime; its certificate is the answer
            # and ours was never handed out.
            return self._replay(winner, key_id, csr_digest, authority)
        self._record_certificate(serial, certificate_pem, key_id, now)
        return IssueResult.issued(certificate_pem, (authority.issuing_pem,), serial=_hex(serial))

    def _record_certificate(self, serial: int, certificate_pem: bytes, key_id: str, now: datetime) -> None:
        entry = {"certificate": certificate_pem.decode(), "issued_at": now.isoformat(), "issue_key": key_id}
        self.context.state.put_if_absent(f"cert/{_padded(serial)}", json.dumps(entry).encode())

    def _replay(self, raw: bytes, key_id: str, csr_digest: str, authority: Authority) -> IssueResult:
        record = json.loads(raw)
        if record["csr_sha256"] != csr_digest:
            raise CARejectedError(
                "this idempotency key was already used for a different CSR", field="idempotency_key"
            )
        serial = int(record["serial"], 16)
        certificate_pem = record["certificate"].encode()
        # A worker that died between the two writes left no certificate entry; complete it now.
        if self.context.state.get(f"cert/{_padded(serial)}") is None:
            self._record_certificate(serial, certificate_pem, key_id, self.context.now())
        return IssueResult.issued(certificate_pem, (authority.issuing_pem,), serial=record["serial"])

    def revoke(self, request: RevokeRequest) -> RevokeResult:
        """Record the revocation; the next CRL lists it.

        Raises ``CARejectedError`` for a certificate this CA did not issue or a serial it does not
        know. Revoking twice answers ``already_revoked=True`` with the first revocation's time.
        """
        authority = self._load()
        if request.certificate_pem is not None:
            try:
                serial, issuer = certificate_serial(request.certificate_pem)
            except InvalidInputError as exc:
                raise _rejected(exc, "certificate_pem") from None
            if issuer != authority.issuing_certificate.subject.rfc4514_string():
                raise CARejectedError("the certificate was not issued by this CA", field="certificate_pem")
        else:
            # The request guarantees a hexadecimal serial when there is no certificate.
            serial = int(request.serial or "0", 16)
        padded = _padded(serial)
        state = self.context.state
        if state.get(f"cert/{padded}") is None:
            raise CARejectedError(f"serial {_hex(serial)} was not issued by this CA", field="serial")
        now = self.context.now()
        entry = {"revoked_at": now.isoformat(), "reason": request.reason.value}
        winner = state.put_if_absent(f"revoked/{padded}", json.dumps(entry).encode())
        if winner is not None:
            first = datetime.fromisoformat(json.loads(winner)["revoked_at"])
            return RevokeResult(serial=_hex(serial), revoked_at=first, already_revoked=True)
        self.context.logger.info("revoked serial %s (%s)", _hex(serial), request.reason.value)
        return RevokeResult(serial=_hex(serial), revoked_at=now)

    def list_issued(self, request: ListIssuedRequest) -> ListIssuedResult:
        """Issued certificates in serial-number order, with their revocation status.

        Raises ``InvalidInputError`` (field ``cursor``) for a cursor this gateway did not hand out.
        """
        after = None
        if request.cursor is not None:
            if not _CURSOR.match(request.cursor):
                raise InvalidInputError("not a cursor from this CA", field="cursor")
            after = f"cert/{request.cursor}"
        state = self.context.state
        rows = state.scan("cert/", after=after, limit=request.limit)
        found = []
        for key, raw in rows:
            entry = json.loads(raw)
            since = request.issued_since
            if since is not None and datetime.fromisoformat(entry["issued_at"]) < since:
                continue
            padded = key.removeprefix("cert/")
            revoked = state.get(f"revoked/{padded}")
            revocation = json.loads(revoked) if revoked is not None else None
            found.append(
                IssuedCertificate(
                    serial=_hex(int(padded, 16)),
                    certificate_pem=entry["certificate"].encode(),
                    revoked_at=datetime.fromisoformat(revocation["revoked_at"]) if revocation else None,
                    revocation_reason=RevocationReason(revocation["reason"]) if revocation else None,
                )
            )
        next_cursor = rows[-1][0].removeprefix("cert/") if len(rows) == request.limit else None
        return ListIssuedResult(certificates=tuple(found), next_cursor=next_cursor)

    # --- beyond the SPI: what the platform serves over HTTP --------------------------------------

    def crl_der(self) -> bytes:
        """A freshly signed DER CRL of every revoked certificate, for the URL in ``crl_url``.

        Signed by the issuing CA (the issuer of the certificates that point to it). The CRL number is
        the signing time in microseconds, so it grows with every CRL without a shared counter.
        """
        authority = self._load()
        entries = []
        after: str | None = None
        while True:
            rows = self.context.state.scan("revoked/", after=after, limit=_SCAN_PAGE)
            for key, raw in rows:
                entry = json.loads(raw)
                entries.append(
                    RevokedEntry(
                        serial=int(key.removeprefix("revoked/"), 16),
                        revoked_at=datetime.fromisoformat(entry["revoked_at"]),
                        reason_code=RevocationReason(entry["reason"]).code,
                    )
                )
            if len(rows) < _SCAN_PAGE:
                break
            after = rows[-1][0]
        now = self.context.now()
        return build_crl(
            entries,
            issuer_certificate=authority.issuing_certificate,
            issuer_key=authority.issuing_key,
            this_update=now,
            next_update=now + timedelta(hours=self.settings.crl_validity_hours),
            crl_number=int(now.timestamp() * 1_000_000),
        )

    def describe(self) -> dict[str, Any]:
        """Facts about the hierarchy for display (subjects, expiry, fingerprints); creates it if needed."""
        return self._load().describe()
