"""The ``step-ca`` CA gateway: certificates from Smallstep's step-ca through a JWK provisioner.

Issuance is ``POST /1.0/sign`` with the CSR and a one-time token naming exactly the requested names;
revocation is ``POST /1.0/revoke`` (passive: recorded in step-ca's database, which serves its CRL and
refuses renewals of that certificate) with a token whose subject is the serial; :meth:`StepCaGateway.renew`
renews a certificate over mutual TLS (``POST /1.0/renew``, authenticated by the certificate and its
key, same key and names, new validity). ``check`` and ``get_chain`` read ``/health``, ``/roots.pem``,
``/provisioners`` and, where the server has it, ``/intermediates.pem``.

State entries:

- ``issued/<sha256 of idempotency key>`` — the certificate answered for that key (and the CSR's
  digest), so a retry returns it instead of signing again. step-ca itself has no idempotency: if a
  worker dies between step-ca's answer and this record, the retry signs a second certificate for the
  same CSR and the first one is never used;
- ``cert/<serial, 40 hex digits>`` — each certificate issued or renewed, so ``revoke`` works from a
  serial alone;
- ``chain`` — the issuing chain of the last answer, for ``get_chain`` on servers without
  ``/intermediates.pem`` (step-ca before 0.24);
- ``root`` — the root bootstrapped from ``root_fingerprint``.
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import timedelta
from typing import Any, ClassVar, cast

from cryptography import x509
from pydantic import BaseModel

from sslclm.errors import (
    CARejectedError,
    CertificateFormatError,
    ConnectorError,
    InvalidInputError,
    SslClmError,
)
from sslclm.pki import extract_info, load_certificate, public_key_sha256
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
    RevokeRequest,
    RevokeResult,
)
from sslclm.spi.base import CHECK
from sslclm.spi.ca import CHAIN

from .client import ClientIdentity, StepCaClient, directly_issued, split_pems
from .config import StepCaConfig
from .tokens import ProvisionerKey, one_time_token

_SERIAL_DIGITS = 40
_PROVISIONER_PAGES = 50


def _key_id(idempotency_key: str) -> str:
    return hashlib.sha256(idempotency_key.encode()).hexdigest()


def _padded(serial_hex: str) -> str:
    return f"{int(serial_hex, 16):0{_SERIAL_DIGITS}x}"


def _names_of(certificate: x509.Certificate) -> frozenset[str]:
    sans = extract_info(certificate).sans
    return normalize_names([san.split(":", 1)[1] for san in sans if san.startswith(("DNS:", "IP:"))])


class StepCaGateway(CAGateway):
    """Certificates from a Smallstep step-ca, authorized by a JWK provisioner's one-time tokens."""

    type_key: ClassVar[str] = "step-ca"
    display_name: ClassVar[str] = "Smallstep step-ca"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.ISSUE, Capability.REVOKE})
    Config: ClassVar[type[BaseModel]] = StepCaConfig

    def __init__(self, config: BaseModel, context: ConnectorContext) -> None:
        super().__init__(config, context)
        self.settings = cast(StepCaConfig, config)  # the base class checked the type
        self.client = StepCaClient(self.settings, context)
        self._key: ProvisionerKey | None = None
        self._key_lock = threading.Lock()

    # --- the provisioner ----------------------------------------------------------------------------

    def provisioner_key(self) -> ProvisionerKey:
        """The provisioner's signing key: from the config, decrypted from the configured JWE, or
        decrypted from the ``encryptedKey`` step-ca publishes for the provisioner.
        """
        with self._key_lock:
            if self._key is None:
                self._key = self._load_key()
            return self._key

    def _load_key(self) -> ProvisionerKey:
        kid = self.settings.provisioner_kid
        if self.settings.provisioner_jwk is not None:
            data = json.loads(self.settings.provisioner_jwk.get_secret_value())
            return ProvisionerKey.from_jwk(data, kid=kid, field="provisioner_jwk")
        assert self.settings.provisioner_password is not None  # the config requires one of the two
        encrypted = self.settings.provisioner_encrypted_key
        if encrypted is None:
            listed = self._find_provisioner()
            encrypted = listed.get("encryptedKey")
            if not isinstance(encrypted, str) or not encrypted:
                raise ConnectorError(
                    f"step-ca publishes no encrypted key for provisioner {self.settings.provisioner!r}; "
                    "set provisioner_encrypted_key or provisioner_jwk",
                    retryable=False,
                    field="provisioner_encrypted_key",
                )
            kid = kid or str(listed.get("key", {}).get("kid") or "") or None
        password = self.settings.provisioner_password.get_secret_value().encode()
        return ProvisionerKey.from_encrypted(encrypted, password, kid=kid)

    def _find_provisioner(self) -> dict[str, Any]:
        """The configured provisioner as ``GET /provisioners`` lists it (following its pages)."""
        cursor = ""
        for _ in range(_PROVISIONER_PAGES):
            page = self.client.get_json("list provisioners", f"/provisioners?cursor={cursor}&limit=100")
            entries = page.get("provisioners") if isinstance(page, dict) else None
            if not isinstance(entries, list):
                raise ConnectorError("step-ca's provisioner list is malformed", retryable=False)
            for entry in entries:
                if isinstance(entry, dict) and entry.get("name") == self.settings.provisioner:
                    if entry.get("type") != "JWK":
                        raise ConnectorError(
                            f"provisioner {self.settings.provisioner!r} is of type {entry.get('type')}, "
                            "not JWK",
                            retryable=False,
                            field="provisioner",
                        )
                    return entry
            cursor = str(page.get("nextCursor") or "")
            if not cursor:
                break
        raise ConnectorError(
            f"step-ca has no provisioner named {self.settings.provisioner!r}",
            retryable=False,
            field="provisioner",
        )

    def _token(self, audience_path: str, subject: str, sans: list[str] | None = None) -> str:
        return one_time_token(
            self.provisioner_key(),
            provisioner=self.settings.provisioner,
            subject=subject,
            audience=f"{self.settings.ca_url}{audience_path}",
            now=self.context.now(),
            lifetime=timedelta(seconds=self.settings.token_lifetime_seconds),
            sans=sans,
        )

    # --- SPI ----------------------------------------------------------------------------------------

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        """Reach the CA over verified TLS, confirm the configured root is among its roots and that the
        provisioner exists, is a JWK provisioner and holds the public half of the configured key.
        Signs nothing and spends no token.
        """
        details: dict[str, Any] = {"ca_url": self.settings.ca_url, "provisioner": self.settings.provisioner}
        try:
            health = self.client.get_json("health check", "/health")
            details["health"] = health.get("status") if isinstance(health, dict) else None
            version = self.client.get_json("read version", "/version")
            details["version"] = version.get("version") if isinstance(version, dict) else None
            served = split_pems(self.client.get("fetch roots", "/roots.pem").content, "root certificate")
            trusted = set(self.client.trust().roots_pem)
            details["roots"] = len(served)
            if not trusted & set(served):
                return CheckResult(
                    ok=False,
                    message="the configured root is not among the roots step-ca serves (/roots.pem)",
                    details=details,
                )
            listed = self._find_provisioner()
            details["provisioner_claims"] = listed.get("claims") or {}
            key = self.provisioner_key()
        except SslClmError as exc:
            return CheckResult(ok=False, message=exc.message, details=details)
        listed_key = listed.get("key")
        public: dict[str, Any] = listed_key if isinstance(listed_key, dict) else {}
        details["kid"] = key.kid
        if not key.public_matches(public):
            return CheckResult(
                ok=False,
                message=f"the configured key is not the key of provisioner {self.settings.provisioner!r}",
                details=details,
            )
        if public.get("kid") and public.get("kid") != key.kid:
            return CheckResult(
                ok=False,
                message=f"step-ca knows this provisioner's key as kid {public.get('kid')!r}, not {key.kid!r}",
                details=details,
            )
        return CheckResult(
            ok=True, message="step-ca reachable and the JWK provisioner key matches", details=details
        )

    def issue(self, request: IssueRequest) -> IssueResult:
        """Sign ``request.csr_pem`` for exactly ``request.names`` with a fresh one-time token.

        Raises ``CARejectedError`` for a CSR that does not parse or verify or asks for other names or
        another common name, an idempotency key reused with another CSR, and anything step-ca refuses
        (token not accepted, a validity outside the provisioner's limits, a name its policy forbids),
        with step-ca's message; ``CAUnavailableError`` when step-ca cannot be reached or fails; and
        ``ConnectorError`` when it answers with a certificate for another key or other names, which is
        then not recorded.
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
            wanted = normalize_names(request.names or [request.common_name or ""])
        except InvalidInputError as exc:
            raise CARejectedError(exc.message, field="names") from None
        if asked != wanted:
            raise CARejectedError(
                f"the CSR asks for {sorted(asked) or 'no names'} but the request is for {sorted(wanted)}",
                field="names",
            )
        subject = self._subject(csr, request)
        body: dict[str, Any] = {
            "csr": request.csr_pem.decode("ascii", errors="replace"),
            "ott": self._token("/1.0/sign", subject, sorted(wanted)),
        }
        hours = request.validity_days * 24 if request.validity_days else self.settings.default_validity_hours
        if hours:
            body["notAfter"] = f"{hours}h"
        answer = self.client.post_json("sign", "/1.0/sign", body)
        leaf, chain = self._certificates(answer, "sign")
        issued = load_certificate(leaf)
        if public_key_sha256(issued) != public_key_sha256(csr.public_key()):
            raise ConnectorError(
                "step-ca returned a certificate for another key than the CSR's; it is not recorded",
                retryable=False,
            )
        if _names_of(issued) != wanted:
            raise ConnectorError(
                f"step-ca returned a certificate for {sorted(_names_of(issued))}, not the requested "
                f"{sorted(wanted)}; it is not recorded",
                retryable=False,
            )
        serial = f"{issued.serial_number:x}"
        self._remember(leaf, chain, serial)
        record = json.dumps(
            {
                "certificate": leaf.decode(),
                "chain": [pem.decode() for pem in chain],
                "serial": serial,
                "csr": csr_digest,
            }
        ).encode()
        winner = self.context.state.put_if_absent(f"issued/{key_id}", record)
        if winner is not None:
            # Another worker served the same key at the same moment; answer what it recorded.
            self.context.logger.warning("step-ca issuance raced for one idempotency key; keeping the first")
            return self._replay(winner, csr_digest)
        self.context.logger.info("step-ca issued serial %s for %s", serial, ", ".join(sorted(wanted)))
        return IssueResult.issued(leaf, chain, serial=serial)

    def _subject(self, csr: x509.CertificateSigningRequest, request: IssueRequest) -> str:
        # step-ca requires the token's subject to equal the CSR's common name when it has one, and
        # makes the subject the certificate's common name.
        common_names = [
            attribute.value
            for attribute in csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
            if isinstance(attribute.value, str)
        ]
        if common_names:
            if request.common_name and request.common_name != common_names[0]:
                raise CARejectedError(
                    f"the CSR's common name {common_names[0]!r} is not the requested {request.common_name!r}",
                    field="common_name",
                )
            return common_names[0]
        return request.common_name or request.names[0]

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

    def _certificates(self, answer: Any, action: str) -> tuple[bytes, tuple[bytes, ...]]:
        """The leaf and its issuing chain from a sign or renew answer (``crt``, ``ca``, ``certChain``)."""
        if not isinstance(answer, dict) or not isinstance(answer.get("crt"), str):
            raise ConnectorError(f"{action}: step-ca's answer has no certificate", retryable=False)
        leaf = split_pems(answer["crt"].encode(), "certificate")[0]
        listed = answer.get("certChain")
        if isinstance(listed, list) and listed and all(isinstance(pem, str) for pem in listed):
            chain = [pem for text in listed for pem in split_pems(text.encode(), "certificate chain")]
            chain = [pem for pem in chain if pem != leaf]
        elif isinstance(answer.get("ca"), str):
            chain = split_pems(answer["ca"].encode(), "issuing CA certificate")
        else:
            chain = []
        return leaf, tuple(chain)

    def _remember(self, leaf: bytes, chain: tuple[bytes, ...], serial: str) -> None:
        state = self.context.state
        state.put(f"cert/{_padded(serial)}", leaf)
        if chain:
            state.put("chain", json.dumps([pem.decode() for pem in chain]).encode())

    def revoke(self, request: RevokeRequest) -> RevokeResult:
        """Revoke passively: step-ca records it in its database, refuses to renew it from then on and,
        in releases with a CRL, lists it there.

        The certificate must be one this step-ca issued: named by PEM, it must be signed by the CA's
        intermediate or root; named by serial alone, it must have been issued through this
        connection. Otherwise, and for anything step-ca refuses, raises ``CARejectedError``. An
        already revoked certificate answers ``already_revoked=True``.
        """
        pem = request.certificate_pem
        if pem is None:
            assert request.serial is not None
            pem = self.context.state.get(f"cert/{_padded(request.serial)}")
            if pem is None:
                raise CARejectedError(
                    f"no certificate with serial {request.serial} was issued through this step-ca "
                    "connection; pass the certificate itself",
                    field="serial",
                )
        try:
            certificate = load_certificate(pem)
        except CertificateFormatError as exc:
            raise InvalidInputError(exc.message, field="certificate_pem") from None
        serial = f"{certificate.serial_number:x}"
        if self.context.state.get(f"cert/{_padded(serial)}") is None and (
            directly_issued(certificate, self._known_ca_certificates()) is None
        ):
            raise CARejectedError(
                f"the certificate (issuer {certificate.issuer.rfc4514_string()}) was not issued by "
                "this step-ca",
                field="certificate_pem",
            )
        decimal = str(certificate.serial_number)
        body = {
            "serial": decimal,
            "ott": self._token("/1.0/revoke", decimal),
            "reasonCode": request.reason.code,
            "reason": request.reason.value,
            "passive": True,
        }
        try:
            self.client.post_json("revoke", "/1.0/revoke", body)
        except CARejectedError as exc:
            if exc.data.get("http_status_code") == 400 and "already revoked" in exc.message:
                return RevokeResult(serial=serial, revoked_at=self.context.now(), already_revoked=True)
            raise
        self.context.logger.info("step-ca revoked serial %s (%s)", serial, request.reason.value)
        return RevokeResult(serial=serial, revoked_at=self.context.now())

    def _known_ca_certificates(self) -> list[bytes]:
        stored = self.context.state.get("chain")
        known = [str(pem).encode() for pem in json.loads(stored)] if stored is not None else []
        known += self._served_intermediates()
        known += list(self.client.trust().roots_pem)
        return list(dict.fromkeys(known))

    def _served_intermediates(self) -> list[bytes]:
        """``/intermediates.pem`` where the server has it (step-ca 0.24 and later), else nothing."""
        try:
            response = self.client.get("fetch intermediates", "/intermediates.pem")
        except CARejectedError as exc:
            if exc.data.get("http_status_code") in (404, 405):
                return []
            raise
        return split_pems(response.content, "intermediate certificate")

    def renew(self, certificate_pem: bytes, key_pem: bytes, chain_pem: tuple[bytes, ...] = ()) -> IssueResult:
        """Renew a certificate this step-ca issued, authenticating with it and its key over mutual TLS
        (``POST /1.0/renew``): same key and names, a fresh validity of the same length.

        Raises ``CARejectedError`` when step-ca refuses (revoked, expired, renewal disabled for the
        provisioner, not its certificate) and ``InvalidInputError`` when the key does not belong to
        the certificate.
        """
        try:
            old = load_certificate(certificate_pem)
        except CertificateFormatError as exc:
            raise InvalidInputError(exc.message, field="certificate_pem") from None
        identity = ClientIdentity((certificate_pem, *chain_pem), key_pem, self.context.data_dir / "mtls")
        answer = self.client.post_json("renew", "/1.0/renew", None, identity=identity)
        leaf, issued_chain = self._certificates(answer, "renew")
        renewed = load_certificate(leaf)
        if public_key_sha256(renewed) != public_key_sha256(old):
            raise ConnectorError(
                "step-ca renewed the certificate with another key; it is not recorded", retryable=False
            )
        serial = f"{renewed.serial_number:x}"
        self._remember(leaf, issued_chain, serial)
        self.context.logger.info("step-ca renewed serial %x as %s", old.serial_number, serial)
        return IssueResult.issued(leaf, issued_chain, serial=serial)

    def get_chain(self, request: ChainRequest = CHAIN) -> ChainResult:
        """The intermediate(s) (``/intermediates.pem``, else the chain of the last answer) and the
        configured root, which must be among the roots step-ca serves (``/roots.pem``).
        """
        served = split_pems(self.client.get("fetch roots", "/roots.pem").content, "root certificate")
        trusted = list(self.client.trust().roots_pem)
        anchors = [pem for pem in trusted if pem in served] or trusted
        intermediates = self._served_intermediates()
        if not intermediates:
            stored = self.context.state.get("chain")
            intermediates = [str(pem).encode() for pem in json.loads(stored)] if stored is not None else []
        intermediates = [pem for pem in intermediates if pem not in anchors]
        root = anchors[0]
        for intermediate in intermediates:
            issuer = directly_issued(load_certificate(intermediate), anchors)
            if issuer is not None:
                root = issuer
                break
        return ChainResult(chain_pem=(*intermediates, root), root_pem=root)
