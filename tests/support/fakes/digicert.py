"""A fake DigiCert CertCentral Services API v2 (``/services/v2``), following the documented endpoints.

- every request carries the API key in ``X-DC-DEVKEY``; a missing or unknown key is 401 with
  ``{"errors": [{"code": "access_denied", "message": ...}]}``, the shape of every CertCentral error;
- ``GET /user/me`` — the key's user (what an integration checks credentials with);
- ``POST /order/certificate/{product_name_id}`` — ``certificate`` (``common_name``, ``dns_names``, ``csr``,
  ``signature_hash``, ``server_platform``), ``organization.id``, ``order_validity.days`` or
  ``validity_years``, ``skip_approval``, ``comments``. 201 with the order ``id`` and, when the order
  needs approval or validation, ``requests: [{id, status: "pending"}]``; otherwise ``certificate_id``
  and ``certificate_chain`` (leaf, intermediate, root PEMs) at once;
- ``GET /order/certificate/{order_id}`` — the order: ``status`` (``pending``, ``needs_approval``,
  ``issued``, ``rejected``, ``revoked``) and ``certificate`` (``id``, ``serial_number``, names);
- ``GET /certificate/{certificate_id}/download/format/pem_all`` — leaf, intermediate and root;
- ``PUT /certificate/{certificate_id}/revoke`` — ``reason``, ``comments``, ``skip_approval``: 204 when
  revoked at once, 201 with a pending revocation request otherwise;
- ``GET /order/certificate?offset=&limit=&sort=`` — ``orders`` and ``page`` (``total``, ``limit``,
  ``offset``); filters ``filters[status]`` and ``filters[serial_number]``;
- 429 ``request_limit_exceeded`` with ``Retry-After`` when rate-limited.

``pending_polls`` sets how many order status reads an order needing approval stays pending before the
fake approves it by itself (0: only :meth:`approve` does), so a conformance run can collect unattended.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from tests.support.fakes.base import App, FakeCA, Request, Response, now_iso, pem

_ORDER = re.compile(r"^/services/v2/order/certificate/(\d+)$")
_NEW_ORDER = re.compile(r"^/services/v2/order/certificate/([a-z0-9_]+)$")
_DOWNLOAD = re.compile(r"^/services/v2/certificate/(\d+)/download/format/([a-z_]+)$")
_REVOKE = re.compile(r"^/services/v2/certificate/(\d+)/revoke$")
REASONS = {"unspecified", "key_compromise", "affiliation_changed", "superseded", "cessation_of_operation"}


@dataclass
class Order:
    order_id: int
    product: str
    common_name: str
    dns_names: list[str]
    csr: x509.CertificateSigningRequest
    days: int
    status: str = "pending"
    certificate_id: int | None = None
    certificate: x509.Certificate | None = None
    polls: int = 0
    note: str = ""
    revocation: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=now_iso)


class DigiCertApp(App):
    name = "digicert"

    def __init__(
        self,
        ca: FakeCA,
        *,
        api_key: str,
        organization_id: int = 112233,
        products: tuple[str, ...] = ("ssl_basic", "ssl_plus", "private_ssl_plus"),
        approval_required: bool = False,
        pending_polls: int = 0,
    ) -> None:
        super().__init__()
        self.ca = ca
        self.api_key = api_key
        self.organization_id = organization_id
        self.products = products
        self.approval_required = approval_required
        self.pending_polls = pending_polls
        self.orders: dict[int, Order] = {}
        self._order_ids = itertools.count(40_000_001)
        self._certificate_ids = itertools.count(70_000_001)

    def error(self, status: int, message: str, code: str | None = None) -> Response:
        default = {
            400: "invalid_input",
            401: "access_denied",
            404: "not_found",
            429: "request_limit_exceeded",
        }
        return Response.json(
            status, {"errors": [{"code": code or default.get(status, "server_error"), "message": message}]}
        )

    # --- the account administrator's side ---------------------------------------------------------

    def approve(self, order_id: int) -> None:
        self._issue(self.orders[order_id])

    def reject(self, order_id: int, note: str) -> None:
        order = self.orders[order_id]
        order.status, order.note = "rejected", note

    def _issue(self, order: Order) -> None:
        names = list(dict.fromkeys([order.common_name, *order.dns_names]))
        order.certificate = self.ca.issue(order.csr, names, common_name=order.common_name, days=order.days)
        order.certificate_id = next(self._certificate_ids)
        order.status = "issued"

    # --- the API ----------------------------------------------------------------------------------------

    def route(self, request: Request) -> Response:
        if request.headers.get("X-DC-DEVKEY") != self.api_key:
            return self.error(401, "The API key provided is not valid.", "access_denied")
        path, method = request.path.rstrip("/"), request.method
        if path == "/services/v2/user/me" and method == "GET":
            return Response.json(
                200, {"id": 9001, "username": "api-user", "account_id": 5550001, "status": "active"}
            )
        if path == "/services/v2/order/certificate" and method == "GET":
            return self._list(request)
        if (match := _ORDER.match(path)) and method == "GET":
            return self._order(int(match.group(1)))
        if (match := _NEW_ORDER.match(path)) and method == "POST":
            return self._new_order(match.group(1), request)
        if (match := _DOWNLOAD.match(path)) and method == "GET":
            return self._download(int(match.group(1)), match.group(2))
        if (match := _REVOKE.match(path)) and method == "PUT":
            return self._revoke(int(match.group(1)), request)
        return self.error(404, "The requested resource could not be found.")

    def _new_order(self, product: str, request: Request) -> Response:
        if product not in self.products:
            return self.error(400, f"Product '{product}' is not enabled for this account.", "invalid_product")
        try:
            body = request.json()
            certificate = body["certificate"]
            organization = int(body["organization"]["id"])
        except (ValueError, KeyError, TypeError):
            return self.error(400, "The request body is not a valid order.", "invalid_input")
        if organization != self.organization_id:
            return self.error(400, "Organization not found.", "invalid_organization")
        try:
            csr = self.ca.check_csr(str(certificate.get("csr", "")))
        except ValueError as exc:
            return self.error(400, f"Invalid CSR: {exc}", "invalid_csr")
        common_name = str(certificate.get("common_name") or "")
        if not common_name:
            return self.error(400, "Common name is required.", "invalid_common_name")
        days = int((body.get("order_validity") or {}).get("days") or 365 * int(body.get("validity_years", 1)))
        order = Order(
            order_id=next(self._order_ids),
            product=product,
            common_name=common_name,
            dns_names=[str(n) for n in certificate.get("dns_names") or []],
            csr=csr,
            days=min(days, 397),
        )
        self.orders[order.order_id] = order
        if self.approval_required and not body.get("skip_approval"):
            order.status = "needs_approval"
            return Response.json(
                201, {"id": order.order_id, "requests": [{"id": order.order_id + 1, "status": "pending"}]}
            )
        self._issue(order)
        assert order.certificate is not None
        chain = [
            {"subject_common_name": order.common_name, "pem": pem(order.certificate)},
            {"subject_common_name": "Fake DigiCert Issuing CA", "pem": self.ca.issuing_pem},
            {"subject_common_name": "Fake DigiCert Root CA", "pem": self.ca.root_pem},
        ]
        return Response.json(
            201, {"id": order.order_id, "certificate_id": order.certificate_id, "certificate_chain": chain}
        )

    def _view(self, order: Order) -> dict[str, Any]:
        certificate: dict[str, Any] = {
            "common_name": order.common_name,
            "dns_names": order.dns_names,
            "signature_hash": "sha256",
        }
        if order.certificate is not None:
            certificate |= {
                "id": order.certificate_id,
                "serial_number": f"{order.certificate.serial_number:X}",
                "valid_till": order.certificate.not_valid_after_utc.strftime("%Y-%m-%d"),
            }
        view: dict[str, Any] = {
            "id": order.order_id,
            "status": order.status,
            "certificate": certificate,
            "product": {"name_id": order.product},
            "organization": {"id": self.organization_id},
            "date_created": order.created,
        }
        if order.note:
            view["notes"] = [{"text": order.note}]
        return view

    def _order(self, order_id: int) -> Response:
        order = self.orders.get(order_id)
        if order is None:
            return self.error(404, "Order not found.", "not_found")
        if order.status == "needs_approval" and self.pending_polls:
            order.polls += 1
            if order.polls > self.pending_polls:
                self._issue(order)
        return Response.json(200, self._view(order))

    def _by_certificate(self, certificate_id: int) -> Order | None:
        return next((o for o in self.orders.values() if o.certificate_id == certificate_id), None)

    def _download(self, certificate_id: int, form: str) -> Response:
        order = self._by_certificate(certificate_id)
        if order is None or order.certificate is None:
            return self.error(404, "Certificate not found.", "not_found")
        if form == "pem_all":
            body = pem(order.certificate) + self.ca.issuing_pem + self.ca.root_pem
        elif form == "pem_noroot":
            body = pem(order.certificate) + self.ca.issuing_pem
        else:
            return self.error(400, f"Unsupported format '{form}'.", "invalid_format")
        return Response.text(200, body, "application/x-pem-file")

    def _revoke(self, certificate_id: int, request: Request) -> Response:
        order = self._by_certificate(certificate_id)
        if order is None:
            return self.error(404, "Certificate not found.", "not_found")
        body = request.json() or {}
        reason = body.get("reason", "unspecified")
        if reason not in REASONS:
            return self.error(400, f"Invalid revocation reason '{reason}'.", "invalid_reason")
        if order.status == "revoked":
            return self.error(400, "The certificate is already revoked.", "invalid_status")
        order.revocation = {"reason": reason, "comments": body.get("comments", ""), "date": now_iso()}
        if body.get("skip_approval"):
            order.status = "revoked"
            return Response(204)
        return Response.json(
            201, {"id": order.order_id + 7, "type": "revoke", "status": "pending", "date": now_iso()}
        )

    def _list(self, request: Request) -> Response:
        try:
            offset = int(request.arg("offset", "0") or 0)
            limit = min(int(request.arg("limit", "1000") or 1000), 1000)
        except ValueError:
            return self.error(400, "offset and limit must be numbers.", "invalid_input")
        rows = sorted(self.orders.values(), key=lambda o: o.order_id)
        if request.arg("sort") == "-id":
            rows.reverse()
        status = request.arg("filters[status]")
        if status:
            rows = [o for o in rows if o.status == status]
        serial = request.arg("filters[serial_number]")
        if serial:
            rows = [
                o
                for o in rows
                if o.certificate is not None and o.certificate.serial_number == int(serial, 16)
            ]
        page = rows[offset : offset + limit]
        return Response.json(
            200,
            {
                "orders": [self._view(o) for o in page],
                "page": {"total": len(rows), "limit": limit, "offset": offset},
            },
        )
