"""The ``adcs`` CA gateway: certificates from Microsoft AD CS through its Web Enrollment pages (certsrv).

The CSR is posted to ``certfnsh.asp`` with the template in ``CertAttrib``. IIS answers HTTP 200 with an
HTML page for every disposition, which is read the way the pages word it (as the ``certsrv`` client does):

- issued — a ``certnew.cer?ReqID=N`` link: the certificate is fetched with ``Enc=b64``;
- pending — "Certificate Pending ... Your Request Id is N": a CA manager must approve; the request id is
  the pending reference and :meth:`AdcsGateway.collect` fetches ``certnew.cer?ReqID=N`` until it is there;
- denied — ``The disposition message is "..."``: the CA's reason, as a rejection.

The CA chain comes from ``certcarc.asp`` (number of CA renewals) and ``certnew.p7b?ReqID=CACert``. Certsrv
has no revocation and no listing, so neither capability is declared. See :mod:`.ledger` for the state
kept per idempotency key.
"""

from __future__ import annotations

import html
import re
from datetime import timedelta
from typing import ClassVar, cast

import requests.auth
from cryptography import x509
from pydantic import BaseModel

from sslclm.errors import CARejectedError, CertificateFormatError, ConnectorError, SslClmError
from sslclm.pki import certificate_to_pem, load_bundle
from sslclm.spi import (
    CAGateway,
    Capability,
    ChainRequest,
    ChainResult,
    CheckRequest,
    CheckResult,
    CollectRequest,
    ConnectorContext,
    IssueRequest,
    IssueResult,
)
from sslclm.spi.base import CHECK
from sslclm.spi.ca import CHAIN
from sslclm.spi.ledger import Ledger, OrderRecord, check_request, key_id, split_pems
from sslclm.spi.rest import Transport, verify_setting

from .config import AdcsConfig

VENDOR = "AD CS"
_ISSUED = re.compile(r"certnew\.cer\?ReqID=(\d+)&")
_REQUEST_ID = re.compile(r"Your Request Id is (\d+)")
_DENIED = re.compile(r'The disposition message is "([^"]+)')
_DISPOSITION = re.compile(r"Disposition message:(?:<[^>]*>|[^\t<])*\t+([^\r\n<]+)")
_RENEWALS = re.compile(r"var nRenewals=(\d+);")
_REQ_ID = re.compile(r"^[1-9][0-9]{0,18}$")
_PENDING_WORDS = ("taken under submission", "certificate pending")


def _text(page: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page))).strip()


class AdcsGateway(CAGateway):
    """Certificates from an enterprise or standalone Microsoft CA with the Web Enrollment role."""

    type_key: ClassVar[str] = "adcs"
    display_name: ClassVar[str] = "Microsoft AD CS (Web Enrollment)"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.ISSUE, Capability.ASYNC_ISSUE})
    Config: ClassVar[type[BaseModel]] = AdcsConfig

    def __init__(self, config: BaseModel, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.settings = cast(AdcsConfig, config)
        lease = timedelta(seconds=2 * self.settings.request_timeout_seconds + 60)
        self.ledger = Ledger(context, VENDOR, lease)

    def _transport(self) -> Transport:
        password = self.settings.password.get_secret_value()
        auth: requests.auth.AuthBase | tuple[str, str]
        if self.settings.auth == "ntlm":
            from requests_ntlm import HttpNtlmAuth

            auth = HttpNtlmAuth(self.settings.username, password)
        else:
            auth = (self.settings.username, password)
        return Transport(
            vendor=VENDOR,
            credentials="username, password and auth",
            base_url=self.settings.url,
            # certsrv answers certificates with their proper content type only to browsers.
            headers={"User-Agent": "Mozilla/5.0 (compatible; sslclm-adcs)"},
            verify=verify_setting(self.settings.ca_bundle, self.context.data_dir),
            timeout=self.settings.request_timeout_seconds,
            max_rate_limit_wait=0,
            auth=auth,
        )

    def _pending(self, ref: str) -> IssueResult:
        return IssueResult.pending(ref, retry_after=timedelta(seconds=self.settings.poll_interval_seconds))

    # --- SPI ------------------------------------------------------------------------------------

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        """Opens the Web Enrollment home page with the credentials and reads the CA chain; submits nothing."""
        try:
            transport = self._transport()
            home = transport.call("GET", "/", action="open the Web Enrollment site")
            if "Certificate Services" not in home.text:
                raise ConnectorError(
                    f"{self.settings.url} is not an AD CS Web Enrollment site; check url", retryable=False
                )
            chain = self._chain(transport)
        except SslClmError as exc:
            return CheckResult(ok=False, message=exc.message)
        subject = load_bundle(chain.chain_pem[0]).certificates[0].subject.rfc4514_string()
        details = {"url": self.settings.url, "template": self.settings.template, "ca": subject}
        return CheckResult(
            ok=True, message=f"signed in to the Web Enrollment site of {subject}", details=details
        )

    def get_chain(self, request: ChainRequest = CHAIN) -> ChainResult:
        """The CA certificate and its parents, from ``certnew.p7b?ReqID=CACert``; the root is the anchor."""
        return self._chain(self._transport())

    def _chain(self, transport: Transport) -> ChainResult:
        archive = transport.call("GET", "/certcarc.asp", action="read the CA certificate page")
        renewals = _RENEWALS.search(archive.text)
        if renewals is None:
            raise ConnectorError(
                f"read the CA certificate page: {VENDOR} did not say its renewals", retryable=False
            )
        response = transport.call(
            "GET",
            "/certnew.p7b",
            action="download the CA chain",
            params={"ReqID": "CACert", "Renewal": renewals.group(1), "Enc": "bin"},
        )
        try:
            certificates = load_bundle(response.content).certificates
        except CertificateFormatError as exc:
            raise ConnectorError(f"download the CA chain: {exc.message}", retryable=False) from None
        ordered = _issuer_order(certificates)
        if not ordered:
            raise ConnectorError(f"download the CA chain: {VENDOR} sent no certificate", retryable=False)
        chain = tuple(certificate_to_pem(c) for c in ordered)
        anchor = chain[-1] if ordered[-1].issuer == ordered[-1].subject else None
        return ChainResult(chain_pem=chain, root_pem=anchor)

    def issue(self, request: IssueRequest) -> IssueResult:
        """Submit the CSR on the configured template.

        Returns the certificate when the CA issues at once, otherwise a pending result whose reference is
        the request id. Raises ``CARejectedError`` for a CSR that does not parse, verify or match the
        names, and with the CA's disposition message when it denies the request;
        ``CAUnavailableError`` when the site cannot be reached; a non-retryable ``ConnectorError`` when an
        earlier attempt may have submitted without an answer.
        """
        key = key_id(request.idempotency_key)
        csr = check_request(request)
        replayed = self.ledger.replay(key, csr.digest)
        if replayed is not None:
            return replayed
        if request.profile:
            name = sorted(request.profile)[0]
            raise CARejectedError(f"AD CS takes no profile options (got {name!r})", field=f"profile.{name}")
        existing = self.ledger.begin(key, csr)
        if existing is not None:
            return self._poll(key, existing)
        attributes = f"CertificateTemplate:{self.settings.template}\r\nSslClmRequest:sslclm:{key[:16]}\r\n"
        form = {
            "Mode": "newreq",
            "CertRequest": request.csr_pem.decode(),
            # Request attributes are stored with the request, so an administrator can find it by marker.
            "CertAttrib": attributes,
            "FriendlyType": "Saved-Request Certificate",
            "TargetStoreFlags": "0",
            "SaveCert": "yes",
        }
        transport = self._transport()
        try:
            page = transport.call("POST", "/certfnsh.asp", action="submit the request", data=form).text
        except SslClmError as exc:
            self.ledger.failed(key, csr, exc)
            raise
        issued = _ISSUED.search(page)
        pending = _REQUEST_ID.search(page) if "Certificate Pending" in page else None
        if issued is None and pending is None:
            denied = _DENIED.search(page)
            if denied is not None:
                self.ledger.failed(key, csr, CARejectedError("denied"))
                raise CARejectedError(
                    f"{VENDOR} denied the request: {html.unescape(denied.group(1)).strip()}"
                )
            error = ConnectorError(
                f"submit the request: the answer is not an AD CS Web Enrollment page ({_text(page)[:120]!r})",
                retryable=False,
                outcome_unknown=True,
            )
            self.ledger.failed(key, csr, error)
            raise error
        found = issued or pending
        assert found is not None
        request_id = found.group(1)
        record = self.ledger.submitted(key, request_id, csr)
        self.context.logger.info(
            "submitted %s request %s (%s)", VENDOR, request_id, "issued" if issued else "pending"
        )
        if issued is None:
            return self._pending(request_id)
        return self._poll(key, record)

    def collect(self, request: CollectRequest) -> IssueResult:
        """Fetch a request that awaited approval: pending while it is "Taken Under Submission", the
        certificate once a CA manager issued it. Raises ``CARejectedError`` for a request id this connection
        did not hand out for ``request.idempotency_key``, and with the CA's message when it was denied."""
        if not _REQ_ID.match(request.pending_ref):
            raise CARejectedError(f"{request.pending_ref!r} is not an AD CS request id", field="pending_ref")
        key = key_id(request.idempotency_key)
        if self.ledger.issued_ref(key) is not None:
            replayed = self.ledger.replay(key, None)
            assert replayed is not None
            return replayed
        record = self.ledger.order(key)
        if record is None or record.ref != request.pending_ref:
            raise CARejectedError(
                f"request {request.pending_ref} is not pending for this request at this connection",
                field="pending_ref",
            )
        return self._poll(key, self.ledger.usable(key, record))

    def _poll(self, key: str, record: OrderRecord) -> IssueResult:
        assert record.ref is not None
        transport = self._transport()
        response = transport.call(
            "GET", "/certnew.cer", action="fetch the certificate", params={"ReqID": record.ref, "Enc": "b64"}
        )
        if response.headers.get("Content-Type", "").split(";")[0].strip() != "application/pkix-cert":
            disposition = _DISPOSITION.search(response.text)
            message = (
                html.unescape(disposition.group(1)).strip() if disposition else _text(response.text)[:200]
            )
            if any(word in response.text.lower() for word in _PENDING_WORDS):
                return self._pending(record.ref)
            raise self.ledger.rejected(
                key, record, f"{VENDOR} has no certificate for request {record.ref}: {message}"
            )
        leaf = split_pems(response.content, VENDOR)[:1]
        return self.ledger.accept(key, record, leaf + list(self._chain(transport).chain_pem), record.ref)


def _issuer_order(certs: list[x509.Certificate]) -> list[x509.Certificate]:
    """The CA certificates from the issuing CA up to the root, whatever order the PKCS#7 had them in."""
    issuers = {c.issuer for c in certs if c.issuer != c.subject}
    bottom = [c for c in certs if c.subject not in issuers]
    if not bottom:
        return certs
    ordered = [bottom[0]]
    by_subject = {c.subject: c for c in certs}
    while ordered[-1].issuer != ordered[-1].subject and ordered[-1].issuer in by_subject:
        parent = by_subject[ordered[-1].issuer]
        if parent in ordered:
            break
        ordered.append(parent)
    return ordered
