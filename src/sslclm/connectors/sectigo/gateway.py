"""The ``sectigo`` CA gateway: certificates from Sectigo Certificate Manager (SCM REST API ``/ssl/v1``).

Every call carries the ``login``, ``password`` and ``customerUri`` headers. The configured certificate
type is looked up in ``/ssl/v1/types`` (which also gives its allowed terms); ``POST /ssl/v1/enroll``
answers an ``sslId``, and ``GET /ssl/v1/collect/{sslId}/x509CO`` answers HTTP 400 with code -183 while
SCM is still processing: the issuance is then *pending* and :meth:`SectigoGateway.collect` asks again.
Revocation posts to ``/ssl/v1/revoke/{sslId}``; listing pages through ``GET /ssl/v1`` for CA sync. See
:mod:`.ledger` for the state kept per idempotency key.
"""

from __future__ import annotations

import re
from datetime import timedelta
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
    RevokeRequest,
    RevokeResult,
)
from sslclm.spi.base import CHECK
from sslclm.spi.ca import CHAIN
from sslclm.spi.ledger import Ledger, OrderRecord, check_request, key_id, split_pems
from sslclm.spi.rest import Transport, verify_setting

from .config import SectigoConfig

VENDOR = "Sectigo"
BEING_PROCESSED = "-183"
PROFILE_KEYS = frozenset({"cert_type", "cert_type_id", "term_days"})
_SSL_ID = re.compile(r"^[1-9][0-9]{0,18}$")


class SectigoGateway(CAGateway):
    """Public and private TLS certificates from Sectigo Certificate Manager."""

    type_key: ClassVar[str] = "sectigo"
    display_name: ClassVar[str] = "Sectigo Certificate Manager"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.ISSUE, Capability.ASYNC_ISSUE, Capability.REVOKE, Capability.LIST}
    )
    Config: ClassVar[type[BaseModel]] = SectigoConfig

    def __init__(self, config: BaseModel, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.settings = cast(SectigoConfig, config)
        lease = timedelta(seconds=2 * self.settings.request_timeout_seconds + 60)
        self.ledger = Ledger(context, VENDOR, lease)

    def _transport(self) -> Transport:
        return Transport(
            vendor=VENDOR,
            credentials="login, password and customer_uri",
            base_url=self.settings.api_url,
            headers={
                "login": self.settings.login,
                "password": self.settings.password.get_secret_value(),
                "customerUri": self.settings.customer_uri,
                "Accept": "application/json",
                "User-Agent": "sslclm-sectigo",
            },
            verify=verify_setting(self.settings.ca_bundle, self.context.data_dir),
            timeout=self.settings.request_timeout_seconds,
            max_rate_limit_wait=self.settings.max_rate_limit_wait_seconds,
        )

    def _pending(self, ref: str) -> IssueResult:
        return IssueResult.pending(ref, retry_after=timedelta(seconds=self.settings.poll_interval_seconds))

    def types(self) -> list[dict[str, Any]]:
        """The SSL certificate types of the account (``id``, ``name``, ``terms``)."""
        answer = self._transport().json("GET", "/ssl/v1/types", action="list certificate types")
        if not isinstance(answer, list):
            raise ConnectorError(f"list certificate types: {VENDOR} answered no list", retryable=False)
        return [t for t in answer if isinstance(t, dict) and "id" in t]

    def _type(self, profile: Any) -> dict[str, Any]:
        wanted_id = profile.get(
            "cert_type_id", None if "cert_type" in profile else self.settings.cert_type_id
        )
        wanted_name = profile.get("cert_type", None if "cert_type_id" in profile else self.settings.cert_type)
        for candidate in self.types():
            if (wanted_id is not None and int(candidate["id"]) == int(wanted_id)) or (
                wanted_name is not None and candidate.get("name") == wanted_name
            ):
                return candidate
        which = wanted_name if wanted_name is not None else f"id {wanted_id}"
        raise CARejectedError(f"{VENDOR} account has no SSL certificate type {which}", field="cert_type")

    def _term(self, cert_type: dict[str, Any], request: IssueRequest) -> int:
        terms = sorted(int(t) for t in cert_type.get("terms") or [])
        if not terms:
            raise ConnectorError(
                f"{VENDOR} certificate type {cert_type.get('name')} lists no terms", retryable=False
            )
        fixed = request.profile.get("term_days", self.settings.term_days)
        if fixed is not None:
            if int(fixed) not in terms:
                raise CARejectedError(f"term {fixed} is not one of {terms} for this type", field="term_days")
            return int(fixed)
        if request.validity_days is None:
            return terms[0]
        fitting = [t for t in terms if t <= request.validity_days]
        if not fitting:
            raise CARejectedError(
                f"no term of this type fits within {request.validity_days} days (terms: {terms})",
                field="validity_days",
            )
        return fitting[-1]

    # --- SPI ------------------------------------------------------------------------------------

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        """Lists the certificate types with the credentials and finds the configured one; enrolls nothing."""
        try:
            types = self.types()
            chosen = self._type({})
        except SslClmError as exc:
            return CheckResult(ok=False, message=exc.message)
        details = {
            "api_url": self.settings.api_url,
            "types": [str(t.get("name")) for t in types],
            "cert_type": chosen.get("name"),
            "terms": chosen.get("terms"),
        }
        return CheckResult(
            ok=True, message=f"Sectigo accepted the login; type '{chosen.get('name')}' found", details=details
        )

    def get_chain(self, request: ChainRequest = CHAIN) -> ChainResult:
        """The chain of the last certificate issued through this connection (empty before the first): the
        issuing CA depends on the certificate type."""
        return self.ledger.chain()

    def issue(self, request: IssueRequest) -> IssueResult:
        """Enroll a certificate for exactly ``request.names`` with the configured type and a term that fits.

        Returns the certificate when SCM has it ready at once, otherwise a pending result whose reference
        is the ``sslId``. Raises ``CARejectedError`` for a CSR that does not parse, verify or match the
        names, an unknown type, term or profile option, or an enrollment SCM refuses (with its message);
        ``CAUnavailableError`` when SCM cannot be reached or rate-limits; a non-retryable
        ``ConnectorError`` when an earlier attempt may have enrolled without an answer.
        """
        key = key_id(request.idempotency_key)
        csr = check_request(request)
        replayed = self.ledger.replay(key, csr.digest)
        if replayed is not None:
            return replayed
        unknown = sorted(set(request.profile) - PROFILE_KEYS)
        if unknown:
            raise CARejectedError(
                f"unknown Sectigo profile option {unknown[0]!r} (known: {', '.join(sorted(PROFILE_KEYS))})",
                field=f"profile.{unknown[0]}",
            )
        existing = self.ledger.order(key)
        if existing is not None:
            # Resume without asking for the types first; begin() below makes the same checks race-safe.
            if existing.csr != csr.digest:
                raise CARejectedError(
                    "this idempotency key was already used for a different CSR", field="idempotency_key"
                )
            return self._poll(key, self.ledger.usable(key, existing))
        cert_type = self._type(request.profile)
        body = {
            "orgId": self.settings.org_id,
            "csr": request.csr_pem.decode().strip(),
            "subjAltNames": ",".join(request.names),
            "certType": int(cert_type["id"]),
            "numberServers": 1,
            "serverType": -1,
            "term": self._term(cert_type, request),
            "comments": f"sslclm:{key[:16]}",
            "externalRequester": self.settings.external_requester or "",
        }
        existing = self.ledger.begin(key, csr)
        if existing is not None:
            return self._poll(key, existing)
        try:
            answer = self._transport().json("POST", "/ssl/v1/enroll", action="enroll", body=body)
            ssl_id = str(int(answer["sslId"]))
        except (KeyError, TypeError, ValueError) as exc:
            error = ConnectorError(
                f"enroll: {VENDOR} answered without an sslId ({exc})", retryable=False, outcome_unknown=True
            )
            self.ledger.failed(key, csr, error)
            raise error from None
        except SslClmError as exc:
            self.ledger.failed(key, csr, exc)
            raise
        record = self.ledger.submitted(key, ssl_id, csr)
        self.context.logger.info(
            "enrolled %s certificate %s for %s", VENDOR, ssl_id, ", ".join(sorted(csr.names))
        )
        return self._poll(key, record)

    def collect(self, request: CollectRequest) -> IssueResult:
        """Ask again about an enrollment that answered pending: pending while SCM answers -183, the
        certificate once ready. Raises ``CARejectedError`` for a reference this connection did not hand
        out for ``request.idempotency_key``, and when SCM declined or rejected the request."""
        if not _SSL_ID.match(request.pending_ref):
            raise CARejectedError(f"{request.pending_ref!r} is not an SCM sslId", field="pending_ref")
        key = key_id(request.idempotency_key)
        if self.ledger.issued_ref(key) is not None:
            replayed = self.ledger.replay(key, None)
            assert replayed is not None
            return replayed
        record = self.ledger.order(key)
        if record is None or record.ref != request.pending_ref:
            raise CARejectedError(
                f"sslId {request.pending_ref} is not pending for this request at this connection",
                field="pending_ref",
            )
        return self._poll(key, self.ledger.usable(key, record))

    def _poll(self, key: str, record: OrderRecord) -> IssueResult:
        assert record.ref is not None
        transport = self._transport()
        try:
            leaf = transport.call("GET", f"/ssl/v1/collect/{record.ref}/x509CO", action="collect")
        except CARejectedError as exc:
            if BEING_PROCESSED in exc.data.get("vendor_codes", ()):
                return self._pending(record.ref)
            if exc.data.get("http_status_code") in (401, 403):
                raise
            raise self.ledger.rejected(key, record, self._refusal(transport, record.ref, exc)) from None
        chain = transport.call("GET", f"/ssl/v1/collect/{record.ref}/x509IOR", action="collect the chain")
        pems = split_pems(leaf.content, VENDOR)[:1] + split_pems(chain.content, VENDOR)
        return self.ledger.accept(key, record, pems, record.ref)

    def _refusal(self, transport: Transport, ssl_id: str, exc: CARejectedError) -> str:
        """Why a certificate cannot be collected, in SCM's words (its status when it gives one)."""
        try:
            details = transport.json("GET", f"/ssl/v1/{ssl_id}", action="read the certificate")
        except SslClmError:
            return exc.message
        status = details.get("status") if isinstance(details, dict) else None
        return f"{VENDOR} certificate {ssl_id} is {status}: {exc.message}" if status else exc.message

    def revoke(self, request: RevokeRequest) -> RevokeResult:
        """Revoke with the request's reason (sent as text, as SCM takes it). Raises ``CARejectedError`` for
        a certificate this account does not hold; an already revoked one answers ``already_revoked=True``."""
        if request.certificate_pem is not None:
            try:
                serial = int(load_certificate(request.certificate_pem).serial_number)
            except CertificateFormatError as exc:
                raise InvalidInputError(exc.message, field="certificate_pem") from None
        else:
            serial = int(request.serial or "0", 16)
        transport = self._transport()
        rows = transport.json(
            "GET", "/ssl/v1", action="find the certificate", params={"serialNumber": f"{serial:X}", "size": 2}
        )
        match = (
            next((r for r in rows if isinstance(r, dict) and r.get("sslId")), None)
            if isinstance(rows, list)
            else None
        )
        if match is None:
            raise CARejectedError(
                f"{VENDOR} holds no certificate with serial {serial:x} in this account", field="serial"
            )
        ssl_id = int(match["sslId"])
        now = self.context.now()
        details = transport.json("GET", f"/ssl/v1/{ssl_id}", action="read the certificate")
        if isinstance(details, dict) and details.get("status") == "Revoked":
            return RevokeResult(serial=f"{serial:x}", revoked_at=now, already_revoked=True)
        reason = f"{request.reason.value}: revoked through SSL-CLM"
        transport.call("POST", f"/ssl/v1/revoke/{ssl_id}", action="revoke", body={"reason": reason})
        self.context.logger.info("revoked %s certificate %s (serial %x)", VENDOR, ssl_id, serial)
        return RevokeResult(serial=f"{serial:x}", revoked_at=now)

    def list_issued(self, request: ListIssuedRequest) -> ListIssuedResult:
        """Issued certificates of the account by sslId, ``limit`` per page (the cursor is the position)."""
        position = 0
        if request.cursor is not None:
            if not request.cursor.isdigit():
                raise InvalidInputError("not a cursor from this Sectigo connection", field="cursor")
            position = int(request.cursor)
        size = min(request.limit, 200)
        transport = self._transport()
        rows = transport.json(
            "GET",
            "/ssl/v1",
            action="list certificates",
            params={"size": size, "position": position, "status": "Issued"},
        )
        if not isinstance(rows, list):
            raise ConnectorError(f"list certificates: {VENDOR} answered no list", retryable=False)
        found: list[IssuedCertificate] = []
        for row in rows:
            if not isinstance(row, dict) or not row.get("sslId") or not row.get("serialNumber"):
                continue
            pem = self._certificate_pem(transport, str(int(row["sslId"])), str(row["serialNumber"]))
            info = load_certificate(pem)
            if request.issued_since is not None and info.not_valid_before_utc < request.issued_since:
                continue
            found.append(IssuedCertificate(serial=f"{info.serial_number:x}", certificate_pem=pem))
        more = len(rows) == size
        return ListIssuedResult(certificates=tuple(found), next_cursor=str(position + size) if more else None)

    def _certificate_pem(self, transport: Transport, ssl_id: str, serial_hex: str) -> bytes:
        try:
            known = self.ledger.known(int(serial_hex.replace(":", ""), 16))
        except ValueError:  # a serial the CA wrote oddly: download instead of looking it up
            known = None
        if known is not None:
            return known[1]
        response = transport.call("GET", f"/ssl/v1/collect/{ssl_id}/x509CO", action="collect")
        leaf = split_pems(response.content, VENDOR)[0]
        self.ledger.remember(load_certificate(leaf).serial_number, ssl_id, leaf)
        return leaf
