"""A fake Microsoft AD CS Web Enrollment site (``/certsrv``), as the ``certsrv`` client and browsers see it.

Pages and their behaviour follow the Web Enrollment role: ``certfnsh.asp`` takes the form post
(``Mode=newreq``, ``CertRequest``, ``CertAttrib`` with ``CertificateTemplate:<name>``) and answers an HTML
page — "Certificate Issued" with a ``certnew.cer?ReqID=N&amp;Enc=b64`` link, "Certificate Pending" with
"Your Request Id is N.", or "Certificate Request Denied" with ``The disposition message is "..."``.
``certnew.cer`` serves an issued certificate as ``application/pkix-cert`` (``Enc=b64`` PEM, ``Enc=bin``
DER) and otherwise an HTML page with a "Disposition message:" line; ``certcarc.asp`` carries
``var nRenewals=N;`` and ``certnew.p7b?ReqID=CACert`` the CA chain as PKCS#7.

The site answers HTTP 200 for every disposition, as IIS does; authentication failures are 401 with a
``WWW-Authenticate`` challenge. Basic and NTLM (through pyspnego's server side) are offered.
"""

from __future__ import annotations

import base64
import re
import threading
from dataclasses import dataclass
from typing import Any

import spnego
import spnego.exceptions
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tests.support.fakes.base import App, FakeCA, Request, Response, pem, pkcs7_der

_TEMPLATE = re.compile(r"(?:^|[\r\n])CertificateTemplate:([^\r\n]+)")


@dataclass
class AdcsRequest:
    """One row of the CA database: a request and its disposition."""

    request_id: int
    template: str
    status: str  # "issued", "pending", "denied"
    certificate: x509.Certificate | None = None
    message: str = ""
    csr: x509.CertificateSigningRequest | None = None
    names: tuple[str, ...] = ()


class AdcsApp(App):
    name = "adcs"

    def __init__(
        self,
        ca: FakeCA,
        *,
        username: str,
        password: str,
        templates: tuple[str, ...] = ("WebServer",),
        approval_templates: tuple[str, ...] = ("WebServerApproval",),
        ntlm: bool = False,
        pending_polls: int = 0,
    ) -> None:
        super().__init__()
        self.ca = ca
        self.username = username
        self.password = password
        self.templates = templates
        self.approval_templates = approval_templates
        self.ntlm = ntlm
        self.pending_polls = pending_polls  # fetches of a pending request before the fake issues it itself
        self.polls: dict[int, int] = {}
        self.database: dict[int, AdcsRequest] = {}
        self._next_id = 16
        self._ids = threading.Lock()

    # --- the CA officer's console ----------------------------------------------------------------

    def approve(self, request_id: int) -> None:
        """What "Issue" in the Pending Requests folder does."""
        row = self.database[request_id]
        assert row.csr is not None
        row.certificate = self.ca.issue(row.csr, row.names)
        row.status = "issued"

    def deny(self, request_id: int, message: str = "Denied by Officer") -> None:
        row = self.database[request_id]
        row.status, row.message = "denied", message

    # --- authentication ---------------------------------------------------------------------------

    def _authenticated(self, request: Request) -> Response | None:
        """None when the caller is authenticated, otherwise the 401 to send."""
        if request.connection_state.get("user"):
            return None
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            credentials = request.basic_auth()
            if credentials == (self.username, self.password):
                return None
            return self._challenge()
        if self.ntlm and header.startswith(("NTLM ", "Negotiate ")):
            return self._ntlm_step(request, header)
        return self._challenge()

    def _challenge(self, token: str | None = None) -> Response:
        response = Response.text(
            401, "<html><body>401 - Unauthorized: Access is denied</body></html>", "text/html"
        )
        if token is not None:
            response.headers["WWW-Authenticate"] = f"NTLM {token}"
            return response
        # IIS sends one header per scheme; joined here because the server sends one of each name.
        schemes = ['Basic realm="127.0.0.1"']
        if self.ntlm:
            schemes = ["NTLM", *schemes]
        response.headers["WWW-Authenticate"] = ", ".join(schemes)
        return response

    def _ntlm_step(self, request: Request, header: str) -> Response | None:
        token = base64.b64decode(header.split(" ", 1)[1])
        context: Any = request.connection_state.get("ntlm")
        if context is None:
            context = spnego.server(protocol="ntlm")
            request.connection_state["ntlm"] = context
        try:
            answer = context.step(token)
        except spnego.exceptions.SpnegoError:
            request.connection_state.pop("ntlm", None)
            return self._challenge()
        if context.complete:
            request.connection_state["user"] = context.client_principal
            return None
        return self._challenge(base64.b64encode(answer or b"").decode())

    # --- pages --------------------------------------------------------------------------------------

    def route(self, request: Request) -> Response:
        refused = self._authenticated(request)
        if refused is not None:
            return refused
        path = request.path.rstrip("/").lower()
        if path == "/certsrv" and request.method == "GET":
            return _page("Microsoft Active Directory Certificate Services -- Fake CA", "Welcome")
        if path == "/certsrv/certfnsh.asp" and request.method == "POST":
            return self._submit(request.form())
        if path == "/certsrv/certnew.cer" and request.method == "GET":
            return self._certificate(request)
        if path == "/certsrv/certcarc.asp" and request.method == "GET":
            return _page("Download a CA Certificate", "<script>var nRenewals=0;</script>")
        if path == "/certsrv/certnew.p7b" and request.method == "GET":
            return self._chain(request)
        return Response.text(404, "<html><body>404 - File or directory not found.</body></html>", "text/html")

    def _submit(self, form: dict[str, str]) -> Response:
        if form.get("Mode") != "newreq":
            return _denied(
                None, "The request mode is not supported. 0x80070057 (WIN32: 87 ERROR_INVALID_PARAMETER)"
            )
        with self._ids:
            self._next_id += 1
            request_id = self._next_id
        match = _TEMPLATE.search(form.get("CertAttrib", ""))
        template = match.group(1).strip() if match else ""
        row = AdcsRequest(request_id=request_id, template=template, status="denied")
        self.database[request_id] = row
        try:
            csr = self.ca.check_csr(form.get("CertRequest", ""))
        except ValueError as exc:
            row.message = f"Error Parsing Request {exc}. 0x80093102 (ASN: 258 CRYPT_E_ASN1_BADTAG)"
            return _denied(request_id, row.message)
        if not template:
            row.message = (
                "Denied by Policy Module  0x80094801, The request does not contain a certificate template "
                "extension or the CertificateTemplate request attribute."
            )
            return _denied(request_id, row.message)
        if template not in self.templates and template not in self.approval_templates:
            row.message = (
                "Denied by Policy Module  0x80094800, The requested certificate template is not supported "
                "by this CA."
            )
            return _denied(request_id, row.message)
        row.csr = csr
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            row.names = tuple(
                [*san.get_values_for_type(x509.DNSName)]
                + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
            )
        except x509.ExtensionNotFound:
            row.names = ()
        if template in self.approval_templates:
            row.status, row.message = "pending", "Taken Under Submission"
            return _page(
                "Certificate Pending",
                "Your certificate request has been received. However, you must wait for an administrator "
                f"to issue the certificate you requested.<P>Your Request Id is {request_id}.<P>",
            )
        row.certificate = self.ca.issue(csr, row.names)
        row.status, row.message = "issued", "Issued"
        return _page(
            "Certificate Issued",
            "The certificate you requested was issued to you.<P>"
            f'<A Href="certnew.cer?ReqID={request_id}&amp;Enc=bin">Download certificate</A><P>'
            f'<A Href="certnew.p7b?ReqID={request_id}&amp;Enc=bin">Download certificate chain</A>',
        )

    def _certificate(self, request: Request) -> Response:
        req_id = request.arg("ReqID", "") or ""
        encoding = request.arg("Enc", "bin")
        if req_id == "CACert":
            return _pkix(self.ca.issuing, encoding)
        row = self.database.get(int(req_id)) if req_id.isdigit() else None
        if row is None:
            return _disposition(f"Cannot find the certificate request {req_id}.")
        if row.status == "pending" and self.pending_polls:
            self.polls[row.request_id] = self.polls.get(row.request_id, 0) + 1
            if self.polls[row.request_id] > self.pending_polls:
                self.approve(row.request_id)
        if row.status == "issued" and row.certificate is not None:
            return _pkix(row.certificate, encoding)
        return _disposition(row.message)

    def _chain(self, request: Request) -> Response:
        certificates = [self.ca.issuing, self.ca.root]
        req_id = request.arg("ReqID", "") or ""
        if req_id != "CACert":
            row = self.database.get(int(req_id)) if req_id.isdigit() else None
            if row is None or row.certificate is None:
                return _disposition(f"Cannot find the certificate request {req_id}.")
            certificates.insert(0, row.certificate)
        der = pkcs7_der(certificates)
        if request.arg("Enc") == "b64":
            body = b"-----BEGIN PKCS7-----\r\n" + base64.encodebytes(der) + b"-----END PKCS7-----\r\n"
            return Response(200, body, "application/x-pkcs7-certificates")
        return Response(200, der, "application/x-pkcs7-certificates")


def _page(title: str, body: str) -> Response:
    html = (
        "<HTML><HEAD><TITLE>Microsoft Active Directory Certificate Services</TITLE></HEAD>\r\n<BODY>"
        f"<Font ID=locPageTitle><B>{title}</B></Font><P>\r\n{body}\r\n</BODY></HTML>"
    )
    return Response.text(200, html, "text/html")


def _denied(request_id: int | None, message: str) -> Response:
    head = f"Your Request Id is {request_id}.<P>" if request_id is not None else ""
    return _page(
        "Certificate Request Denied",
        f"Your request failed. An error occurred while the server was processing your request.<P>{head}"
        f'The disposition message is "{message}".<P>Contact your administrator for further information.',
    )


def _disposition(message: str) -> Response:
    return _page(
        "Microsoft Active Directory Certificate Services",
        f"<B>Disposition message:</B>\t\t{message}\r\n",
    )


def _pkix(certificate: x509.Certificate, encoding: str | None) -> Response:
    if encoding == "b64":
        return Response(200, pem(certificate).encode(), "application/pkix-cert")
    return Response(200, certificate.public_bytes(Encoding.DER), "application/pkix-cert")
