"""HTTPS to a step-ca: trust in its root, requests, and its errors mapped to SSL-CLM errors.

step-ca answers errors as ``{"status": <code>, "message": "..."}``. A 4xx means the request itself is
refused (bad or reused token, a CSR or duration the provisioner does not allow, an already revoked
serial) and becomes :class:`~sslclm.errors.CARejectedError` carrying step-ca's message; a 5xx, 429, a
timeout or a connection failure becomes :class:`~sslclm.errors.CAUnavailableError`.

Trust: the root comes from the config (``root_pem``) or is bootstrapped from its SHA-256 fingerprint
the way ``step ca bootstrap`` does it: ``GET /root/<fingerprint>`` without verifying TLS, keep the
answer only if its hash is the pinned one, then verify every connection against that root.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from sslclm.errors import (
    CARejectedError,
    CAUnavailableError,
    CertificateFormatError,
    ConnectorError,
    InvalidInputError,
)
from sslclm.pki import certificate_to_pem, extract_info, load_bundle, load_certificate
from sslclm.spi import ConnectorContext

from .config import StepCaConfig

ROOT_STATE_KEY = "root"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def split_pems(data: bytes, what: str) -> list[bytes]:
    """Every certificate in a PEM bundle, re-encoded one by one; ``ConnectorError`` when there is none."""
    try:
        certificates = load_bundle(data).certificates
    except CertificateFormatError as exc:
        raise ConnectorError(f"step-ca sent no usable {what}: {exc.message}", retryable=False) from None
    if not certificates:
        raise ConnectorError(f"step-ca sent no {what}", retryable=False)
    return [certificate_to_pem(cert) for cert in certificates]


def _refuses_certificate(failure: ssl.SSLError) -> bool:
    """Whether the server ended the handshake with an alert about the client's certificate (our own
    verification of the server fails with CERTIFICATE_VERIFY_FAILED instead, never with an alert).
    """
    reason = str(getattr(failure, "reason", "") or failure)
    return "ALERT" in reason.upper() and ("CERTIFICATE" in reason.upper() or "UNKNOWN_CA" in reason.upper())


@dataclass(frozen=True, slots=True)
class Trust:
    """The root certificates this connection trusts, and a TLS context verifying against them."""

    roots_pem: tuple[bytes, ...]

    def ssl_context(self, identity: ClientIdentity | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata="".join(pem.decode() for pem in self.roots_pem))
        if identity is not None:
            identity.load_into(context)
        return context


@dataclass(frozen=True, slots=True)
class ClientIdentity:
    """A certificate (with its chain) and its private key to present for mutual TLS."""

    chain_pem: tuple[bytes, ...]
    key_pem: bytes = field(repr=False)
    scratch: Path  # owner-only files live here only while ``ssl`` loads them

    def load_into(self, context: ssl.SSLContext) -> None:
        """Raises ``InvalidInputError`` (field ``key_pem``) when the key does not load or is not the
        certificate's.
        """
        # ``ssl`` reads certificates and keys only from files; they exist for the instant it takes.
        with _owner_only_files(self.scratch, b"".join(self.chain_pem), self.key_pem) as (crt, key):
            try:
                context.load_cert_chain(str(crt), str(key))
            except ssl.SSLError as exc:
                raise InvalidInputError(
                    f"the key does not go with the certificate ({exc.reason or 'unreadable'})",
                    field="key_pem",
                ) from None


class StepCaClient:
    """Requests to one step-ca, as one gateway instance makes them (safe to share between threads)."""

    def __init__(self, settings: StepCaConfig, context: ConnectorContext) -> None:
        self.settings = settings
        self.context = context
        self._trust: Trust | None = None
        self._lock = threading.Lock()

    # --- trust ------------------------------------------------------------------------------------

    def trust(self) -> Trust:
        with self._lock:
            if self._trust is None:
                self._trust = self._load_trust()
            return self._trust

    def _load_trust(self) -> Trust:
        pinned = self.settings.root_fingerprint
        if self.settings.root_pem is not None:
            roots = self._configured_roots(self.settings.root_pem)
            if pinned is not None:
                matching = [pem for pem in roots if fingerprint(pem) == pinned]
                if not matching:
                    raise ConnectorError(
                        f"no certificate in root_pem has the fingerprint {pinned}",
                        retryable=False,
                        field="root_fingerprint",
                    )
                roots = matching
            return Trust(tuple(roots))
        assert pinned is not None  # the config requires one of the two
        stored = self.context.state.get(ROOT_STATE_KEY)
        if stored is not None and fingerprint(stored) == pinned:
            return Trust((stored,))
        root = self._bootstrap_root(pinned)
        self.context.state.put(ROOT_STATE_KEY, root)
        return Trust((root,))

    def _configured_roots(self, value: str) -> list[bytes]:
        if "-----BEGIN CERTIFICATE-----" in value:
            data = value.encode()
        else:
            try:
                data = Path(value).read_bytes()
            except OSError as exc:
                raise ConnectorError(
                    f"cannot read root_pem {value}: {exc.strerror or exc}", retryable=False, field="root_pem"
                ) from None
        try:
            return split_pems(data, "root certificate")
        except ConnectorError as exc:
            raise ConnectorError(
                f"root_pem holds no certificate: {exc.message}", retryable=False, field="root_pem"
            ) from None

    def _bootstrap_root(self, pinned: str) -> bytes:
        # Unverified on purpose: nothing is trusted yet. The answer is accepted only if its SHA-256 is
        # the pinned fingerprint, which an attacker cannot forge.
        response = self._send("bootstrap the root certificate", "GET", f"/root/{pinned}", verify=False)
        body = _json(response, "bootstrap the root certificate")
        pem = body.get("ca") if isinstance(body, dict) else None
        if not isinstance(pem, str):
            raise ConnectorError("step-ca's /root answer has no certificate", retryable=False)
        root = split_pems(pem.encode(), "root certificate")[0]
        if fingerprint(root) != pinned:
            raise ConnectorError(
                f"the root step-ca sent has fingerprint {fingerprint(root)}, not the pinned {pinned}",
                retryable=False,
                field="root_fingerprint",
            )
        return root

    # --- requests ---------------------------------------------------------------------------------

    def get(self, action: str, path: str) -> httpx.Response:
        return self._send(action, "GET", path)

    def get_json(self, action: str, path: str) -> Any:
        return _json(self.get(action, path), action)

    def post_json(
        self,
        action: str,
        path: str,
        body: dict[str, Any] | None,
        *,
        identity: ClientIdentity | None = None,
    ) -> Any:
        return _json(self._send(action, "POST", path, body=body, identity=identity), action)

    def _send(
        self,
        action: str,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        verify: bool = True,
        identity: ClientIdentity | None = None,
    ) -> httpx.Response:
        url = f"{self.settings.ca_url}{path}"
        tls: ssl.SSLContext | bool = self.trust().ssl_context(identity) if verify else False
        try:
            with httpx.Client(verify=tls, timeout=self.settings.request_timeout_seconds) as client:
                response = client.request(method, url, json=body)
        except httpx.TimeoutException:
            raise CAUnavailableError(
                f"{action}: step-ca at {self.settings.ca_url} did not answer in time"
            ) from None
        except httpx.HTTPError as exc:
            failure = _tls_failure(exc)
            if failure is not None and identity is not None and _refuses_certificate(failure):
                raise CARejectedError(
                    f"{action}: step-ca refused the client certificate ({_first_line(failure)}); it "
                    "accepts only its own unexpired certificates"
                ) from None
            if failure is not None:
                raise CAUnavailableError(
                    f"{action}: TLS with step-ca failed ({_first_line(failure)}); "
                    "check root_pem / root_fingerprint"
                ) from None
            raise CAUnavailableError(
                f"{action}: cannot reach step-ca at {self.settings.ca_url} ({_first_line(exc)})"
            ) from None
        if response.status_code >= 500 or response.status_code == 429:
            raise CAUnavailableError(
                f"{action}: step-ca answered HTTP {response.status_code}: {error_message(response)}",
                http_status_code=response.status_code,
            )
        if response.status_code >= 400:
            raise CARejectedError(
                f"{action}: step-ca refused the request (HTTP {response.status_code}): "
                f"{error_message(response)}",
                http_status_code=response.status_code,
            )
        return response


def fingerprint(pem: bytes) -> str:
    """The SHA-256 fingerprint (lowercase hex) of a PEM certificate's DER."""
    return extract_info(load_certificate(pem)).fingerprint_sha256


def error_message(response: httpx.Response) -> str:
    """step-ca's own explanation of an error answer, else the HTTP status text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"].strip():
        return str(body["message"]).strip()[:1000]
    text = response.text.strip().splitlines()
    return text[0][:300] if text else f"HTTP {response.status_code} {response.reason_phrase}"


def _json(response: httpx.Response, action: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ConnectorError(
            f"{action}: step-ca answered something that is not JSON", retryable=False
        ) from None


@contextmanager
def _owner_only_files(directory: Path, chain: bytes, key: bytes) -> Iterator[tuple[Path, Path]]:
    directory.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    try:
        for suffix, content in (("crt", chain), ("key", key)):
            # mkstemp creates the file with mode 0600.
            handle, name = tempfile.mkstemp(prefix="step-client-", suffix=f".{suffix}", dir=directory)
            made.append(Path(name))
            with os.fdopen(handle, "wb") as file:
                file.write(content)
        yield made[0], made[1]
    finally:
        for path in made:
            path.unlink(missing_ok=True)


def directly_issued(certificate: x509.Certificate, issuers: Sequence[bytes]) -> bytes | None:
    """The PEM among ``issuers`` whose key signed ``certificate``, or None."""
    for pem in issuers:
        try:
            certificate.verify_directly_issued_by(load_certificate(pem))
        except (ValueError, TypeError, InvalidSignature):
            continue
        return pem
    return None
