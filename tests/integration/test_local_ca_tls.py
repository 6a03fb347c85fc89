"""Certificates from the local CA work in real TLS: a server on 127.0.0.1 presents one, a client that
trusts only the local root verifies it (and its name), mutual TLS with a client certificate works, and
an OpenSSL client checking the CRL refuses a revoked certificate."""

from __future__ import annotations

import base64
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sslclm.connectors.local_ca import LocalCAGateway
from sslclm.pki import private_key_to_pem
from sslclm.spi import CertificatePurpose, IssueRequest, RevocationReason, RevokeRequest
from sslclm.spi.registry import ConnectorRegistry
from sslclm.spi.testing import memory_context, new_csr

TIMEOUT = 10.0


@dataclass
class Server:
    port: int
    errors: list[BaseException] = field(default_factory=list)
    client_subjects: list[object] = field(default_factory=list)


@contextmanager
def tls_server(context: ssl.SSLContext) -> Iterator[Server]:
    """Answers each connection with b"pong:" + what it read; handshake failures are collected."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    server = Server(port=listener.getsockname()[1])
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            raw.settimeout(TIMEOUT)
            try:
                with context.wrap_socket(raw, server_side=True) as tls:
                    peer = tls.getpeercert()
                    if peer:
                        server.client_subjects.append(peer.get("subject"))
                    tls.sendall(b"pong:" + tls.recv(1024))
            except (ssl.SSLError, OSError) as exc:
                server.errors.append(exc)
            finally:
                raw.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(TIMEOUT)
        listener.close()


def _exchange(context: ssl.SSLContext, port: int, server_hostname: str) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        tls.sendall(b"ping")
        return tls.recv(1024)


@dataclass
class Issued:
    chain_file: Path
    key_file: Path
    serial: str
    certificate_pem: bytes


@pytest.fixture
def gateway(tmp_path: Path) -> LocalCAGateway:
    built = ConnectorRegistry.from_entry_points().build_ca_gateway(
        "local", {"crl_url": "http://127.0.0.1/crl"}, memory_context(tmp_path / "ca")
    )
    assert isinstance(built, LocalCAGateway)
    return built


def _issue(
    gateway: LocalCAGateway,
    directory: Path,
    names: tuple[str, ...],
    *,
    purposes: tuple[CertificatePurpose, ...] = (CertificatePurpose.SERVER_AUTH,),
    common_name: str | None = None,
) -> Issued:
    csr_pem, key = new_csr(names, common_name=common_name)
    result = gateway.issue(
        IssueRequest(
            csr_pem=csr_pem,
            names=names,
            common_name=common_name,
            idempotency_key=f"tls-{directory.name}",
            purposes=purposes,
        )
    )
    assert result.certificate_pem is not None and result.serial is not None
    directory.mkdir(parents=True)
    chain_file = directory / "chain.pem"
    chain_file.write_bytes(result.certificate_pem + b"".join(result.chain_pem))
    key_file = directory / "key.pem"
    key_file.write_bytes(private_key_to_pem(key))
    key_file.chmod(0o600)
    return Issued(chain_file, key_file, result.serial, result.certificate_pem)


def _root(gateway: LocalCAGateway) -> str:
    root = gateway.get_chain().root_pem
    assert root is not None
    return root.decode()


def _server_context(issued: Issued) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(issued.chain_file, issued.key_file)
    return context


def test_client_trusting_the_local_root_verifies_server_and_name(
    gateway: LocalCAGateway, tmp_path: Path
) -> None:
    issued = _issue(gateway, tmp_path / "server", ("localhost", "127.0.0.1"))
    client = ssl.create_default_context(cadata=_root(gateway))
    with tls_server(_server_context(issued)) as server:
        assert _exchange(client, server.port, "localhost") == b"pong:ping"
        assert _exchange(client, server.port, "127.0.0.1") == b"pong:ping"
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            _exchange(client, server.port, "other.example.test")


def test_client_trusting_another_root_refuses(gateway: LocalCAGateway, tmp_path: Path) -> None:
    issued = _issue(gateway, tmp_path / "server", ("localhost",))
    other = ConnectorRegistry.from_entry_points().build_ca_gateway(
        "local", {}, memory_context(tmp_path / "other")
    )
    assert isinstance(other, LocalCAGateway)
    client = ssl.create_default_context(cadata=_root(other))
    with (
        tls_server(_server_context(issued)) as server,
        pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"),
    ):
        _exchange(client, server.port, "localhost")


def test_mutual_tls_with_a_client_certificate(gateway: LocalCAGateway, tmp_path: Path) -> None:
    server_cert = _issue(gateway, tmp_path / "server", ("localhost",))
    client_cert = _issue(
        gateway,
        tmp_path / "client",
        (),
        purposes=(CertificatePurpose.CLIENT_AUTH,),
        common_name="agent-7",
    )
    server_context = _server_context(server_cert)
    server_context.verify_mode = ssl.CERT_REQUIRED
    server_context.load_verify_locations(cadata=_root(gateway))
    client = ssl.create_default_context(cadata=_root(gateway))
    client.load_cert_chain(client_cert.chain_file, client_cert.key_file)
    with tls_server(server_context) as server:
        assert _exchange(client, server.port, "localhost") == b"pong:ping"
    assert server.client_subjects == [((("commonName", "agent-7"),),)]

    # A server certificate is not accepted as a client identity (its EKU is serverAuth only).
    impostor = ssl.create_default_context(cadata=_root(gateway))
    impostor.load_cert_chain(server_cert.chain_file, server_cert.key_file)
    with tls_server(server_context) as server, pytest.raises((ssl.SSLError, ConnectionError)):
        _exchange(impostor, server.port, "localhost")
    assert server.errors and "unsuitable certificate purpose" in str(server.errors[0])


def _crl_pem(der: bytes) -> bytes:
    body = base64.encodebytes(der)
    return b"-----BEGIN X509 CRL-----\n" + body + b"-----END X509 CRL-----\n"


def test_openssl_refuses_a_revoked_certificate_using_the_crl(gateway: LocalCAGateway, tmp_path: Path) -> None:
    good = _issue(gateway, tmp_path / "good", ("localhost",))
    revoked = _issue(gateway, tmp_path / "revoked", ("localhost",))
    gateway.revoke(
        RevokeRequest(certificate_pem=revoked.certificate_pem, reason=RevocationReason.KEY_COMPROMISE)
    )
    trust = tmp_path / "trust.pem"
    trust.write_bytes(_root(gateway).encode() + _crl_pem(gateway.crl_der()))
    client = ssl.create_default_context(cafile=str(trust))
    client.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    with tls_server(_server_context(good)) as server:
        assert _exchange(client, server.port, "localhost") == b"pong:ping"
    with (
        tls_server(_server_context(revoked)) as server,
        pytest.raises(ssl.SSLCertVerificationError, match="certificate revoked"),
    ):
        _exchange(client, server.port, "localhost")
