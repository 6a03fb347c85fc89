"""What the fake vendor CAs share: a CA that really signs, a threaded HTTPS server on loopback, and faults.

Each fake (:mod:`.adcs`, :mod:`.digicert`, :mod:`.entrust`, :mod:`.sectigo`) is an :class:`App` that
answers one vendor's documented endpoints; :class:`FakeServer` serves it over real TLS on 127.0.0.1
(optionally asking for a client certificate) so the connectors and the vendors' own client libraries
talk to it exactly as they would to the real service.

Faults are queued on the app and consumed by the next matching requests: an HTTP status with the
vendor's error body (``status``), a rate limit (``429`` with ``Retry-After``), a body that is not what the
API promises (``garbage``), or a connection closed after the request was read (``drop``: the client
cannot know whether the CA acted).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import ssl
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sslclm.errors import InvalidInputError
from sslclm.pki import (
    certificate_to_pem,
    create_ca,
    generate_private_key,
    issue_server_certificate,
    private_key_to_pem,
    sign_csr,
)
from sslclm.pki.ca_tools import create_root_ca, load_csr


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.PEM).decode()


class FakeCA:
    """A root and an issuing CA that sign like a commercial CA: names from the order, key from the CSR.

    ``wrong_key`` makes it misbehave the way a broken CA would: the certificate certifies a key of its
    own instead of the CSR's.
    """

    def __init__(self, name: str) -> None:
        self.root_key, self.root = create_root_ca(f"{name} Root CA")
        self.issuing_key = generate_private_key("EC-P256")
        intermediate_csr = load_csr(
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name.from_rfc4514_string(f"CN={name} Issuing CA"))
            .sign(self.issuing_key, hashes.SHA256())
            .public_bytes(Encoding.PEM)
        )
        self.issuing = sign_csr(
            self.root_key,
            self.root,
            intermediate_csr,
            valid_days=3000,
            is_ca=True,
            path_length=0,
            extended_key_usage=(),
        )
        self.wrong_key = False
        self.serial_counter = 0
        self._lock = threading.Lock()

    @property
    def root_pem(self) -> str:
        return pem(self.root)

    @property
    def issuing_pem(self) -> str:
        return pem(self.issuing)

    def check_csr(self, csr_pem: str | bytes) -> x509.CertificateSigningRequest:
        """The parsed CSR; ``ValueError`` with a vendor-style reason when it is unusable."""
        data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
        try:
            return load_csr(data)
        except InvalidInputError as exc:
            raise ValueError(exc.message) from None

    def issue(
        self,
        csr: x509.CertificateSigningRequest,
        names: Sequence[str],
        *,
        common_name: str | None = None,
        days: int = 90,
    ) -> x509.Certificate:
        """A TLS server certificate for the CSR's key with exactly ``names`` (DNS names, IP addresses) in
        its subjectAltName, as a commercial CA builds it from the order rather than from the CSR."""
        public_key = self.stranger_key().public_key() if self.wrong_key else csr.public_key()
        general: list[x509.GeneralName] = []
        for name in dict.fromkeys(names):
            try:
                general.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                general.append(x509.DNSName(name))
        cn = common_name or (names[0] if names and len(names[0]) <= 64 else None)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
        start = datetime.now(UTC) - timedelta(minutes=5)
        with self._lock:
            self.serial_counter += 1
            serial = (x509.random_serial_number() >> 32 << 32) | self.serial_counter
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.issuing.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(general), critical=not cn)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.issuing_key.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
            .sign(self.issuing_key, hashes.SHA256())  # type: ignore[arg-type]
        )

    def stranger_key(self) -> Any:
        return generate_private_key("EC-P256")


@dataclass
class TlsMaterial:
    """The listener certificate of a fake and the CA a client must trust for it."""

    ca_pem: str
    cert_path: Path
    key_path: Path

    @classmethod
    def create(cls, directory: Path, name: str) -> TlsMaterial:
        directory.mkdir(parents=True, exist_ok=True)
        ca_key, ca_cert = create_ca(f"{name} TLS Test CA")
        key, cert = issue_server_certificate(
            ca_key, ca_cert, hostnames=["localhost"], ip_addresses=["127.0.0.1"], valid_days=30
        )
        cert_path, key_path = directory / f"{name}-tls.pem", directory / f"{name}-tls.key"
        cert_path.write_bytes(certificate_to_pem(cert))
        key_path.write_bytes(private_key_to_pem(key))
        return cls(ca_pem=certificate_to_pem(ca_cert).decode(), cert_path=cert_path, key_path=key_path)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    peer_certificate: bytes | None  # DER of the client certificate, when one was presented
    # Lives as long as the TCP connection: connection-based authentication (NTLM) keeps its state here.
    connection_state: dict[str, Any] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def basic_auth(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        return user, password


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
        return cls(status, json.dumps(payload).encode(), "application/json", headers or {})

    @classmethod
    def text(cls, status: int, text: str, content_type: str = "text/plain") -> Response:
        return cls(status, text.encode(), content_type)


@dataclass
class Fault:
    kind: str  # "status", "429", "garbage", "drop"
    status: int = 500
    retry_after: int = 1
    path: str | None = None  # only requests whose path starts with this
    method: str | None = None


class App(ABC):
    """A vendor API: subclasses implement :meth:`route` and the vendor's error body."""

    name = "fake"

    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()

    def fail_next(
        self,
        kind: str,
        *,
        count: int = 1,
        status: int = 500,
        retry_after: int = 1,
        path: str | None = None,
        method: str | None = None,
    ) -> None:
        with self.lock:
            self.faults.extend(Fault(kind, status, retry_after, path, method) for _ in range(count))

    def _take_fault(self, request: Request) -> Fault | None:
        with self.lock:
            for index, fault in enumerate(self.faults):
                if fault.path is not None and not request.path.startswith(fault.path):
                    continue
                if fault.method is not None and fault.method != request.method:
                    continue
                return self.faults.pop(index)
        return None

    def error(self, status: int, message: str) -> Response:
        return Response.json(status, {"errors": [{"message": message}]})

    def garbage(self) -> Response:
        return Response(200, b"<html><body>Service temporarily moved</body></html>", "text/html")

    def handle(self, request: Request) -> Response | None:
        """The response, or None to drop the connection without one."""
        with self.lock:
            self.requests.append((request.method, request.path))
        fault = self._take_fault(request)
        if fault is not None:
            if fault.kind == "drop":
                self.route(request)  # the CA acts, but the answer never arrives
                return None
            if fault.kind == "429":
                response = self.error(429, "rate limit exceeded; slow down")
                response.headers["Retry-After"] = str(fault.retry_after)
                return response
            if fault.kind == "garbage":
                return self.garbage()
            return self.error(fault.status, f"injected failure {fault.status}")
        return self.route(request)

    @abstractmethod
    def route(self, request: Request) -> Response:
        """The vendor's answer to one request."""


def _handler_for(app: App) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection_state: dict[str, Any] = {}

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            split = urlsplit(self.path)
            peer = None
            if isinstance(self.connection, ssl.SSLSocket):
                peer = self.connection.getpeercert(binary_form=True)
            request = Request(
                method=self.command,
                path=split.path,
                query=parse_qs(split.query, keep_blank_values=True),
                headers={k: v for k, v in self.headers.items()},
                body=body,
                peer_certificate=peer,
                connection_state=self.connection_state,
            )
            response = app.handle(request)
            if response is None:
                self.close_connection = True
                self.connection.close()
                return
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Refused TLS handshakes (a client without the right certificate) are part of the tests.
        pass


class FakeServer:
    """Serves ``app`` over HTTPS on 127.0.0.1; ``client_ca_pem`` makes a client certificate mandatory."""

    def __init__(self, app: App, tls: TlsMaterial, *, client_ca_pem: str | None = None) -> None:
        self.app = app
        self.tls = tls
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls.cert_path), str(tls.key_path))
        if client_ca_pem is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cadata=client_ca_pem)
        self._server = _QuietServer(("127.0.0.1", 0), _handler_for(app))
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"fake-{app.name}", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


Clock = Callable[[], datetime]


def pkcs7_der(certificates: Sequence[x509.Certificate]) -> bytes:
    """A degenerate PKCS#7 (certificates only), as CAs hand out chains."""
    return pkcs7.serialize_certificates(list(certificates), Encoding.DER)
