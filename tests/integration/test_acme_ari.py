"""ACME Renewal Information (RFC 9773) through the ``acme`` gateway, against a small HTTPS test double
of an ACME server that offers ``renewalInfo`` (Pebble 2.4 does not; test_acme covers that case)."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from sslclm.connectors.acme import AcmeGateway
from sslclm.connectors.acme.ari import cert_id
from sslclm.errors import CARejectedError, CAUnavailableError, ConnectorError, InvalidInputError
from sslclm.pki import certificate_to_pem, create_ca, issue_server_certificate, private_key_to_pem
from sslclm.spi import RenewalInfoRequest
from sslclm.spi.registry import ConnectorRegistry
from sslclm.spi.testing import memory_context
from tests.support.certs import NOW, make_ca, make_leaf, new_key


@dataclass
class AriServer:
    """Serves a directory naming ``renewalInfo`` and, per certificate identifier, a canned reply."""

    url: str
    ca_pem: str
    replies: dict[str, tuple[int, Any, dict[str, str]]] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def ari(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AriServer]:
    directory = tmp_path_factory.mktemp("ari")
    ca_key, ca_cert = create_ca("ARI Test Double CA")
    key, cert = issue_server_certificate(ca_key, ca_cert, hostnames=["localhost"], ip_addresses=["127.0.0.1"])
    (directory / "cert.pem").write_bytes(certificate_to_pem(cert))
    (directory / "key.pem").write_bytes(private_key_to_pem(key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    state = AriServer(url="", ca_pem=certificate_to_pem(ca_cert).decode())

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            base = state.url.rsplit("/", 1)[0]
            if self.path == "/directory":
                endpoints = ("newNonce", "newAccount", "newOrder", "revokeCert")
                body: Any = {name: f"{base}/{name}" for name in endpoints}
                body["renewalInfo"] = f"{base}/renewal-info/"
                self._send(200, body, {})
            elif self.path.startswith("/renewal-info/"):
                identifier = self.path.removeprefix("/renewal-info/")
                state.asked.append(identifier)
                not_found = {"type": "urn:ietf:params:acme:error:malformed", "detail": "unknown certificate"}
                self._send(*state.replies.get(identifier, (404, not_found, {})))
            else:
                self._send(404, {"type": "about:blank"}, {})

        def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            content_type = "application/problem+json" if status >= 400 else "application/json"
            self.send_header("Content-Type", content_type)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.url = f"https://127.0.0.1:{server.server_address[1]}/directory"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def gateway(ari: AriServer, tmp_path: Path) -> AcmeGateway:
    ari.replies.clear()
    config = {"directory_url": ari.url, "ca_bundle": ari.ca_pem}
    built = ConnectorRegistry.from_entry_points().build_ca_gateway("acme", config, memory_context(tmp_path))
    assert isinstance(built, AcmeGateway)
    return built


def _certificate() -> bytes:
    return make_leaf(make_ca("ARI Issuer"), "renew.example.test").pem


def test_the_certificate_identifier_matches_the_rfc_example() -> None:
    """RFC 9773 4.1: keyIdentifier 69:88:5B:...:C8:D4 and serial 0x0087654321."""
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rfc9773.example")])
    aki = x509.AuthorityKeyIdentifier(bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4"), None, None)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(0x87654321)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(aki, critical=False)
        .sign(key, hashes.SHA256())
    )
    assert cert_id(certificate_to_pem(cert)) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


def test_the_suggested_window_is_returned(ari: AriServer, gateway: AcmeGateway) -> None:
    pem = _certificate()
    identifier = cert_id(pem)
    start, end = NOW + dt.timedelta(days=50), NOW + dt.timedelta(days=52)
    window = {"start": start.isoformat().replace("+00:00", "Z"), "end": end.isoformat()}
    body = {"suggestedWindow": window, "explanationURL": "https://ca.example/why"}
    ari.replies[identifier] = (200, body, {"Retry-After": "21600"})
    result = gateway.renewal_info(RenewalInfoRequest(certificate_pem=pem))
    assert ari.asked[-1] == identifier
    assert (result.window_start, result.window_end) == (start, end)
    assert result.explanation_url == "https://ca.example/why"
    assert result.retry_after == dt.timedelta(hours=6)
    assert gateway.check().details["renewal_info"] is True


def test_retry_after_as_an_http_date(ari: AriServer, gateway: AcmeGateway) -> None:
    pem = _certificate()
    window = {"start": "2031-01-01T00:00:00Z", "end": "2031-01-02T00:00:00.123456789Z"}
    later = format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(hours=2), usegmt=True)
    ari.replies[cert_id(pem)] = (200, {"suggestedWindow": window}, {"Retry-After": later})
    result = gateway.renewal_info(RenewalInfoRequest(certificate_pem=pem))
    assert result.retry_after is not None
    assert dt.timedelta(hours=1) < result.retry_after <= dt.timedelta(hours=2)
    assert result.window_end.microsecond == 123456


def test_an_unknown_certificate_is_rejected(gateway: AcmeGateway) -> None:
    with pytest.raises(CARejectedError, match="unknown certificate"):
        gateway.renewal_info(RenewalInfoRequest(certificate_pem=_certificate()))


@pytest.mark.parametrize(
    "body",
    [
        {"suggestedWindow": {"start": "2031-01-02T00:00:00Z", "end": "2031-01-01T00:00:00Z"}},
        {"suggestedWindow": {"start": "2031-01-01T00:00:00", "end": "2031-01-02T00:00:00"}},
        {"suggestedWindow": {"start": "soon"}},
        {"window": {}},
        ["not", "an", "object"],
    ],
)
def test_a_malformed_answer_is_not_retried(ari: AriServer, gateway: AcmeGateway, body: Any) -> None:
    pem = _certificate()
    ari.replies[cert_id(pem)] = (200, body, {})
    with pytest.raises(ConnectorError, match=r"renewal information .* is malformed") as caught:
        gateway.renewal_info(RenewalInfoRequest(certificate_pem=pem))
    assert not caught.value.retryable


def test_a_server_error_is_retryable(ari: AriServer, gateway: AcmeGateway) -> None:
    pem = _certificate()
    problem = {"type": "urn:ietf:params:acme:error:serverInternal", "detail": "database on fire"}
    ari.replies[cert_id(pem)] = (503, problem, {})
    with pytest.raises(CAUnavailableError, match="database on fire"):
        gateway.renewal_info(RenewalInfoRequest(certificate_pem=pem))


def test_a_certificate_without_authority_key_identifier(gateway: AcmeGateway) -> None:
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "no-aki.example")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(InvalidInputError, match="no authority key identifier") as caught:
        gateway.renewal_info(RenewalInfoRequest(certificate_pem=certificate_to_pem(cert)))
    assert caught.value.field == "certificate_pem"
