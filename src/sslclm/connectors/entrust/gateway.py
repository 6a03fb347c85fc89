"""The ``entrust`` CA gateway: certificates from Entrust Certificate Services (ECS Enterprise API v2).

Every call authenticates twice, as ECS requires: with the API client certificate in the TLS handshake
and with the API user and key as HTTP Basic. ``POST /certificates`` answers the certificate at once or,
when an approver must act first, only a tracking id: the request is then *pending* and
:meth:`EntrustGateway.collect` reads ``GET /certificates/{trackingId}`` until it is ``ACTIVE``.
Revocation posts to ``/certificates/{trackingId}/revocations``; listing pages through
``GET /certificates`` for CA sync. See :mod:`.ledger` for the state kept per idempotency key.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, cast

from pydantic import BaseModel

from sslclm.errors import (
    CARejectedError,
    CertificateFormatError,
    ConnectorError,
    InvalidInputError,
    SslClmError,
)
from sslclm.pki import load_certificate
from sslclm.spi import (
    CAGateway,
    Capability,
    CertificatePurpose,
    ChainRequest,
    ChainResult,
    CheckRequest,
    CheckResult,
    CollectRequest,
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
from sslclm.spi.ledger import Ledger, OrderRecord, check_request, key_id, split_pems
from sslclm.spi.rest import Transport, verify_setting

from .config import EntrustConfig

VENDOR = "Entrust"
PENDING = frozenset({"PENDING", "PENDING_QUORUM", "APPROVED", "READY", "REISSUING", "RENEWING"})
ISSUED = frozenset({"ACTIVE", "REISSUED", "RENEWED"})
REASONS: dict[RevocationReason, str] = {
    RevocationReason.UNSPECIFIED: "UNSPECIFIED",
    RevocationReason.KEY_COMPROMISE: "KEY_COMPROMISE",
    RevocationReason.AFFILIATION_CHANGED: "AFFILIATION_CHANGED",
    RevocationReason.SUPERSEDED: "SUPERSEDED",
    RevocationReason.CESSATION_OF_OPERATION: "CESSATION_OF_OPERATION",
}
PROFILE_KEYS = frozenset({"cert_type", "client_id"})
_TRACKING_ID = re.compile(r"^[1-9][0-9]{0,18}$")


class EntrustGateway(CAGateway):
    """Public and private TLS certificates from Entrust Certificate Services."""

    type_key: ClassVar[str] = "entrust"
    display_name: ClassVar[str] = "Entrust Certificate Services"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.ISSUE, Capability.ASYNC_ISSUE, Capability.REVOKE, Capability.LIST}
    )
    Config: ClassVar[type[BaseModel]] = EntrustConfig

    def __init__(self, config: BaseModel, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.settings = cast(EntrustConfig, config)
        lease = timedelta(seconds=2 * self.settings.request_timeout_seconds + 60)
        self.ledger = Ledger(context, VENDOR, lease)

    def _client_files(self) -> tuple[str, str]:
        """The client certificate and key as files, since TLS libraries load them from files only; the
        key file is readable by its owner alone and named after its content, so it is written once."""
        certificate = self.settings.client_certificate.encode()
        key = self.settings.client_key.get_secret_value().encode()
        digest = hashlib.sha256(certificate + key).hexdigest()[:16]
        cert_path = self.context.data_dir / f"entrust-client-{digest}.pem"
        key_path = self.context.data_dir / f"entrust-client-{digest}.key"
        for path, content in ((cert_path, certificate), (key_path, key)):
            if not path.exists():
                _write_private(path, content)
        return str(cert_path), str(key_path)

    def _transport(self) -> Transport:
        return Transport(
            vendor=VENDOR,
            credentials="api_user, api_key and client_certificate",
            base_url=self.settings.api_url,
            headers={"Accept": "application/json", "User-Agent": "sslclm-entrust"},
            verify=verify_setting(self.settings.ca_bundle, self.context.data_dir),
            timeout=self.settings.request_timeout_seconds,
            max_rate_limit_wait=self.settings.max_rate_limit_wait_seconds,
            auth=(self.settings.api_user, self.settings.api_key.get_secret_value()),
            cert=self._client_files(),
        )

    def _pending(self, ref: str) -> IssueResult:
        return IssueResult.pending(ref, retry_after=timedelta(seconds=self.settings.poll_interval_seconds))

    # --- SPI ------------------------------------------------------------------------------------

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        """Reads the API version with both credentials (``GET /application/version``); requests nothing."""
        try:
            version = self._transport().json("GET", "/application/version", action="check the credentials")
        except SslClmError as exc:
            return CheckResult(ok=False, message=exc.message)
        details = {
            "api_url": self.settings.api_url,
            "version": version.get("productVersion") if isinstance(version, dict) else None,
            "cert_type": self.settings.cert_type,
        }
        return CheckResult(ok=True, message="Entrust accepted the API credentials", details=details)

    def get_chain(self, request: ChainRequest = CHAIN) -> ChainResult:
        """The chain of the last certificate issued through this connection (empty before the first):
        ECS chooses the issuing CA per certificate type."""
        return self.ledger.chain()

    def issue(self, request: IssueRequest) -> IssueResult:
        """Request a certificate for exactly ``request.names``.

        Returns the certificate when ECS issues at once, otherwise a pending result whose reference is
        the tracking id. Raises ``CARejectedError`` for a CSR that does not parse, verify or match the
        names, an unknown profile option, or a request ECS refuses (with its message);
        ``CAUnavailableError`` when ECS cannot be reached or rate-limits; a non-retryable
        ``ConnectorError`` when an earlier attempt may have placed the request without an answer.
        """
        key = key_id(request.idempotency_key)
        csr = check_request(request)
        replayed = self.ledger.replay(key, csr.digest)
        if replayed is not None:
            return replayed
        unknown = sorted(set(request.profile) - PROFILE_KEYS)
        if unknown:
            raise CARejectedError(
                f"unknown Entrust profile option {unknown[0]!r} (known: {', '.join(sorted(PROFILE_KEYS))})",
                field=f"profile.{unknown[0]}",
            )
        existing = self.ledger.begin(key, csr)
        if existing is not None:
            return self._poll(key, existing)
        try:
            answer = self._transport().json(
                "POST", "/certificates", action="request the certificate", body=self._body(request, key)
            )
            tracking_id = str(int(answer["trackingId"]))
        except (KeyError, TypeError, ValueError) as exc:
            error = ConnectorError(
                f"request the certificate: {VENDOR} answered without a tracking id ({exc})",
                retryable=False,
                outcome_unknown=True,
            )
            self.ledger.failed(key, csr, error)
            raise error from None
        except SslClmError as exc:
            self.ledger.failed(key, csr, exc)
            raise
        record = self.ledger.submitted(key, tracking_id, csr)
        self.context.logger.info(
            "requested %s certificate %s for %s", VENDOR, tracking_id, ", ".join(sorted(csr.names))
        )
        if answer.get("endEntityCert"):
            return self.ledger.accept(key, record, self._pems(answer), tracking_id)
        return self._pending(tracking_id)

    def _body(self, request: IssueRequest, key: str) -> dict[str, Any]:
        days = request.validity_days or self.settings.default_validity_days
        expiry = (self.context.now() + timedelta(days=days)).date().isoformat()
        both = CertificatePurpose.CLIENT_AUTH in request.purposes
        return {
            "csr": request.csr_pem.decode(),
            "certType": str(request.profile.get("cert_type", self.settings.cert_type)),
            "clientId": int(request.profile.get("client_id", self.settings.client_id)),
            "certExpiryDate": expiry,
            "subjectAltName": list(request.names),
            "eku": "SERVER_AND_CLIENT_AUTH" if both else "SERVER_AUTH",
            "signingAlg": self.settings.signing_alg,
            "ctLog": self.settings.ct_log,
            "tracking": {
                "trackingInfo": f"sslclm:{key[:16]}",
                "requesterName": self.settings.requester_name,
                "requesterEmail": self.settings.requester_email,
                "requesterPhone": self.settings.requester_phone,
            },
        }

    @staticmethod
    def _pems(answer: dict[str, Any]) -> list[bytes]:
        chain = answer.get("chainCerts") or []
        text = "\n".join([str(answer["endEntityCert"]), *(str(pem) for pem in chain)])
        return split_pems(text.encode(), VENDOR)

    def collect(self, request: CollectRequest) -> IssueResult:
        """Ask again about a request that answered pending: pending while it awaits approval, the
        certificate once ``ACTIVE``. Raises ``CARejectedError`` for a reference this connection did not
        hand out for ``request.idempotency_key``, and when ECS declined the request."""
        if not _TRACKING_ID.match(request.pending_ref):
            raise CARejectedError(f"{request.pending_ref!r} is not an ECS tracking id", field="pending_ref")
        key = key_id(request.idempotency_key)
        if self.ledger.issued_ref(key) is not None:
            replayed = self.ledger.replay(key, None)
            assert replayed is not None
            return replayed
        record = self.ledger.order(key)
        if record is None or record.ref != request.pending_ref:
            raise CARejectedError(
                f"tracking id {request.pending_ref} is not pending for this request at this connection",
                field="pending_ref",
            )
        return self._poll(key, self.ledger.usable(key, record))

    def _poll(self, key: str, record: OrderRecord) -> IssueResult:
        assert record.ref is not None
        answer = self._transport().json("GET", f"/certificates/{record.ref}", action="read the certificate")
        status = str(answer.get("status", "")) if isinstance(answer, dict) else ""
        if status in PENDING:
            return self._pending(record.ref)
        if status in ISSUED and answer.get("endEntityCert"):
            return self.ledger.accept(key, record, self._pems(answer), record.ref)
        raise self.ledger.rejected(
            key,
            record,
            f"{VENDOR} request {record.ref} is {status or 'in no known state'}; nothing was issued",
        )

    def revoke(self, request: RevokeRequest) -> RevokeResult:
        """Revoke with the request's reason. Raises ``InvalidInputError`` for a reason ECS does not take,
        ``CARejectedError`` for a certificate this account does not hold; an already revoked one answers
        ``already_revoked=True``."""
        reason = REASONS.get(request.reason)
        if reason is None:
            raise InvalidInputError(
                f"{VENDOR} does not revoke for reason {request.reason.value}", field="reason"
            )
        if request.certificate_pem is not None:
            try:
                serial = int(load_certificate(request.certificate_pem).serial_number)
            except CertificateFormatError as exc:
                raise InvalidInputError(exc.message, field="certificate_pem") from None
        else:
            serial = int(request.serial or "0", 16)
        transport = self._transport()
        found = transport.json(
            "GET", "/certificates", action="find the certificate", params={"serialNumber": f"{serial:X}"}
        )
        rows = found.get("certificates") if isinstance(found, dict) else None
        match = next((r for r in rows or [] if isinstance(r, dict) and r.get("trackingId")), None)
        if match is None:
            raise CARejectedError(
                f"{VENDOR} holds no certificate with serial {serial:x} in this account", field="serial"
            )
        now = self.context.now()
        if match.get("status") == "REVOKED":
            return RevokeResult(serial=f"{serial:x}", revoked_at=now, already_revoked=True)
        body = {"crlReason": reason, "revocationComment": f"revoked through SSL-CLM ({request.reason.value})"}
        transport.call(
            "POST", f"/certificates/{int(match['trackingId'])}/revocations", action="revoke", body=body
        )
        self.context.logger.info("revoked %s certificate %s (serial %x)", VENDOR, match["trackingId"], serial)
        return RevokeResult(serial=f"{serial:x}", revoked_at=now)

    def list_issued(self, request: ListIssuedRequest) -> ListIssuedResult:
        """Active certificates of the account by tracking id, ``limit`` a page (the cursor is the offset)."""
        offset = 0
        if request.cursor is not None:
            if not request.cursor.isdigit():
                raise InvalidInputError("not a cursor from this Entrust connection", field="cursor")
            offset = int(request.cursor)
        limit = min(request.limit, 1000)
        transport = self._transport()
        answer = transport.json(
            "GET",
            "/certificates",
            action="list certificates",
            params={"offset": offset, "limit": limit, "status": "ACTIVE"},
        )
        try:
            rows = list(answer["certificates"])
            total = int(answer["summary"]["total"])
        except (KeyError, TypeError, ValueError):
            raise ConnectorError(
                f"list certificates: {VENDOR} answered an unexpected page", retryable=False
            ) from None
        found: list[IssuedCertificate] = []
        for row in rows:
            if not row.get("trackingId") or not row.get("serialNumber"):
                continue
            pem = self._certificate_pem(transport, str(int(row["trackingId"])), str(row["serialNumber"]))
            info = load_certificate(pem)
            if request.issued_since is not None and info.not_valid_before_utc < request.issued_since:
                continue
            found.append(IssuedCertificate(serial=f"{info.serial_number:x}", certificate_pem=pem))
        next_offset = offset + len(rows)
        more = bool(rows) and next_offset < total
        return ListIssuedResult(certificates=tuple(found), next_cursor=str(next_offset) if more else None)

    def _certificate_pem(self, transport: Transport, tracking_id: str, serial_hex: str) -> bytes:
        try:
            known = self.ledger.known(int(serial_hex.replace(":", ""), 16))
        except ValueError:  # a serial the CA wrote oddly: download instead of looking it up
            known = None
        if known is not None:
            return known[1]
        answer = transport.json("GET", f"/certificates/{tracking_id}", action="read the certificate")
        leaf = self._pems(answer)[0]
        self.ledger.remember(load_certificate(leaf).serial_number, tracking_id, leaf)
        return leaf


def _write_private(path: Path, content: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    descriptor = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)
    tmp.replace(path)
