"""The TLS scanning engine: real handshakes, bounded concurrency, streamed results.

Each endpoint gets a plain TCP connect (its own timeout, so a closed port fails at once and a
filtered one after ``connect_timeout``), an optional STARTTLS dialogue, and a handshake that
accepts any certificate: ``CERT_NONE`` and ``@SECLEVEL=0`` so expired, self-signed, SHA-1 and
RSA-1024 certificates are collected rather than refused. The full chain the server sent is read
from the SSL object; trust and hostname are then judged offline by :mod:`.trust`.

:meth:`TlsScanner.scan` is an async generator that keeps at most ``concurrency`` endpoints in
flight and pulls targets lazily, so memory stays flat whatever the size of the target set; a
consumer that stops iterating cancels the endpoints still in flight.
"""

from __future__ import annotations

import _ssl
import asyncio
import contextlib
import errno
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sslclm.connectors.tls_scan.results import ErrorKind, Protocol, ScanResult, ScanTarget
from sslclm.connectors.tls_scan.starttls import StartTlsError, negotiate
from sslclm.connectors.tls_scan.trust import TrustStore, TrustVerifier
from sslclm.errors import InvalidInputError
from sslclm.spi.context import Clock, utcnow

__all__ = ["ScanOptions", "TlsScanner", "scan"]

# OpenSSL's SSL_OP_LEGACY_SERVER_CONNECT: talk to servers without RFC 5746 renegotiation support,
# which OpenSSL 3 refuses by default; old appliances are exactly what a scan must still see.
_OP_LEGACY_SERVER_CONNECT = 0x4
_PRUNE_AT = 4096
_STREAM_LIMIT = 16 * 1024  # longest STARTTLS reply line accepted
_NOT_TLS_REASONS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "PACKET_LENGTH_TOO_LONG",
        "HTTP_REQUEST",
        "HTTPS_PROXY_REQUEST",
        "RECORD_LAYER_FAILURE",
        "RECORD_LENGTH_MISMATCH",
        "UNEXPECTED_RECORD",
        "UNEXPECTED_MESSAGE",
        "UNKNOWN_PROTOCOL",
        "LENGTH_MISMATCH",
        "BAD_PACKET_LENGTH",
        "EXCESSIVE_MESSAGE_SIZE",
    }
)
_ALERT_PREFIXES = ("TLSV13_ALERT_", "TLSV1_ALERT_", "SSLV3_ALERT_")
_ERRNO = re.compile(r"\[Errno (\d+)\]")
_UNREACHABLE = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL, errno.EHOSTDOWN})


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """How hard and how patiently to scan.

    ``rate`` and ``per_host_rate`` cap new connections per second (all hosts, one host);
    ``per_host_concurrency`` caps simultaneous connections to one host. ``None`` means no cap.
    ``handshake_timeout`` covers the STARTTLS dialogue and the TLS handshake together.
    """

    concurrency: int = 256
    connect_timeout: float = 5.0
    handshake_timeout: float = 10.0
    rate: float | None = None
    per_host_rate: float | None = None
    per_host_concurrency: int | None = None
    alpn: tuple[str, ...] = ("h2", "http/1.1")
    trust_store: TrustStore | None = None  # default: the system CA bundle
    clock: Clock = field(default=utcnow)

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise InvalidInputError("concurrency must be at least 1", field="concurrency")
        for name in ("connect_timeout", "handshake_timeout"):
            if not getattr(self, name) > 0:
                raise InvalidInputError(f"{name} must be positive", field=name)
        for name in ("rate", "per_host_rate"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InvalidInputError(f"{name} must be positive", field=name)
        if self.per_host_concurrency is not None and self.per_host_concurrency < 1:
            raise InvalidInputError("per_host_concurrency must be at least 1", field="per_host_concurrency")


class _Spacer:
    """Spaces events ``1/rate`` seconds apart; ``reserve`` returns how long the caller must wait."""

    __slots__ = ("interval", "next")

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = 0.0

    def reserve(self, now: float) -> float:
        start = max(now, self.next)
        self.next = start + self.interval
        return start - now


@dataclass(slots=True)
class _HostSlot:
    semaphore: asyncio.Semaphore
    users: int = 0


class TlsScanner:
    """Scans endpoints with one set of options, one client context and one trust verifier."""

    def __init__(self, options: ScanOptions | None = None) -> None:
        self.options = options or ScanOptions()
        self._trust_store = self.options.trust_store
        self._contexts: dict[bool, ssl.SSLContext] = {}
        self._verifier: TrustVerifier | None = None
        self._global_spacer = _Spacer(self.options.rate) if self.options.rate else None
        self._host_spacers: dict[str, _Spacer] = {}
        self._prune_at = _PRUNE_AT
        self._host_slots: dict[str, _HostSlot] = {}

    @property
    def trust_store(self) -> TrustStore:
        if self._trust_store is None:
            self._trust_store = TrustStore.load()
        return self._trust_store

    def start(self, at: datetime | None = None) -> None:
        """Fix the time trust is judged at (the scan's start, so one scan judges consistently)."""
        self._verifier = TrustVerifier(self.trust_store, at or self.options.clock())

    async def scan(self, targets: Iterable[ScanTarget]) -> AsyncIterator[ScanResult]:
        """Scan ``targets`` and yield one result per endpoint, in completion order."""
        self.start()
        limit = self.options.concurrency
        source: Iterator[ScanTarget] = iter(targets)
        pending: set[asyncio.Task[ScanResult]] = set()
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < limit:
                    target = next(source, None)
                    if target is None:
                        exhausted = True
                    else:
                        pending.add(asyncio.create_task(self.scan_one(target)))
                if not pending:
                    return
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    yield task.result()
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def scan_one(self, target: ScanTarget) -> ScanResult:
        """Scan one endpoint; failures come back as a result, never as an exception."""
        if self._verifier is None:
            self.start()
        # A task waiting here for its rate slot or its host's slot counts against ``concurrency``;
        # targets arrive port by port across hosts (see TargetSet), so such waits are short.
        await self._throttle(target.host)
        if self.options.per_host_concurrency is None:
            return await self._probe(target)
        slot = self._host_slots.get(target.host)
        if slot is None:
            slot = self._host_slots[target.host] = _HostSlot(
                asyncio.Semaphore(self.options.per_host_concurrency)
            )
        slot.users += 1
        try:
            async with slot.semaphore:
                return await self._probe(target)
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._host_slots[target.host]

    async def _throttle(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.0
        if self._global_spacer is not None:
            delay = self._global_spacer.reserve(loop.time())
        if self.options.per_host_rate is not None:
            now = loop.time()
            if len(self._host_spacers) > self._prune_at:
                # Forget hosts whose spacing has lapsed so a sweep over many hosts stays small; the
                # threshold doubles with what remains, keeping the pruning cost amortised.
                self._host_spacers = {h: s for h, s in self._host_spacers.items() if s.next > now}
                self._prune_at = max(_PRUNE_AT, 2 * len(self._host_spacers))
            spacer = self._host_spacers.get(host)
            if spacer is None:
                spacer = self._host_spacers[host] = _Spacer(self.options.per_host_rate)
            delay = max(delay, spacer.reserve(now + delay))
        if delay > 0:
            await asyncio.sleep(delay)

    async def _probe(self, target: ScanTarget) -> ScanResult:
        loop = asyncio.get_running_loop()
        options = self.options
        scanned_at = options.clock()
        started = loop.time()
        writer: asyncio.StreamWriter | None = None
        connect_time: float | None = None
        stage = "connect"
        try:
            async with asyncio.timeout(options.connect_timeout):
                reader, writer = await asyncio.open_connection(target.host, target.port, limit=_STREAM_LIMIT)
            connect_time = loop.time() - started
            peer = writer.get_extra_info("peername")
            address = peer[0] if peer else None
            async with asyncio.timeout(options.handshake_timeout):
                if target.protocol is not Protocol.TLS:
                    stage = f"{_protocol_label(target.protocol)} STARTTLS dialogue"
                    await negotiate(target.protocol, reader, writer)
                stage = "TLS handshake"
                await writer.start_tls(
                    self._context(alpn=target.protocol is Protocol.TLS),
                    server_hostname=target.sni,
                    ssl_handshake_timeout=options.handshake_timeout * 2,  # ours fires first
                )
            handshake_time = loop.time() - started - connect_time
            ssl_object = writer.get_extra_info("ssl_object")
            chain = _served_chain(ssl_object)
            cipher = ssl_object.cipher()
        except Exception as exc:  # CancelledError is not an Exception and propagates
            kind, reason = _classify(exc, stage, target, options)
            return ScanResult(
                target=target,
                scanned_at=scanned_at,
                ok=False,
                address=_peer_address(writer),
                error_kind=kind,
                error=reason,
                connect_time=connect_time,
            )
        finally:
            if writer is not None:
                # No close_notify exchange: it costs a round trip per endpoint and a server that
                # never answers it would pin the connection; the certificate is already in hand.
                writer.transport.abort()
        assert self._verifier is not None
        verdict = self._verifier.check(chain, target.expected_name)
        return ScanResult(
            target=target,
            scanned_at=scanned_at,
            ok=True,
            address=address,
            chain=chain,
            tls_version=ssl_object.version(),
            cipher=cipher[0] if cipher else None,
            alpn=ssl_object.selected_alpn_protocol(),
            trusted=verdict.trusted,
            trust_error_kind=verdict.error_kind,
            trust_error=verdict.error,
            hostname_match=verdict.hostname_match,
            connect_time=connect_time,
            handshake_time=handshake_time,
        )

    def _context(self, *, alpn: bool) -> ssl.SSLContext:
        context = self._contexts.get(alpn)
        if context is None:
            context = self._contexts[alpn] = _client_context(self.options.alpn if alpn else ())
        return context


async def scan(
    targets: Iterable[ScanTarget], options: ScanOptions | None = None
) -> AsyncIterator[ScanResult]:
    """Scan ``targets`` with a fresh :class:`TlsScanner`; see :meth:`TlsScanner.scan`."""
    async for result in TlsScanner(options).scan(targets):
        yield result


def _client_context(alpn: tuple[str, ...]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.set_ciphers("ALL:@SECLEVEL=0")
    context.options |= _OP_LEGACY_SERVER_CONNECT
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def _served_chain(ssl_object: Any) -> tuple[bytes, ...]:
    """Every certificate the server sent, leaf first, as DER.

    ``getpeercert`` only returns the leaf. The whole chain is ``get_unverified_chain()``: public
    on the SSL object from Python 3.13 (DER bytes), on its inner ``_sslobj`` before that
    (certificate objects).
    """
    method = getattr(ssl_object, "get_unverified_chain", None)
    if method is None:
        method = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if method is not None:
        chain = method() or []
        return tuple(c if isinstance(c, bytes) else c.public_bytes(_ssl.ENCODING_DER) for c in chain)
    leaf = ssl_object.getpeercert(binary_form=True)
    return (leaf,) if leaf else ()


def _classify(exc: Exception, stage: str, target: ScanTarget, options: ScanOptions) -> tuple[ErrorKind, str]:
    if isinstance(exc, TimeoutError):
        seconds = options.connect_timeout if stage == "connect" else options.handshake_timeout
        return ErrorKind.TIMEOUT, f"{stage} timed out after {seconds:g}s"
    if isinstance(exc, StartTlsError):
        return ErrorKind.STARTTLS, str(exc)
    if isinstance(exc, ssl.SSLError):
        return _classify_ssl(exc)
    if isinstance(exc, ConnectionRefusedError):
        return ErrorKind.REFUSED, "connection refused"
    if isinstance(exc, ConnectionResetError):
        if exc.errno is None:
            # asyncio reports a clean EOF in mid-handshake as a bare ConnectionResetError.
            return ErrorKind.CLOSED, f"server closed the connection during the {stage}"
        if stage == "connect":
            return ErrorKind.RESET, "connection reset during connect"
        return ErrorKind.RESET, f"connection reset during the {stage}"
    if isinstance(exc, (ConnectionAbortedError, EOFError, asyncio.IncompleteReadError, BrokenPipeError)):
        return ErrorKind.CLOSED, f"server closed the connection during the {stage}"
    if isinstance(exc, socket.gaierror):
        return ErrorKind.DNS, f"cannot resolve {target.host}: {exc.strerror or exc}"
    if isinstance(exc, OSError):
        if exc.errno is None:
            # A name with several addresses that all failed: asyncio folds the per-address errors
            # into one message; when they agree, report them as that one error.
            codes = {int(code) for code in _ERRNO.findall(str(exc))}
            if codes == {errno.ECONNREFUSED}:
                return ErrorKind.REFUSED, "connection refused (every address)"
            if codes and codes <= _UNREACHABLE:
                return ErrorKind.UNREACHABLE, "unreachable (every address)"
        if exc.errno in _UNREACHABLE:
            return ErrorKind.UNREACHABLE, f"{exc.strerror or 'unreachable'}"
        if exc.errno is not None and exc.strerror:
            return ErrorKind.ERROR, f"{exc.strerror} during the {stage}"
        return ErrorKind.ERROR, f"{_first_line(str(exc)) or type(exc).__name__} during the {stage}"
    return ErrorKind.ERROR, f"{type(exc).__name__}: {_first_line(str(exc))}"


def _classify_ssl(exc: ssl.SSLError) -> tuple[ErrorKind, str]:
    reason = getattr(exc, "reason", None) or ""
    if isinstance(exc, ssl.SSLEOFError) or reason == "UNEXPECTED_EOF_WHILE_READING":
        return ErrorKind.CLOSED, "server closed the connection during the TLS handshake"
    if reason in _NOT_TLS_REASONS:
        return ErrorKind.NOT_TLS, f"not TLS: the server did not answer the handshake ({_words(reason)})"
    for prefix in _ALERT_PREFIXES:
        if reason.startswith(prefix):
            alert = _words(reason[len(prefix) :])
            return ErrorKind.HANDSHAKE, f"handshake failure: server sent alert '{alert}'"
    if reason == "UNSUPPORTED_PROTOCOL":
        return ErrorKind.HANDSHAKE, "handshake failure: no TLS version in common"
    if reason:
        return ErrorKind.HANDSHAKE, f"handshake failure: {_words(reason)}"
    return ErrorKind.HANDSHAKE, f"handshake failure: {_first_line(str(exc))}"


def _peer_address(writer: asyncio.StreamWriter | None) -> str | None:
    if writer is None:
        return None
    with contextlib.suppress(Exception):
        peer = writer.get_extra_info("peername")
        if peer:
            return str(peer[0])
    return None


def _protocol_label(protocol: Protocol) -> str:
    return {Protocol.POSTGRES: "PostgreSQL"}.get(protocol, protocol.value.upper())


def _words(reason: str) -> str:
    return reason.lower().replace("_", " ")


def _first_line(text: str) -> str:
    return " ".join(text.split())[:200]
