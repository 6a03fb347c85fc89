"""The ``acme`` CA gateway: certificates from any RFC 8555 server, validated by http-01 or dns-01.

State entries besides the account's (see :mod:`.account`):

- ``order/<sha256 of idempotency key>`` — the order URL (and the CSR's digest) stored as soon as the
  order exists, before any challenge is answered, so a retry resumes that order instead of placing a
  second one. It is replaced only when the server reports the order invalid or gone;
- ``issued/<sha256 of idempotency key>`` — the certificate answered for that key;
- ``cert/<serial, 40 hex digits>`` — each issued certificate, so ``revoke`` can work from a serial;
- ``chain`` — the issuing chain of the last order, for ``get_chain``;
- ``http01/<token>`` — key authorizations the http-01 responder serves while a challenge is open.

Renewal information: the ``ari`` capability is declared because a server may offer it; when the
directory has no ``renewalInfo``, :meth:`AcmeGateway.renewal_info` raises ``NotSupportedError`` rather
than inventing a window, so the renewal planner falls back to the managed certificate's own policy.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, cast

from acme import messages
from pydantic import BaseModel

from sslclm.errors import (
    CARejectedError,
    CertificateFormatError,
    ConnectorError,
    InvalidInputError,
    NotSupportedError,
    SslClmError,
)
from sslclm.pki import certificate_to_pem, extract_info, load_bundle, load_certificate
from sslclm.pki.ca_tools import csr_names, load_csr, normalize_names
from sslclm.spi import (
    CAGateway,
    Capability,
    ChainRequest,
    ChainResult,
    CheckRequest,
    CheckResult,
    ConnectorContext,
    IssueRequest,
    IssueResult,
    RenewalInfoRequest,
    RenewalInfoResult,
    RevokeRequest,
    RevokeResult,
)
from sslclm.spi.base import CHECK
from sslclm.spi.ca import CHAIN

from .account import Account
from .ari import cert_id, parse_renewal_info
from .challenges import http01_response, solver_for
from .config import AcmeConfig
from .orders import OrderDriver, Timing
from .transport import PEM_CHAIN, Session, call

T = TypeVar("T")
_SERIAL_DIGITS = 40


def _key_id(idempotency_key: str) -> str:
    return hashlib.sha256(idempotency_key.encode()).hexdigest()


def _padded(serial_hex: str) -> str:
    return f"{int(serial_hex, 16):0{_SERIAL_DIGITS}x}"


def _identifiers(names: frozenset[str]) -> list[messages.Identifier]:
    identifiers = []
    for name in sorted(names):
        try:
            ipaddress.ip_address(name)
            kind = messages.IDENTIFIER_IP
        except ValueError:
            kind = messages.IDENTIFIER_FQDN
        identifiers.append(messages.Identifier(typ=kind, value=name))
    return identifiers


def split_chain(fullchain: str | bytes) -> tuple[bytes, tuple[bytes, ...]]:
    """The leaf and the rest of a PEM chain as the server sent it, each re-encoded as PEM."""
    data = fullchain.encode() if isinstance(fullchain, str) else fullchain
    try:
        certificates = load_bundle(data).certificates
    except CertificateFormatError as exc:
        raise ConnectorError(
            f"the ACME server sent no usable certificate: {exc.message}", retryable=False
        ) from None
    if not certificates:
        raise ConnectorError("the ACME server sent an empty certificate chain", retryable=False)
    pems = [certificate_to_pem(cert) for cert in certificates]
    return pems[0], tuple(pems[1:])


class AcmeGateway(CAGateway):
    """Certificates from an ACME server (RFC 8555): Let's Encrypt, ZeroSSL, step-ca, Pebble, ..."""

    type_key: ClassVar[str] = "acme"
    display_name: ClassVar[str] = "ACME (RFC 8555)"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.ISSUE, Capability.REVOKE, Capability.ARI}
    )
    Config: ClassVar[type[BaseModel]] = AcmeConfig

    def __init__(self, config: BaseModel, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.settings = cast(AcmeConfig, config)  # the base class checked the type
        self.account = Account(self.settings, context)

    # --- sessions -------------------------------------------------------------------------------

    def _with_session(self, operation: Callable[[Session], T]) -> T:
        """Run ``operation`` as the account; once more after re-registering if the server forgot it."""
        for attempt in (1, 2):
            session = self.account.session()
            try:
                return operation(session)
            except CARejectedError as exc:
                if attempt == 1 and exc.data.get("acme_error") == "accountDoesNotExist":
                    self.context.logger.warning(
                        "the ACME server no longer knows the account; registering again"
                    )
                    self.account.forget_registration()
                    continue
                raise
            finally:
                session.close()
        raise AssertionError("unreachable")  # pragma: no cover

    def http01_response(self, token: str) -> bytes | None:
        """What the platform's http-01 responder serves for ``token`` on behalf of this connection."""
        return http01_response(self.context.state, token)

    # --- SPI ------------------------------------------------------------------------------------

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        """Fetch the directory and look the account up by its key; registers and changes nothing."""
        try:
            session = self.account.anonymous_session()
        except SslClmError as exc:
            return CheckResult(ok=False, message=exc.message)
        try:
            meta = session.directory.meta
            details: dict[str, Any] = {
                "directory_url": self.settings.directory_url,
                "terms_of_service": meta.terms_of_service,
                "external_account_required": bool(meta.external_account_required),
                "renewal_info": session.has("renewalInfo"),
                "challenge": self.settings.challenge,
            }
        finally:
            session.close()
        if details["external_account_required"] and self.settings.eab_kid is None:
            return CheckResult(
                ok=False,
                message="the ACME server requires external account binding (eab_kid, eab_hmac_key)",
                details=details,
            )
        if details["terms_of_service"] and not self.settings.terms_of_service_agreed:
            terms = details["terms_of_service"]
            return CheckResult(
                ok=False,
                message=f"the ACME server requires agreeing to its terms of service ({terms})",
                details=details,
            )
        try:
            key = self.account.key(create=False)
        except SslClmError as exc:  # e.g. sealed under another master key
            return CheckResult(
                ok=False, message=f"the account key cannot be read: {exc.message}", details=details
            )
        if key is None:
            return CheckResult(
                ok=True,
                message="directory reachable; the account is registered on first use",
                details=details,
            )
        try:
            keyed = self.account.session(key, register=False)
        except SslClmError as exc:
            return CheckResult(ok=False, message=exc.message, details=details)
        try:
            account = self.account.query(keyed)
        except SslClmError as exc:
            return CheckResult(ok=False, message=exc.message, details=details)
        finally:
            keyed.close()
        if account is None:
            return CheckResult(
                ok=True,
                message="directory reachable; the account will be registered again on first use",
                details=details,
            )
        # The library leaves Registration.status undecoded (a str), unlike Order and Authorization.
        status = str(getattr(account.status, "name", account.status or "valid"))
        details["account_status"] = status
        if status != "valid":
            return CheckResult(ok=False, message=f"the ACME account is {status}", details=details)
        return CheckResult(ok=True, message="directory reachable and the account is valid", details=details)

    def issue(self, request: IssueRequest) -> IssueResult:
        """Order, validate, finalize and download a certificate for exactly ``request.names``.

        Raises ``CARejectedError`` for a CSR that does not parse or verify or asks for other names,
        an idempotency key reused with another CSR, a name the CA refuses, and a failed validation
        (naming the challenge and the CA's reason); ``CAUnavailableError`` when the server cannot be
        reached, is overloaded or rate-limits, or the order is not done within
        ``order_timeout_seconds`` — the retry then resumes the same order.
        """
        key_id = _key_id(request.idempotency_key)
        csr_digest = hashlib.sha256(request.csr_pem.strip()).hexdigest()
        done = self.context.state.get(f"issued/{key_id}")
        if done is not None:
            return self._replay(done, csr_digest)
        try:
            csr = load_csr(request.csr_pem)
            asked = csr_names(csr)
        except InvalidInputError as exc:
            raise CARejectedError(exc.message, field="csr_pem") from None
        try:
            wanted = normalize_names(request.names)
        except InvalidInputError as exc:
            raise CARejectedError(exc.message, field="names") from None
        if asked != wanted or not wanted:
            raise CARejectedError(
                f"the CSR asks for {sorted(asked) or 'no names'} but the request is for {sorted(wanted)}",
                field="names",
            )

        def run(session: Session) -> IssueResult:
            url = self._order_for(session, key_id, csr_digest, wanted)
            key = self.account.key()
            assert key is not None
            driver = OrderDriver(
                session,
                solver_for(self.settings, self.context.state, key),
                Timing(self.settings.order_timeout_seconds, self.settings.poll_interval_seconds),
                self.context.logger,
            )
            return self._record(key_id, csr_digest, driver.run(url, csr))

        return self._with_session(run)

    def _replay(self, done: bytes, csr_digest: str) -> IssueResult:
        record = json.loads(done)
        if record["csr"] != csr_digest:
            raise CARejectedError(
                "this idempotency key was already used for a different CSR", field="idempotency_key"
            )
        return IssueResult.issued(
            record["certificate"].encode(),
            tuple(pem.encode() for pem in record["chain"]),
            serial=record["serial"],
        )

    def _order_for(self, session: Session, key_id: str, csr_digest: str, names: frozenset[str]) -> str:
        """The URL of the order serving this idempotency key: the stored one while it is usable,
        otherwise a new one, recorded before anything else happens to it.
        """
        state_key = f"order/{key_id}"
        stored = self.context.state.get(state_key)
        if stored is not None:
            record = json.loads(stored)
            if record["csr"] != csr_digest:
                raise CARejectedError(
                    "this idempotency key was already used for a different CSR", field="idempotency_key"
                )
            if self._usable(session, record["url"]):
                return str(record["url"])
        url, _ = session.new_order(_identifiers(names))
        record_bytes = json.dumps({"url": url, "csr": csr_digest, "names": sorted(names)}).encode()
        if stored is None:
            winner = self.context.state.put_if_absent(state_key, record_bytes)
            if winner is not None:
                # Another worker placed an order for this key at the same moment; use that one.
                other = str(json.loads(winner)["url"])
                self.context.logger.warning(
                    "order %s lost a race for its idempotency key; using %s", url, other
                )
                return other
        else:
            self.context.state.put(state_key, record_bytes)
        self.context.logger.info("placed ACME order %s for %s", url, ", ".join(sorted(names)))
        return url

    def _usable(self, session: Session, url: str) -> bool:
        try:
            order = session.get_order(url)
        except CARejectedError as exc:
            # Gone (404) or no longer ours: a new order is the only way forward.
            self.context.logger.info(
                "stored ACME order %s is unusable (%s); placing a new one", url, exc.message
            )
            return False
        if order.status == messages.STATUS_INVALID:
            self.context.logger.info("stored ACME order %s is invalid; placing a new one", url)
            return False
        return True

    def _record(self, key_id: str, csr_digest: str, fullchain: str) -> IssueResult:
        leaf, chain = split_chain(fullchain)
        serial = f"{load_certificate(leaf).serial_number:x}"
        state = self.context.state
        state.put(f"cert/{_padded(serial)}", leaf)
        state.put("chain", json.dumps([pem.decode() for pem in chain]).encode())
        record = {
            "certificate": leaf.decode(),
            "chain": [pem.decode() for pem in chain],
            "serial": serial,
            "csr": csr_digest,
        }
        state.put(f"issued/{key_id}", json.dumps(record).encode())
        state.delete(f"order/{key_id}")
        return IssueResult.issued(leaf, chain, serial=serial)

    def revoke(self, request: RevokeRequest) -> RevokeResult:
        """Revoke with the request's reason code, signed by the account that ordered the certificate.

        A certificate named only by serial must have been issued through this connection. Raises
        ``CARejectedError`` for a certificate the server does not know or will not let this account
        revoke; an already revoked one answers ``already_revoked=True``.
        """
        pem = request.certificate_pem
        if pem is None:
            assert request.serial is not None
            stored = self.context.state.get(f"cert/{_padded(request.serial)}")
            if stored is None:
                raise CARejectedError(
                    f"no certificate with serial {request.serial} was issued through this ACME connection",
                    field="serial",
                )
            pem = stored
        try:
            certificate = load_certificate(pem)
        except CertificateFormatError as exc:
            raise InvalidInputError(exc.message, field="certificate_pem") from None
        serial = f"{certificate.serial_number:x}"

        def run(session: Session) -> RevokeResult:
            try:
                session.revoke(certificate, request.reason.code)
            except CARejectedError as exc:
                if exc.data.get("acme_error") == "alreadyRevoked":
                    return RevokeResult(serial=serial, revoked_at=self.context.now(), already_revoked=True)
                raise
            return RevokeResult(serial=serial, revoked_at=self.context.now())

        return self._with_session(run)

    def renewal_info(self, request: RenewalInfoRequest) -> RenewalInfoResult:
        """The server's suggested renewal window (RFC 9773).

        Raises ``NotSupportedError`` when the server's directory has no ``renewalInfo``,
        ``InvalidInputError`` for a certificate without an authority key identifier, and
        ``CARejectedError`` when the server does not know the certificate.
        """
        identifier = cert_id(request.certificate_pem)
        session = self.account.anonymous_session()
        try:
            if not session.has("renewalInfo"):
                raise NotSupportedError(
                    f"the ACME server at {self.settings.directory_url} offers no renewal information",
                    type_key=self.type_key,
                    capability=Capability.ARI.value,
                )
            url = f"{str(session.directory['renewalInfo']).rstrip('/')}/{identifier}"
            response = session.get("fetch renewal information", url)
            body = call("read renewal information", response.json)
            return parse_renewal_info(
                body, retry_header=response.headers.get("Retry-After"), now=self.context.now(), url=url
            )
        finally:
            session.close()

    def get_chain(self, request: ChainRequest = CHAIN) -> ChainResult:
        """With ``management_url``: the server's current intermediate and root from its management API.
        Otherwise the chain of the last certificate issued through this connection (empty before the
        first). A self-signed last element is offered as the trust anchor.
        """
        if self.settings.management_url is not None:
            base = self.settings.management_url
            session = self.account.anonymous_session()
            try:
                intermediate = session.get(
                    "fetch intermediate", f"{base}/intermediates/0", accept=PEM_CHAIN
                ).content
                root = session.get("fetch root", f"{base}/roots/0", accept=PEM_CHAIN).content
            finally:
                session.close()
            intermediate_pem, _ = split_chain(intermediate)
            root_pem, _ = split_chain(root)
            return ChainResult(chain_pem=(intermediate_pem, root_pem), root_pem=root_pem)
        stored = self.context.state.get("chain")
        chain = tuple(str(pem).encode() for pem in json.loads(stored)) if stored is not None else ()
        anchor = chain[-1] if chain and extract_info(load_certificate(chain[-1])).self_signed else None
        return ChainResult(chain_pem=chain, root_pem=anchor)
