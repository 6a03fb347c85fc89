"""A fake Entrust Certificate Services (ECS) Enterprise API v2, following the documented endpoints.

Authentication is both a TLS client certificate (the API certificate registered in the ECS portal; the
listener refuses a handshake without one) and HTTP Basic with the API user and key. Errors have the
ECS shape ``{"status": N, "errors": [{"status": N, "message": ...}]}``.

- ``GET /v2/application/version`` — the cheap call integrations use to check credentials;
- ``POST /v2/certificates`` — ``csr``, ``certType``, ``certExpiryDate`` or ``certLifetime``,
  ``subjectAltName``, ``eku``, ``signingAlg``, ``ctLog``, ``org``, ``clientId``, ``tracking``. 201 with
  ``trackingId`` and, when issued at once, ``endEntityCert``, ``chainCerts``, ``serialNumber``
  (hexadecimal) and ``expiresAfter``; a request needing approval answers only the ``trackingId``;
- ``GET /v2/certificates/{trackingId}`` — the certificate with ``status`` (``PENDING``, ``ACTIVE``,
  ``DECLINED``, ``REVOKED``, ...), ``endEntityCert``, ``chainCerts``, ``serialNumber``;
- ``GET /v2/certificates?limit=&offset=&serialNumber=`` — ``certificates`` and ``summary`` (``total``,
  ``offset``, ``limit``), ordered by tracking id;
- ``POST /v2/certificates/{trackingId}/revocations`` — ``crlReason``, ``revocationComment``;
- 429 with ``Retry-After`` when rate-limited.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.support.fakes.base import App, FakeCA, Request, Response, now_iso, pem

_ONE = re.compile(r"^/v2/certificates/(\d+)$")
_REVOKE = re.compile(r"^/v2/certificates/(\d+)/revocations$")
CRL_REASONS = {"KEY_COMPROMISE", "AFFILIATION_CHANGED", "SUPERSEDED", "CESSATION_OF_OPERATION", "UNSPECIFIED"}


@dataclass
class EcsCertificate:
    tracking_id: int
    cert_type: str
    csr: x509.CertificateSigningRequest
    names: list[str]
    days: int
    status: str = "PENDING"
    certificate: x509.Certificate | None = None
    polls: int = 0
    revocation: dict[str, Any] = field(default_factory=dict)
    issued_at: str = ""


class EntrustApp(App):
    name = "entrust"

    def __init__(
        self,
        ca: FakeCA,
        *,
        username: str,
        api_key: str,
        client_certificate_der: bytes,
        cert_types: tuple[str, ...] = ("STANDARD_SSL", "ADVANTAGE_SSL", "PRIVATE_SSL"),
        approval_required: bool = False,
        pending_polls: int = 0,
    ) -> None:
        super().__init__()
        self.ca = ca
        self.username = username
        self.api_key = api_key
        self.client_certificate_der = client_certificate_der
        self.cert_types = cert_types
        self.approval_required = approval_required
        self.pending_polls = pending_polls
        self.certificates: dict[int, EcsCertificate] = {}
        self._ids = itertools.count(3_100_001)

    def error(self, status: int, message: str) -> Response:
        return Response.json(status, {"status": status, "errors": [{"status": status, "message": message}]})

    # --- the ECS portal's approver ------------------------------------------------------------------

    def approve(self, tracking_id: int) -> None:
        self._issue(self.certificates[tracking_id])

    def decline(self, tracking_id: int) -> None:
        self.certificates[tracking_id].status = "DECLINED"

    def _issue(self, row: EcsCertificate) -> None:
        row.certificate = self.ca.issue(row.csr, row.names, days=row.days)
        row.status, row.issued_at = "ACTIVE", now_iso()

    # --- the API ----------------------------------------------------------------------------------------

    def route(self, request: Request) -> Response:
        if request.peer_certificate != self.client_certificate_der:
            return self.error(401, "The client certificate is not registered for API access.")
        if request.basic_auth() != (self.username, self.api_key):
            return self.error(401, "Invalid API username or API key.")
        path, method = request.path.rstrip("/"), request.method
        if path == "/v2/application/version" and method == "GET":
            return Response.json(
                200, {"productName": "Entrust Certificate Services API", "productVersion": "2.1.0"}
            )
        if path == "/v2/certificates" and method == "POST":
            return self._new(request)
        if path == "/v2/certificates" and method == "GET":
            return self._list(request)
        if (match := _ONE.match(path)) and method == "GET":
            return self._get(int(match.group(1)))
        if (match := _REVOKE.match(path)) and method == "POST":
            return self._revoke(int(match.group(1)), request)
        return self.error(404, "Resource not found.")

    def _view(self, row: EcsCertificate, *, full: bool) -> dict[str, Any]:
        view: dict[str, Any] = {
            "trackingId": row.tracking_id,
            "status": row.status,
            "certType": row.cert_type,
            "uri": f"/v2/certificates/{row.tracking_id}",
        }
        if row.certificate is not None:
            view |= {
                "serialNumber": f"{row.certificate.serial_number:X}",
                "dn": row.certificate.subject.rfc4514_string(),
                "issueDateTime": row.issued_at,
                "expiresAfter": row.certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            if full:
                view |= {
                    "endEntityCert": pem(row.certificate),
                    "chainCerts": [self.ca.issuing_pem, self.ca.root_pem],
                }
        if full:
            view["subjectAltName"] = [{"type": "DNS", "value": name} for name in row.names]
            view["csr"] = row.csr.public_bytes(Encoding.PEM).decode()
        return view

    def _new(self, request: Request) -> Response:
        try:
            body = request.json()
            cert_type = str(body["certType"])
            csr_text = str(body["csr"])
        except (ValueError, KeyError, TypeError):
            return self.error(400, "csr and certType are required.")
        if cert_type not in self.cert_types:
            return self.error(400, f"certType {cert_type} is not available for this account.")
        try:
            csr = self.ca.check_csr(csr_text)
        except ValueError as exc:
            return self.error(400, f"The CSR is invalid: {exc}")
        names = [str(n) for n in body.get("subjectAltName") or []]
        if not names:
            try:
                san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                names = list(san.get_values_for_type(x509.DNSName))
            except x509.ExtensionNotFound:
                return self.error(400, "No subject alternative name was given.")
        lifetime = {"P1Y": 365, "P2Y": 730, "P3Y": 1095}.get(str(body.get("certLifetime")), 365)
        row = EcsCertificate(next(self._ids), cert_type, csr, names, lifetime)
        self.certificates[row.tracking_id] = row
        if self.approval_required:
            return Response.json(201, {"trackingId": row.tracking_id})
        self._issue(row)
        view = self._view(row, full=True)
        return Response.json(
            201,
            {
                k: view[k]
                for k in ("trackingId", "endEntityCert", "chainCerts", "serialNumber", "expiresAfter")
            },
        )

    def _get(self, tracking_id: int) -> Response:
        row = self.certificates.get(tracking_id)
        if row is None:
            return self.error(404, f"Certificate with tracking id {tracking_id} was not found.")
        if row.status == "PENDING" and self.pending_polls:
            row.polls += 1
            if row.polls > self.pending_polls:
                self._issue(row)
        return Response.json(200, self._view(row, full=True))

    def _list(self, request: Request) -> Response:
        try:
            offset = int(request.arg("offset", "0") or 0)
            limit = min(int(request.arg("limit", "100") or 100), 1000)
        except ValueError:
            return self.error(400, "limit and offset must be numbers.")
        rows = sorted(self.certificates.values(), key=lambda r: r.tracking_id)
        serial = request.arg("serialNumber")
        if serial:
            rows = [
                r
                for r in rows
                if r.certificate is not None and r.certificate.serial_number == int(serial, 16)
            ]
        status = request.arg("status")
        if status:
            rows = [r for r in rows if r.status == status]
        page = rows[offset : offset + limit]
        return Response.json(
            200,
            {
                "summary": {"timestamp": now_iso(), "offset": offset, "limit": limit, "total": len(rows)},
                "certificates": [self._view(r, full=False) for r in page],
            },
        )

    def _revoke(self, tracking_id: int, request: Request) -> Response:
        row = self.certificates.get(tracking_id)
        if row is None:
            return self.error(404, f"Certificate with tracking id {tracking_id} was not found.")
        body = request.json() or {}
        reason = body.get("crlReason")
        if reason not in CRL_REASONS:
            return self.error(400, f"crlReason {reason} is not valid.")
        if row.status == "REVOKED":
            return self.error(400, "The certificate is already revoked.")
        if row.status != "ACTIVE":
            return self.error(400, f"A certificate in status {row.status} cannot be revoked.")
        row.status = "REVOKED"
        row.revocation = {
            "crlReason": reason,
            "revocationComment": body.get("revocationComment", ""),
            "date": now_iso(),
        }
        return Response.json(200, {"trackingId": tracking_id, "status": "REVOKED"})
