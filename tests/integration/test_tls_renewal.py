"""The running server's certificate is renewed in place: a real TLS listener on loopback picks it up."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from sslclm.core.platform import Platform
from sslclm.core.tls import SERVER_VALID_DAYS, ensure_server_tls
from sslclm.core.tls_renewal import ServerCertificateRenewer


class LoopbackTlsServer:
    """An asyncio TLS server in its own thread, answering "ok" to each connection."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.readline():
                writer.write(b"ok\n")
                await writer.drain()
            writer.close()

        server = self.loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0, ssl=self.context))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()
        server.close()
        self.loop.run_until_complete(server.wait_closed())
        self.loop.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def start_listening(platform: Platform) -> tuple[LoopbackTlsServer, ServerCertificateRenewer]:
    """A listener serving the server certificate the data directory holds now, and its renewer."""
    tls = ensure_server_tls(platform, "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    server = LoopbackTlsServer(context)
    renewer = ServerCertificateRenewer(platform, "127.0.0.1", lambda: [context], interval=3600)
    renewer.start(server.loop)
    return server, renewer


@pytest.fixture
def listening(platform: Platform) -> Iterator[tuple[LoopbackTlsServer, ServerCertificateRenewer]]:
    server, renewer = start_listening(platform)
    yield server, renewer
    renewer.stop()
    server.stop()


@pytest.fixture
def listening_with_a_due_certificate(
    platform: Platform,
) -> Iterator[tuple[LoopbackTlsServer, ServerCertificateRenewer]]:
    """The listener starts with a certificate issued long ago that expires in five days."""
    real_clock = platform.clock
    platform.clock = lambda: real_clock() - timedelta(days=SERVER_VALID_DAYS - 5)
    try:
        server, renewer = start_listening(platform)
    finally:
        platform.clock = real_clock
    yield server, renewer
    renewer.stop()
    server.stop()


def client_context(platform: Platform) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ensure_server_tls(platform, "127.0.0.1").ca_file))


def presented(platform: Platform, port: int) -> x509.Certificate:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with client_context(platform).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
        tls.sendall(b"hello\n")
        assert tls.recv(3) == b"ok\n"
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_nothing_happens_while_the_certificate_is_current(
    platform: Platform, listening: tuple[LoopbackTlsServer, ServerCertificateRenewer]
) -> None:
    server, renewer = listening
    before = presented(platform, server.port)
    assert renewer.check_once() is False
    assert presented(platform, server.port).serial_number == before.serial_number


def test_a_due_certificate_is_renewed_and_served_without_a_restart(
    platform: Platform, listening_with_a_due_certificate: tuple[LoopbackTlsServer, ServerCertificateRenewer]
) -> None:
    server, renewer = listening_with_a_due_certificate
    before = presented(platform, server.port)
    # A connection opened before the swap keeps working with the certificate it got.
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    held = client_context(platform).wrap_socket(raw, server_hostname="127.0.0.1")
    assert before.not_valid_after_utc < platform.clock() + timedelta(days=6)
    assert renewer.check_once() is True
    after = presented(platform, server.port)
    assert after.serial_number != before.serial_number
    assert after.not_valid_after_utc > before.not_valid_after_utc + timedelta(days=300)
    on_disk = ensure_server_tls(platform, "127.0.0.1").cert_file.read_bytes()
    fingerprint = hashlib.sha256(ssl.PEM_cert_to_DER_cert(on_disk.decode())).hexdigest()
    assert after.fingerprint(hashes.SHA256()).hex() == fingerprint
    held.sendall(b"still there\n")
    assert held.recv(3) == b"ok\n"
    assert held.getpeercert(binary_form=True) == before.public_bytes(Encoding.DER)
    held.close()
    # The next check finds the new certificate current.
    assert renewer.check_once() is False
