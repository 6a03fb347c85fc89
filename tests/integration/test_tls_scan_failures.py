"""How the scanner fails, and how it paces itself: real sockets on loopback misbehaving on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import socket
import ssl
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from sslclm.connectors.tls_scan import (
    ErrorKind,
    ScanOptions,
    ScanResult,
    ScanTarget,
    TlsScanner,
    TrustStore,
    scan,
)
from sslclm.errors import InvalidInputError
from support.tls_zoo import Pki, Server, free_port, server_context, write_identity


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


async def collect(targets: Any, options: ScanOptions) -> list[ScanResult]:
    return [result async for result in scan(targets, options)]


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(4096):
        writer.write(data)
        await writer.drain()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()


async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def http_banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    await reader.read()


@contextlib.contextmanager
def alerting_server(context: ssl.SSLContext) -> Iterator[int]:
    """A blocking TLS server in a thread: unlike asyncio's, it flushes its alert before closing."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection, contextlib.suppress(OSError):
                connection.settimeout(5)
                context.wrap_socket(connection, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


@contextlib.contextmanager
def full_backlog() -> Iterator[int]:
    """A listener whose accept queue is full, so a new connect is never answered (a filtered port)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    try:
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_failures_are_one_line_reasons(tmp_path: Path) -> None:
    pki = Pki.create()
    cert, key = write_identity(tmp_path, "alert", pki.leaf("a.test"), [pki.intermediate])
    # No cipher in common: the server answers the ClientHello with a handshake_failure alert.
    no_shared = server_context(cert, key, maximum_version=ssl.TLSVersion.TLSv1_2, ciphers="PSK")
    closed = free_port()

    async def main(alert_port: int, filtered_port: int) -> dict[str, ScanResult]:
        async with (
            Server(echo) as echo_server,
            Server(silent) as silent_server,
            Server(hang_up) as hang_up_server,
            Server(http_banner) as http_server,
        ):
            labels = {
                ScanTarget("127.0.0.1", closed): "refused",
                ScanTarget("127.0.0.1", echo_server.port): "echo",
                ScanTarget("127.0.0.1", silent_server.port): "silent",
                ScanTarget("127.0.0.1", hang_up_server.port): "hang up",
                ScanTarget("127.0.0.1", http_server.port): "http",
                ScanTarget("127.0.0.1", alert_port): "alert",
                ScanTarget("127.0.0.1", filtered_port): "filtered",
                ScanTarget("host.invalid", 443, "host.invalid"): "dns",
            }
            # Generous timeouts: on a busy machine a loopback accept can take longer than half a second.
            options = ScanOptions(connect_timeout=3, handshake_timeout=2, trust_store=TrustStore([]))
            return {labels[r.target]: r for r in await collect(labels, options)}

    with alerting_server(no_shared) as alert_port, full_backlog() as filtered_port:
        results = run(main(alert_port, filtered_port))

    observed = {label: (r.ok, r.error_kind, r.error) for label, r in results.items()}
    assert observed == {
        "refused": (False, ErrorKind.REFUSED, "connection refused"),
        "echo": (
            False,
            ErrorKind.NOT_TLS,
            "not TLS: the server did not answer the handshake (unexpected message)",
        ),
        "http": (
            False,
            ErrorKind.NOT_TLS,
            "not TLS: the server did not answer the handshake (wrong version number)",
        ),
        "silent": (False, ErrorKind.TIMEOUT, "TLS handshake timed out after 2s"),
        "filtered": (False, ErrorKind.TIMEOUT, "connect timed out after 3s"),
        "hang up": (False, ErrorKind.CLOSED, "server closed the connection during the TLS handshake"),
        "alert": (False, ErrorKind.HANDSHAKE, "handshake failure: server sent alert 'handshake failure'"),
        "dns": (False, ErrorKind.DNS, "cannot resolve host.invalid: Name or service not known"),
    }
    for result in results.values():
        assert result.chain == () and result.leaf is None
        assert (result.trusted, result.hostname_match, result.tls_version) == (False, None, None)
    assert results["refused"].connect_time is None
    assert results["silent"].connect_time is not None and results["silent"].address == "127.0.0.1"


def test_closed_ports_fail_fast() -> None:
    targets = [ScanTarget("127.0.0.1", free_port()) for _ in range(200)]
    started = time.monotonic()
    results = run(collect(targets, ScanOptions(concurrency=50, trust_store=TrustStore([]))))
    assert [r.error_kind for r in results] == [ErrorKind.REFUSED] * 200
    assert time.monotonic() - started < 5


def test_results_stream_and_concurrency_is_bounded() -> None:
    async def main() -> tuple[int, list[ScanResult], bool]:
        async with Server(silent) as server:
            targets = (ScanTarget("127.0.0.1", server.port) for _ in range(24))
            scanner = TlsScanner(
                ScanOptions(concurrency=6, handshake_timeout=0.2, trust_store=TrustStore([]))
            )
            stream = scanner.scan(targets)
            results = [r async for r in stream]
            return server.peak, results, inspect.isasyncgen(stream)

    peak, results, streamed = run(main())
    assert streamed
    assert len(results) == 24 and {r.error_kind for r in results} == {ErrorKind.TIMEOUT}
    assert peak == 6


def test_per_host_concurrency() -> None:
    async def main() -> tuple[int, float]:
        async with Server(silent) as server:
            targets = [ScanTarget("127.0.0.1", server.port) for _ in range(6)]
            options = ScanOptions(
                concurrency=6, per_host_concurrency=2, handshake_timeout=0.2, trust_store=TrustStore([])
            )
            started = time.monotonic()
            await collect(targets, options)
            return server.peak, time.monotonic() - started

    peak, elapsed = run(main())
    assert peak == 2
    assert elapsed >= 0.55  # three waves of two


@pytest.mark.parametrize("knob", ["rate", "per_host_rate"])
def test_rate_limits_space_connections(knob: str) -> None:
    closed = free_port()
    targets = [ScanTarget("127.0.0.1", closed) for _ in range(11)]
    options = ScanOptions(concurrency=11, trust_store=TrustStore([]), **{knob: 20.0})
    started = time.monotonic()
    results = run(collect(targets, options))
    elapsed = time.monotonic() - started
    assert len(results) == 11
    assert 0.45 <= elapsed < 2.0  # ten gaps of 50 ms


def test_per_host_rate_does_not_slow_other_hosts() -> None:
    closed = free_port()
    targets = [ScanTarget(f"127.0.0.{i}", closed) for i in range(1, 21)]
    started = time.monotonic()
    run(collect(targets, ScanOptions(per_host_rate=1.0, trust_store=TrustStore([]))))
    assert time.monotonic() - started < 5  # one host's pace would take 19 s


def test_stopping_early_cancels_what_is_in_flight() -> None:
    async def main() -> tuple[int, int]:
        async with Server(silent) as server:
            scanner = TlsScanner(ScanOptions(concurrency=5, handshake_timeout=30, trust_store=TrustStore([])))
            closed = ScanTarget("127.0.0.1", free_port())
            targets = [closed] + [ScanTarget("127.0.0.1", server.port)] * 100
            stream = scanner.scan(targets)
            async for result in stream:
                assert result.error_kind is ErrorKind.REFUSED
                break
            await stream.aclose()
            for _ in range(50):
                if server.active == 0:
                    break
                await asyncio.sleep(0.02)
            return server.active, server.connections

    active, connections = run(main())
    assert active == 0
    assert connections <= 5


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"connect_timeout": 0}, "connect_timeout"),
        ({"handshake_timeout": -1}, "handshake_timeout"),
        ({"rate": 0}, "rate"),
        ({"per_host_rate": -2.0}, "per_host_rate"),
        ({"per_host_concurrency": 0}, "per_host_concurrency"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        ScanOptions(**options)
    assert info.value.field == field
