"""A fake Sectigo Certificate Manager (SCM) REST API (``/api/ssl/v1``), following the documented endpoints.

Every request carries ``login``, ``password`` and ``customerUri`` headers; errors are
``{"code": <negative number>, "description": ...}``. The fake is also driven by Sectigo's own Python
client (PyPI ``cert-manager``), so its shapes are the ones that client expects.

- ``GET /api/ssl/v1/types`` — the certificate types of the account: ``id``, ``name``, ``terms`` (days);
- ``GET /api/ssl/v1/customFields`` — the account's custom fields;
- ``POST /api/ssl/v1/enroll`` — ``orgId``, ``csr``, ``subjAltNames`` (comma-separated), ``certType`` (type
  id), ``term``, ``numberServers``, ``serverType``, ``comments``, ``externalRequester``: 200 with
  ``sslId`` and ``renewId``;
- ``GET /api/ssl/v1/collect/{sslId}/{format}`` (and ``/collect/{sslId}?format=``) — the certificate in
  ``x509CO``, ``x509IOR``, ``x509IO``, ``x509``, ``pem``, ``pemco``, ``base64`` or ``bin``; HTTP 400 with code
  -183 while it is being processed;
- ``GET /api/ssl/v1/{sslId}`` — its details: ``status`` (``Applied``, ``Issued``, ``Rejected``,
  ``Revoked``, ...), ``serialNumber``, ``subjectAlternativeNames``, ``commonName``;
- ``GET /api/ssl/v1?size=&position=&serialNumber=`` — a page of the account's certificates (``HEAD``
  gives the total in ``X-Total-Count``);
- ``POST /api/ssl/v1/revoke/{sslId}`` and ``/revoke/serial/{serial}`` — ``reason``: 204;
- 429 with ``Retry-After`` when rate-limited.

Codes other than -183 (pending) and -16 (bad credentials) are illustrative.
"""

from __future__ import annotations

import base64
import itertools
import re
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from tests.support.fakes.base import App, FakeCA, Request, Response, pem, pkcs7_der

_COLLECT = re.compile(r"^/api/ssl/v1/collect/(\d+)(?:/([A-Za-z0-9]+))?$")
_ONE = re.compile(r"^/api/ssl/v1/(\d+)$")
_REVOKE = re.compile(r"^/api/ssl/v1/revoke/(\d+)$")
_REVOKE_SERIAL = re.compile(r"^/api/ssl/v1/revoke/serial/([0-9A-Fa-f:]+)$")
PENDING = -183


@dataclass
class SslCertificate:
    ssl_id: int
    type_id: int
    term: int
    csr: x509.CertificateSigningRequest
    common_name: str
    names: list[str]
    status: str = "Applied"
    certificate: x509.Certificate | None = None
    polls: int = 0
    revoke_reason: str = ""


class SectigoApp(App):
    name = "sectigo"

    def __init__(
        self,
        ca: FakeCA,
        *,
        login: str,
        password: str,
        customer_uri: str,
        org_id: int = 4711,
        processing_polls: int = 0,
    ) -> None:
        super().__init__()
        self.ca = ca
        self.login = login
        self.password = password
        self.customer_uri = customer_uri
        self.org_id = org_id
        self.processing_polls = processing_polls  # collects answered -183 before the certificate is ready
        self.hold = False  # keep every new request "Applied" until approve()
        self.types = [
            {"id": 224, "name": "Sectigo OV SSL", "description": "OV", "terms": [365], "keyTypes": {}},
            {
                "id": 227,
                "name": "Sectigo Private SSL",
                "description": "Private",
                "terms": [90, 365],
                "keyTypes": {},
            },
        ]
        self.certificates: dict[int, SslCertificate] = {}
        self._ids = itertools.count(1_800_001)

    def error(self, status: int, message: str, code: int = -1) -> Response:
        return Response.json(status, {"code": code, "description": message})

    # --- the RAO administrator's side -------------------------------------------------------------

    def approve(self, ssl_id: int) -> None:
        self._issue(self.certificates[ssl_id])

    def reject(self, ssl_id: int) -> None:
        self.certificates[ssl_id].status = "Rejected"

    def _issue(self, row: SslCertificate) -> None:
        row.certificate = self.ca.issue(row.csr, row.names, common_name=row.common_name, days=row.term)
        row.status = "Issued"

    # --- the API ----------------------------------------------------------------------------------------

    def route(self, request: Request) -> Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        if headers.get("customeruri") != self.customer_uri:
            return self.error(401, "Unknown customer URI.", -16)
        if (headers.get("login"), headers.get("password")) != (self.login, self.password):
            return self.error(401, "Invalid login or password.", -16)
        path, method = request.path.rstrip("/"), request.method
        if path == "/api/ssl/v1/types" and method == "GET":
            return Response.json(200, self.types)
        if path == "/api/ssl/v1/customFields" and method == "GET":
            return Response.json(200, [])
        if path == "/api/ssl/v1/enroll" and method == "POST":
            return self._enroll(request)
        if path == "/api/ssl/v1" and method in ("GET", "HEAD"):
            return self._list(request)
        if (match := _COLLECT.match(path)) and method == "GET":
            return self._collect(int(match.group(1)), match.group(2) or request.arg("format") or "x509CO")
        if (match := _ONE.match(path)) and method == "GET":
            return self._details(int(match.group(1)))
        if (match := _REVOKE.match(path)) and method == "POST":
            return self._revoke(self.certificates.get(int(match.group(1))), request)
        if (match := _REVOKE_SERIAL.match(path)) and method == "POST":
            serial = int(match.group(1).replace(":", ""), 16)
            row = next(
                (
                    r
                    for r in self.certificates.values()
                    if r.certificate and r.certificate.serial_number == serial
                ),
                None,
            )
            return self._revoke(row, request)
        return self.error(404, "Not found.", -3)

    def _enroll(self, request: Request) -> Response:
        try:
            body = request.json()
            type_id = int(body["certType"])
            term = int(body["term"])
            org_id = int(body["orgId"])
        except (ValueError, KeyError, TypeError):
            return self.error(400, "orgId, csr, certType and term are required.", -2)
        cert_type = next((t for t in self.types if t["id"] == type_id), None)
        if cert_type is None:
            return self.error(400, "Invalid certificate type.", -2)
        if term not in cert_type["terms"]:
            return self.error(400, f"Term {term} is not allowed for this certificate type.", -2)
        if org_id != self.org_id:
            return self.error(400, "Invalid organization.", -2)
        try:
            csr = self.ca.check_csr(str(body.get("csr", "")))
        except ValueError as exc:
            return self.error(400, f"Invalid CSR: {exc}", -10)
        cn_attributes = csr.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
        common_name = str(cn_attributes[0].value) if cn_attributes else ""
        extra = [n.strip() for n in str(body.get("subjAltNames") or "").split(",") if n.strip()]
        names = list(dict.fromkeys(([common_name] if common_name else []) + extra))
        if not names:
            return self.error(
                400, "The CSR has no common name and no subject alternative names were given.", -10
            )
        row = SslCertificate(next(self._ids), type_id, term, csr, common_name, names)
        self.certificates[row.ssl_id] = row
        if not self.hold and not self.processing_polls:
            self._issue(row)
        return Response.json(200, {"sslId": row.ssl_id, "renewId": f"renew-{row.ssl_id}"})

    def _collect(self, ssl_id: int, form: str) -> Response:
        row = self.certificates.get(ssl_id)
        if row is None:
            return self.error(400, "Certificate ID is not valid.", -110)
        if row.status == "Applied" and not self.hold and self.processing_polls:
            row.polls += 1
            if row.polls > self.processing_polls:
                self._issue(row)
        if row.status in ("Applied", "Requested", "Approved"):
            return self.error(400, "Certificate is being processed by Sectigo.", PENDING)
        if row.certificate is None:
            return self.error(400, f"The certificate request was {row.status.lower()}.", -102)
        leaf, issuing, root = pem(row.certificate), self.ca.issuing_pem, self.ca.root_pem
        bodies = {
            "x509CO": leaf,
            "pemco": leaf,
            "x509IOR": issuing + root,
            "x509IO": root + issuing,
            "x509": leaf + issuing + root,
            "pem": leaf + issuing + root,
            "pemia": leaf + issuing,
        }
        if form in bodies:
            return Response.text(200, bodies[form], "application/x-x509-ca-cert")
        chain = pkcs7_der([row.certificate, self.ca.issuing, self.ca.root])
        if form == "bin":
            return Response(200, chain, "application/pkcs7-mime")
        if form == "base64":
            return Response.text(200, base64.encodebytes(chain).decode(), "application/pkcs7-mime")
        return self.error(400, f"Unknown format {form}.", -2)

    def _view(self, row: SslCertificate) -> dict[str, Any]:
        view: dict[str, Any] = {
            "sslId": row.ssl_id,
            "commonName": row.common_name,
            "subjectAlternativeNames": row.names,
            "status": row.status,
            "orgId": self.org_id,
            "term": row.term,
            "certType": {"id": row.type_id},
        }
        if row.certificate is not None:
            view["serialNumber"] = f"{row.certificate.serial_number:X}"
            view["expires"] = row.certificate.not_valid_after_utc.strftime("%m/%d/%Y")
            view["certificateDetails"] = {"issuer": row.certificate.issuer.rfc4514_string()}
        if row.revoke_reason:
            view["revokeReason"] = row.revoke_reason
        return view

    def _details(self, ssl_id: int) -> Response:
        row = self.certificates.get(ssl_id)
        if row is None:
            return self.error(404, "Certificate ID is not valid.", -110)
        return Response.json(200, self._view(row))

    def _list(self, request: Request) -> Response:
        try:
            size = min(int(request.arg("size", "200") or 200), 200)
            position = int(request.arg("position", "0") or 0)
        except ValueError:
            return self.error(400, "size and position must be numbers.", -2)
        rows = sorted(self.certificates.values(), key=lambda r: r.ssl_id)
        serial = request.arg("serialNumber")
        if serial:
            wanted = int(serial.replace(":", ""), 16)
            rows = [r for r in rows if r.certificate is not None and r.certificate.serial_number == wanted]
        status = request.arg("status")
        if status:
            rows = [r for r in rows if r.status == status]
        headers = {"X-Total-Count": str(len(rows))}
        page = [
            {
                k: v
                for k, v in self._view(r).items()
                if k in ("sslId", "commonName", "serialNumber", "subjectAlternativeNames", "status")
            }
            for r in rows[position : position + size]
        ]
        return Response.json(200, page, headers)

    def _revoke(self, row: SslCertificate | None, request: Request) -> Response:
        if row is None:
            return self.error(400, "Certificate ID is not valid.", -110)
        reason = str((request.json() or {}).get("reason") or "")
        if not reason or len(reason) > 512:
            return self.error(400, "A revocation reason of 1 to 512 characters is required.", -2)
        if row.status == "Revoked":
            return self.error(400, "The certificate is already revoked.", -192)
        if row.status != "Issued":
            return self.error(400, f"A certificate in status {row.status} cannot be revoked.", -2)
        row.status, row.revoke_reason = "Revoked", reason
        return Response(204)
