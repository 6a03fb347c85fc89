"""The ``step-ca`` gateway facing answers a healthy step-ca does not give: server errors, rate limits,
garbage, and a certificate for another key than the CSR's. A small HTTPS server on loopback plays the
CA (step-ca's error body is ``{"status": N, "message": "..."}``), with a real TLS certificate from a
root the gateway is configured to trust."""

from __future__ import annotations

import json
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from sslclm.connectors.step_ca import StepCaConfig, StepCaGateway
from sslclm.errors import CAUnavailableError, ConnectorError
from sslclm.pki import (
    certificate_to_pem,
    create_ca,
    issue_server_certificate,
    private_key_to_pem,
    sign_csr,
)
from sslclm.pki.ca_tools import load_csr
from sslclm.spi.testing import memory_context, new_csr, new_issue_request
from tests.support.step_ca import new_provisioner

Reply = tuple[int, dict[str, str], bytes]


@dataclass
class FakeCA:
    """Answers each path with what ``replies`` maps it to (404 otherwise); records request bodies."""

    url: str
    root_pem: bytes
    replies: dict[str, Callable[[bytes], Reply]] = field(default_factory=dict)
    seen: list[tuple[str, bytes]] = field(default_factory=list)


def _json_reply(status: int, body: Any, headers: dict[str, str] | None = None) -> Callable[[bytes], Reply]:
    return lambda _request: (
        status,
        {"Content-Type": "application/json", **(headers or {})},
        json.dumps(body).encode(),
    )


@pytest.fixture
def fake_ca(tmp_path: Path) -> Iterator[FakeCA]:
    ca_key, ca_cert = create_ca("Fake step-ca Root")
    key, cert = issue_server_certificate(ca_key, ca_cert, hostnames=["localhost"], ip_addresses=["127.0.0.1"])
    (tmp_path / "tls.crt").write_bytes(certificate_to_pem(cert))
    (tmp_path / "tls.key").write_bytes(private_key_to_pem(key))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(str(tmp_path / "tls.crt"), str(tmp_path / "tls.key"))
    state = FakeCA(url="", root_pem=certificate_to_pem(ca_cert))

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.split("?", 1)[0]
            state.seen.append((path, body))
            reply = state.replies.get(path)
            status, headers, payload = (
                reply(body) if reply else (404, {}, b'{"status":404,"message":"Not Found"}')
            )
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _answer
        do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    state.url = f"https://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def gateway(fake: FakeCA, tmp_path: Path) -> StepCaGateway:
    config = StepCaConfig(
        ca_url=fake.url,
        root_pem=fake.root_pem.decode(),
        provisioner="fake",
        provisioner_jwk=new_provisioner("fake").private_jwk,
    )
    return StepCaGateway(config, memory_context(tmp_path / "gateway"))


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (500, {}, "The certificate authority encountered an Internal Server Error"),
        (503, {}, "The certificate authority encountered an Internal Server Error"),
        (429, {"Retry-After": "30"}, "The certificate authority encountered an Internal Server Error"),
    ],
)
def test_server_errors_and_rate_limits_are_retryable_with_the_ca_message(
    fake_ca: FakeCA, tmp_path: Path, status: int, headers: dict[str, str], expected: str
) -> None:
    fake_ca.replies["/1.0/sign"] = _json_reply(status, {"status": status, "message": expected}, headers)
    request, _ = new_issue_request(["busy.step.test"])
    with pytest.raises(CAUnavailableError) as caught:
        gateway(fake_ca, tmp_path).issue(request)
    assert caught.value.retryable
    assert expected in caught.value.message and f"HTTP {status}" in caught.value.message
    sent = json.loads(fake_ca.seen[-1][1])
    assert set(sent) == {"csr", "ott"}


def test_an_answer_that_is_not_json_is_a_non_retryable_connector_error(
    fake_ca: FakeCA, tmp_path: Path
) -> None:
    fake_ca.replies["/1.0/sign"] = lambda _r: (201, {"Content-Type": "text/html"}, b"<html>proxy</html>")
    request, _ = new_issue_request(["garbage.step.test"])
    with pytest.raises(ConnectorError, match="not JSON") as caught:
        gateway(fake_ca, tmp_path).issue(request)
    assert not caught.value.retryable


def test_a_certificate_for_another_key_is_never_recorded(fake_ca: FakeCA, tmp_path: Path) -> None:
    ca_key, ca_cert = create_ca("Fake Issuing CA")
    other_csr, _ = new_csr(["mismatch.step.test"])
    wrong = certificate_to_pem(sign_csr(ca_key, ca_cert, load_csr(other_csr), valid_days=1))
    fake_ca.replies["/1.0/sign"] = _json_reply(
        201,
        {"crt": wrong.decode(), "ca": certificate_to_pem(ca_cert).decode(), "certChain": [wrong.decode()]},
    )
    gw = gateway(fake_ca, tmp_path)
    request, _ = new_issue_request(["mismatch.step.test"], idempotency_key=f"mismatch-{uuid.uuid4()}")
    with pytest.raises(ConnectorError, match="another key") as caught:
        gw.issue(request)
    assert not caught.value.retryable
    assert gw.context.state.scan("") == []
