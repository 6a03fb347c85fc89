"""The ``digicert`` CA gateway: certificates ordered through DigiCert CertCentral (Services API v2).

An order is placed for the configured product (``POST /order/certificate/{product}``). When CertCentral
can issue at once the answer carries the chain; when the order waits for validation or an approver it is
*pending*, and :meth:`DigiCertGateway.collect` polls ``GET /order/certificate/{id}`` until it is issued,
then downloads ``pem_all``. Revocation files ``PUT /certificate/{id}/revoke`` (skipping approval when so
configured); listing pages through ``GET /order/certificate`` for CA sync. See :mod:`.ledger` for the
state kept per idempotency key.
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
    RevocationReason,
    RevokeRequest,
    RevokeResult,
)
from sslclm.spi.base import CHECK
from sslclm.spi.ca import CHAIN
from sslclm.spi.ledger import CheckedCsr, Ledger, OrderRecord, check_request, key_id, split_pems
from sslclm.spi.rest import Transport, verify_setting

from .config import DigiCertConfig

VENDOR = "DigiCert"
PENDING = frozenset({"pending", "needs_approval", "processing", "waiting_pickup", "reissue_pending"})
REFUSED = frozenset({"rejected", "canceled", "denied"})
REASONS: dict[RevocationReason, str] = {
    RevocationReason.UNSPECIFIED: "unspecified",
    RevocationReason.KEY_COMPROMISE: "key_compromise",
    RevocationReason.AFFILIATION_CHANGED: "affiliation_changed",
    RevocationReason.SUPERSEDED: "superseded",
    RevocationReason.CESSATION_OF_OPERATION: "cessation_of_operation",
}
PROFILE_KEYS = frozenset({"product_name_id", "organization_id", "signature_hash", "server_platform_id"})
_ORDER_ID = re.compile(r"^[1-9][0-9]{0,18}$")


class DigiCertGateway(CAGateway):
    """Public and private TLS certificates from DigiCert CertCentral."""

    type_key: ClassVar[str] = "digicert"
    display_name: ClassVar[str] = "DigiCert CertCentral"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.ISSUE, Capability.ASYNC_ISSUE, Capability.REVOKE, Capability.LIST}
    )
    Config: ClassVar[type[BaseModel]] = DigiCertConfig

    def __init__(self, config: BaseModel, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.settings = cast(DigiCertConfig, config)
        lease = timedelta(seconds=2 * self.settings.request_timeout_seconds + 60)
        self.ledger = Ledger(context, VENDOR, lease)

    def _transport(self) -> Transport:
        return Transport(
            vendor=VENDOR,
            credentials="api_key",
            base_url=self.settings.api_url,
            headers={
                "X-DC-DEVKEY": self.settings.api_key.get_secret_value(),
                "Accept": "application/json",
                "User-Agent": "sslclm-digicert",
            },
            verify=verify_setting(self.settings.ca_bundle, self.context.data_dir),
            timeout=self.settings.request_timeout_seconds,
            max_rate_limit_wait=self.settings.max_rate_limit_wait_seconds,
        )

    def _pending(self, ref: str) -> IssueResult:
        return IssueResult.pending(ref, retry_after=timedelta(seconds=self.settings.poll_interval_seconds))

    # --- SPI ------------------------------------------------------------------------------------

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        """Reads the API key's user (``GET /user/me``); orders nothing."""
        try:
            user = self._transport().json("GET", "/user/me", action="check the API key")
        except SslClmError as exc:
            return CheckResult(ok=False, message=exc.message)
        details = {
            "api_url": self.settings.api_url,
            "user": user.get("username") if isinstance(user, dict) else None,
            "product_name_id": self.settings.product_name_id,
            "organization_id": self.settings.organization_id,
        }
        return CheckResult(ok=True, message="CertCentral accepted the API key", details=details)

    def get_chain(self, request: ChainRequest = CHAIN) -> ChainResult:
        """The chain (intermediate, root) of the last certificate issued through this connection; empty
        before the first. CertCentral has no per-account CA endpoint, since the chain depends on the
        product."""
        return self.ledger.chain()

    def issue(self, request: IssueRequest) -> IssueResult:
        """Order a certificate for exactly ``request.names`` (the first name is the common name).

        Returns the certificate when CertCentral issues at once, otherwise a pending result whose
        reference is the order id. Raises ``CARejectedError`` for a CSR that does not parse, verify or
        match the names, an unknown profile option, or an order CertCentral refuses (with its message);
        ``CAUnavailableError`` when CertCentral cannot be reached or rate-limits; a non-retryable
        ``ConnectorError`` when an earlier attempt may have placed the order without an answer.
        """
        key = key_id(request.idempotency_key)
        csr = check_request(request)
        replayed = self.ledger.replay(key, csr.digest)
        if replayed is not None:
            return replayed
        options = self._options(request.profile)
        existing = self.ledger.begin(key, csr)
        if existing is not None:
            return self._poll(key, existing)
        body = self._order_body(request, csr, options, key)
        product = str(options.get("product_name_id", self.settings.product_name_id))
        try:
            answer = self._transport().json(
                "POST", f"/order/certificate/{product}", action="place the order", body=body
            )
            order_id = str(int(answer["id"]))
        except (KeyError, TypeError, ValueError) as exc:
            error: Exception = ConnectorError(
                f"place the order: {VENDOR} answered without an order id ({exc})",
                retryable=False,
                outcome_unknown=True,
            )
            self.ledger.failed(key, csr, error)
            raise error from None
        except SslClmError as exc:
            self.ledger.failed(key, csr, exc)
            raise
        record = self.ledger.submitted(key, order_id, csr)
        self.context.logger.info("placed %s order %s for %s", VENDOR, order_id, ", ".join(sorted(csr.names)))
        chain = answer.get("certificate_chain")
        if isinstance(chain, list) and chain and answer.get("certificate_id"):
            pems = b"\n".join(str(item.get("pem", "")).encode() for item in chain if isinstance(item, dict))
            certificate_id = str(int(answer["certificate_id"]))
            return self.ledger.accept(key, record, split_pems(pems, VENDOR), certificate_id)
        return self._pending(order_id)

    def _options(self, profile: Any) -> dict[str, Any]:
        unknown = sorted(set(profile) - PROFILE_KEYS)
        if unknown:
            raise CARejectedError(
                f"unknown DigiCert profile option {unknown[0]!r} (known: {', '.join(sorted(PROFILE_KEYS))})",
                field=f"profile.{unknown[0]}",
            )
        return dict(profile)

    def _order_body(
        self, request: IssueRequest, csr: CheckedCsr, options: dict[str, Any], key: str
    ) -> dict[str, Any]:
        names = list(request.names)
        common_name = request.common_name or names[0]
        platform = int(options.get("server_platform_id", self.settings.server_platform_id))
        days = min(request.validity_days or self.settings.default_validity_days, 397)
        body: dict[str, Any] = {
            "certificate": {
                "common_name": common_name,
                "dns_names": [n for n in names if n != common_name],
                "csr": request.csr_pem.decode(),
                "signature_hash": options.get("signature_hash", self.settings.signature_hash),
                "server_platform": {"id": platform},
            },
            "organization": {"id": int(options.get("organization_id", self.settings.organization_id))},
            "order_validity": {"days": days},
            "skip_approval": self.settings.skip_approval,
            "disable_renewal_notifications": True,
            "comments": f"sslclm:{key[:16]}",
        }
        if self.settings.payment_method is not None:
            body["payment_method"] = self.settings.payment_method
        return body

    def collect(self, request: CollectRequest) -> IssueResult:
        """Ask again about an order that answered pending: pending while CertCentral works on it, the
        certificate once issued. Raises ``CARejectedError`` for a reference this connection did not hand
        out for ``request.idempotency_key``, and with CertCentral's note when the order was rejected."""
        if not _ORDER_ID.match(request.pending_ref):
            raise CARejectedError(
                f"{request.pending_ref!r} is not a CertCentral order id", field="pending_ref"
            )
        key = key_id(request.idempotency_key)
        if self.ledger.issued_ref(key) is not None:
            replayed = self.ledger.replay(key, None)
            assert replayed is not None
            return replayed
        record = self.ledger.order(key)
        if record is None or record.ref != request.pending_ref:
            raise CARejectedError(
                f"order {request.pending_ref} is not pending for this request at this connection",
                field="pending_ref",
            )
        return self._poll(key, self.ledger.usable(key, record))

    def _poll(self, key: str, record: OrderRecord) -> IssueResult:
        assert record.ref is not None
        order = self._transport().json("GET", f"/order/certificate/{record.ref}", action="read the order")
        status = str(order.get("status", "")) if isinstance(order, dict) else ""
        if status in PENDING:
            return self._pending(record.ref)
        if status in REFUSED:
            notes = order.get("notes")
            notes = notes if isinstance(notes, list) else []
            texts = [str(n.get("text")) for n in notes if isinstance(n, dict)]
            message = f"{VENDOR} {status} order {record.ref}" + (f": {'; '.join(texts)}" if texts else "")
            raise self.ledger.rejected(key, record, message)
        certificate_id = (order.get("certificate") or {}).get("id") if status == "issued" else None
        if not certificate_id:
            raise ConnectorError(
                f"read the order: {VENDOR} order {record.ref} is {status or 'in no known state'}",
                retryable=False,
            )
        pems = self._download(str(int(certificate_id)))
        return self.ledger.accept(key, record, pems, str(int(certificate_id)))

    def _download(self, certificate_id: str) -> list[bytes]:
        response = self._transport().call(
            "GET", f"/certificate/{certificate_id}/download/format/pem_all", action="download the certificate"
        )
        return split_pems(response.content, VENDOR)

    def revoke(self, request: RevokeRequest) -> RevokeResult:
        """Revoke with the request's reason. Raises ``InvalidInputError`` for a reason CertCentral does not
        take, ``CARejectedError`` for a certificate this account does not hold; an already revoked one
        answers ``already_revoked=True``."""
        reason = REASONS.get(request.reason)
        if reason is None:
            raise InvalidInputError(
                f"{VENDOR} does not revoke for reason {request.reason.value}", field="reason"
            )
        serial = self._serial(request)
        certificate_id, order = self._find(serial)
        now = self.context.now()
        if order.get("status") == "revoked":
            return RevokeResult(serial=f"{serial:x}", revoked_at=now, already_revoked=True)
        body = {
            "reason": reason,
            "comments": f"revoked through SSL-CLM ({request.reason.value})",
            "skip_approval": self.settings.revoke_skip_approval,
        }
        self._transport().call("PUT", f"/certificate/{certificate_id}/revoke", action="revoke", body=body)
        self.context.logger.info("revoked %s certificate %s (serial %x)", VENDOR, certificate_id, serial)
        return RevokeResult(serial=f"{serial:x}", revoked_at=now)

    def _serial(self, request: RevokeRequest) -> int:
        if request.certificate_pem is None:
            return int(request.serial or "0", 16)
        try:
            return int(load_certificate(request.certificate_pem).serial_number)
        except CertificateFormatError as exc:
            raise InvalidInputError(exc.message, field="certificate_pem") from None

    def _find(self, serial: int) -> tuple[str, dict[str, Any]]:
        """The certificate id and order of ``serial``, from this connection's records or CertCentral."""
        transport = self._transport()
        answer = transport.json(
            "GET",
            "/order/certificate",
            action="find the certificate",
            params={"filters[serial_number]": f"{serial:X}", "limit": 2},
        )
        orders = answer.get("orders") if isinstance(answer, dict) else None
        for order in orders or []:
            certificate = order.get("certificate") or {}
            if certificate.get("id") and int(str(certificate.get("serial_number", "0")), 16) == serial:
                return str(int(certificate["id"])), order
        raise CARejectedError(
            f"{VENDOR} holds no certificate with serial {serial:x} in this account", field="serial"
        )

    def list_issued(self, request: ListIssuedRequest) -> ListIssuedResult:
        """Issued orders of the account, oldest first, ``limit`` per page (the cursor is the offset)."""
        offset = 0
        if request.cursor is not None:
            if not request.cursor.isdigit():
                raise InvalidInputError("not a cursor from this DigiCert connection", field="cursor")
            offset = int(request.cursor)
        limit = min(request.limit, 1000)
        answer = self._transport().json(
            "GET",
            "/order/certificate",
            action="list orders",
            params={"offset": offset, "limit": limit, "sort": "id", "filters[status]": "issued"},
        )
        try:
            orders = list(answer["orders"])
            total = int(answer["page"]["total"])
        except (KeyError, TypeError, ValueError):
            raise ConnectorError(
                f"list orders: {VENDOR} answered an unexpected page", retryable=False
            ) from None
        found: list[IssuedCertificate] = []
        for order in orders:
            certificate = order.get("certificate") or {}
            if not certificate.get("id"):
                continue
            serial_hex = str(certificate.get("serial_number", ""))
            pem = self._certificate_pem(str(int(certificate["id"])), serial_hex)
            info = load_certificate(pem)
            since = request.issued_since
            if since is not None and info.not_valid_before_utc < since:
                continue
            found.append(IssuedCertificate(serial=f"{info.serial_number:x}", certificate_pem=pem))
        next_offset = offset + len(orders)
        more = bool(orders) and next_offset < total
        return ListIssuedResult(certificates=tuple(found), next_cursor=str(next_offset) if more else None)

    def _certificate_pem(self, certificate_id: str, serial_hex: str) -> bytes:
        try:
            serial = int(serial_hex, 16)
        except ValueError:
            serial = None
        if serial is not None:
            known = self.ledger.known(serial)
            if known is not None:
                return known[1]
        leaf = self._download(certificate_id)[0]
        self.ledger.remember(load_certificate(leaf).serial_number, certificate_id, leaf)
        return leaf
