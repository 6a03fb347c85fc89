"""STARTTLS: small servers that speak each protocol's real opening lines and then upgrade to TLS."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url

from sslclm.connectors.tls_scan import (
    ErrorKind,
    Protocol,
    ScanOptions,
    ScanResult,
    TrustStore,
    parse_targets,
    scan,
)
from sslclm.connectors.tls_scan.starttls import ldap_starttls_request, parse_ldap_extended_response
from support.tls_zoo import Issued, Pki, Server, server_context, write_identity

NAME = "mail.zoo.test"
LDAP_STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def upgrade(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext
) -> None:
    await writer.drain()
    await writer.start_tls(context)
    await reader.read()


def smtp(context: ssl.SSLContext, *, offer: bool = True) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 mail.zoo.test ESMTP ready\r\n")
        assert (await reader.readline()).startswith(b"EHLO ")
        writer.write(b"250-mail.zoo.test greets you\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n")
        writer.write((b"250-STARTTLS\r\n" if offer else b"") + b"250 8BITMIME\r\n")
        if await reader.readline() == b"STARTTLS\r\n":
            writer.write(b"220 2.0.0 Ready to start TLS\r\n")
            await upgrade(reader, writer, context)

    return handle


def imap(context: ssl.SSLContext, *, answer: bytes = b"a1 OK Begin TLS negotiation now") -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] zoo IMAP ready\r\n")
        assert await reader.readline() == b"a1 STARTTLS\r\n"
        writer.write(b"* CAPABILITY IMAP4rev1 STARTTLS\r\n" + answer + b"\r\n")
        if b"OK" in answer:
            await upgrade(reader, writer, context)
        else:
            await reader.read()

    return handle


def pop3(context: ssl.SSLContext, *, answer: bytes = b"+OK Begin TLS negotiation") -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK zoo POP3 server ready <1896.697170952@zoo.test>\r\n")
        assert await reader.readline() == b"STLS\r\n"
        writer.write(answer + b"\r\n")
        if answer.startswith(b"+OK"):
            await upgrade(reader, writer, context)

    return handle


def ftp(context: ssl.SSLContext) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220-zoo FTP server\r\n220 ready\r\n")
        assert await reader.readline() == b"AUTH TLS\r\n"
        writer.write(b"234 AUTH TLS successful\r\n")
        await upgrade(reader, writer, context)

    return handle


def ldap(context: ssl.SSLContext, *, result_code: int = 0, diagnostic: bytes = b"") -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = await reader.readexactly(2)
        request = header + await reader.readexactly(header[1])
        # LDAPMessage { messageID 1, [APPLICATION 23] { [0] "1.3.6.1.4.1.1466.20037" } }
        assert request[:5] == b"\x30\x1d\x02\x01\x01" and request[5] == 0x77
        assert request[7:9] == b"\x80\x16" and request[9:] == LDAP_STARTTLS_OID
        body = (
            b"\x0a\x01"
            + bytes([result_code])
            + b"\x04\x00"
            + b"\x04"
            + bytes([len(diagnostic)])
            + diagnostic
            + b"\x8a\x16"
            + LDAP_STARTTLS_OID
        )
        operation = b"\x78" + bytes([len(body)]) + body
        message = b"\x02\x01\x01" + operation
        writer.write(b"\x30" + bytes([len(message)]) + message)
        if result_code == 0:
            await upgrade(reader, writer, context)
        else:
            await reader.read()

    return handle


def postgres(context: ssl.SSLContext) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readexactly(8) == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
        writer.write(b"S")
        await upgrade(reader, writer, context)

    return handle


async def tls_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # waits for a ClientHello, says nothing first


async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    await reader.read()


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create()


@pytest.fixture(scope="module")
def leaf(pki: Pki) -> Issued:
    return pki.leaf(NAME)


@pytest.fixture
def context(pki: Pki, leaf: Issued, tmp_path: Path) -> ssl.SSLContext:
    return server_context(*write_identity(tmp_path, "mail", leaf, [pki.intermediate]))


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def scan_one(handler: Handler, scheme: str, pki: Pki) -> ScanResult:
    async def main() -> list[ScanResult]:
        async with Server(handler) as server:
            targets = parse_targets([f"{scheme}://{NAME}@127.0.0.1:{server.port}"])
            options = ScanOptions(handshake_timeout=1.0, trust_store=TrustStore([pki.root.cert]))
            return [r async for r in scan(targets, options) if r.target.sni == NAME]

    (result,) = run(main())
    return result


@pytest.mark.parametrize(
    ("scheme", "make", "protocol"),
    [
        ("smtp", smtp, Protocol.SMTP),
        ("imap", imap, Protocol.IMAP),
        ("pop3", pop3, Protocol.POP3),
        ("ftp", ftp, Protocol.FTP),
        ("ldap", ldap, Protocol.LDAP),
        ("postgres", postgres, Protocol.POSTGRES),
    ],
)
def test_starttls_upgrades_and_collects_the_chain(
    pki: Pki,
    leaf: Issued,
    context: ssl.SSLContext,
    scheme: str,
    make: Callable[[ssl.SSLContext], Handler],
    protocol: Protocol,
) -> None:
    result = scan_one(make(context), scheme, pki)
    assert result.target.protocol is protocol
    assert (result.ok, result.error) == (True, None)
    assert result.chain == (leaf.der, pki.intermediate.der)
    assert (result.trusted, result.hostname_match, result.tls_version) == (True, True, "TLSv1.3")
    assert result.alpn is None  # ALPN is only offered on direct TLS


@pytest.mark.parametrize(
    ("scheme", "handler", "kind", "error"),
    [
        ("smtp", lambda c: smtp(c, offer=False), ErrorKind.STARTTLS, "SMTP server does not offer STARTTLS"),
        ("smtp", lambda c: http, ErrorKind.STARTTLS, "not an SMTP server: 'HTTP/1.1 400 Bad Request'"),
        ("smtp", lambda c: tls_only, ErrorKind.TIMEOUT, "SMTP STARTTLS dialogue timed out after 1s"),
        (
            "imap",
            lambda c: imap(c, answer=b"a1 BAD STARTTLS disabled"),
            ErrorKind.STARTTLS,
            "IMAP server refused STARTTLS: 'a1 BAD STARTTLS disabled'",
        ),
        ("imap", lambda c: http, ErrorKind.STARTTLS, "not an IMAP server: 'HTTP/1.1 400 Bad Request'"),
        (
            "pop3",
            lambda c: pop3(c, answer=b"-ERR command not recognised"),
            ErrorKind.STARTTLS,
            "POP3 server refused STLS: '-ERR command not recognised'",
        ),
        (
            "ldap",
            lambda c: ldap(c, result_code=2, diagnostic=b"StartTLS not configured"),
            ErrorKind.STARTTLS,
            "LDAP server refused StartTLS (result code 2): 'StartTLS not configured'",
        ),
        ("ldap", lambda c: http, ErrorKind.STARTTLS, "not an LDAP server: 'HT'"),
    ],
)
def test_starttls_refusals_say_what_the_server_did(
    pki: Pki,
    context: ssl.SSLContext,
    scheme: str,
    handler: Callable[[ssl.SSLContext], Handler],
    kind: ErrorKind,
    error: str,
) -> None:
    result = scan_one(handler(context), scheme, pki)
    assert (result.ok, result.error_kind, result.error) == (False, kind, error)


def test_the_real_postgresql_server(postgres_admin_url: str) -> None:
    """Port 5432 means the PostgreSQL SSLRequest; the suite's server answers per its ``ssl`` setting."""
    url = make_url(postgres_admin_url)
    with psycopg.connect(host=url.host, port=url.port, user=url.username, dbname=url.database) as connection:
        row = connection.execute("SHOW ssl").fetchone()
    ssl_on = row is not None and row[0] == "on"

    async def main() -> list[ScanResult]:
        targets = parse_targets([f"{url.host}:{url.port}"])
        return [r async for r in scan(targets, ScanOptions(trust_store=TrustStore([])))]

    (result,) = run(main())
    assert result.target.protocol is Protocol.POSTGRES
    if ssl_on:
        assert result.ok and result.chain
    else:
        assert (result.ok, result.error_kind, result.error) == (
            False,
            ErrorKind.STARTTLS,
            "PostgreSQL server does not accept TLS",
        )


def test_ldap_ber_round_trip() -> None:
    assert ldap_starttls_request(1) == b"\x30\x1d\x02\x01\x01\x77\x18\x80\x16" + LDAP_STARTTLS_OID
    assert ldap_starttls_request(300)[2:6] == b"\x02\x02\x01\x2c"
    body = b"\x02\x01\x01\x78\x07\x0a\x01\x00\x04\x00\x04\x00"
    assert parse_ldap_extended_response(body) == (0, "")
