"""The clear-text dialogues that precede a TLS upgrade (SMTP, IMAP, POP3, FTP, LDAP, PostgreSQL).

Each negotiator reads the server's greeting, asks for TLS the way its protocol does and returns
when the server has agreed; the caller then starts the handshake on the same connection. Anything
else raises :class:`StartTlsError` with a one-line reason that quotes (a bounded slice of) what
the server said, so "not an SMTP server" and "STARTTLS not offered" are told apart.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

from sslclm.connectors.tls_scan.results import Protocol

__all__ = ["STARTTLS_PROTOCOLS", "StartTlsError", "negotiate"]

CLIENT_NAME = "sslclm.invalid"
_MAX_LINES = 200  # a server that never ends its reply is not waited on forever (the timeout also applies)
_REPLY = re.compile(rb"^(\d{3})([ -])")
_LDAP_STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"
# PostgreSQL SSLRequest: length 8, then the magic code 80877103 (1234 << 16 | 5679).
_PG_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


class StartTlsError(Exception):
    """The server did not agree to start TLS; the message says what it did instead."""


async def negotiate(protocol: Protocol, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Run ``protocol``'s STARTTLS dialogue; return once the server is ready for a ClientHello."""
    negotiator = STARTTLS_PROTOCOLS.get(protocol)
    if negotiator is None:
        raise StartTlsError(f"no STARTTLS dialogue for {protocol.value}")
    try:
        await negotiator(reader, writer)
    except asyncio.IncompleteReadError as exc:
        raise StartTlsError(f"{_label(protocol)} server closed the connection before TLS started") from exc
    except asyncio.LimitOverrunError as exc:
        raise StartTlsError(f"{_label(protocol)} server sent an over-long line") from exc
    except ValueError as exc:  # StreamReader.readline reports an over-long line this way
        raise StartTlsError(f"{_label(protocol)} server sent an over-long line") from exc


async def _smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    code, lines = await _coded_reply(reader, "SMTP")
    if code != 220:
        raise StartTlsError(f"SMTP server refused the session: {_show(lines[0])}")
    writer.write(f"EHLO {CLIENT_NAME}\r\n".encode())
    code, lines = await _coded_reply(reader, "SMTP")
    if code != 250:
        raise StartTlsError(f"SMTP server rejected EHLO: {_show(lines[0])}")
    if not any(line[4:].strip().upper().split(b" ")[0] == b"STARTTLS" for line in lines[1:]):
        raise StartTlsError("SMTP server does not offer STARTTLS")
    writer.write(b"STARTTLS\r\n")
    code, lines = await _coded_reply(reader, "SMTP")
    if code != 220:
        raise StartTlsError(f"SMTP server refused STARTTLS: {_show(lines[0])}")


async def _ftp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    code, lines = await _coded_reply(reader, "FTP")
    if code != 220:
        raise StartTlsError(f"FTP server refused the session: {_show(lines[0])}")
    writer.write(b"AUTH TLS\r\n")
    code, lines = await _coded_reply(reader, "FTP")
    if code != 234:
        raise StartTlsError(f"FTP server refused AUTH TLS: {_show(lines[0])}")


async def _imap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    greeting = await _line(reader)
    if not greeting.startswith(b"* OK"):
        if greeting.startswith((b"* BYE", b"* PREAUTH")):
            raise StartTlsError(f"IMAP server refused the session: {_show(greeting)}")
        raise StartTlsError(f"not an IMAP server: {_show(greeting)}")
    writer.write(b"a1 STARTTLS\r\n")
    for _ in range(_MAX_LINES):
        line = await _line(reader)
        if line.startswith(b"* "):
            continue  # untagged data (capabilities, alerts) may precede the tagged answer
        if line.upper().startswith(b"A1 OK"):
            return
        raise StartTlsError(f"IMAP server refused STARTTLS: {_show(line)}")
    raise StartTlsError("IMAP server never answered STARTTLS")


async def _pop3(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    greeting = await _line(reader)
    if not greeting.startswith(b"+OK"):
        if greeting.startswith(b"-ERR"):
            raise StartTlsError(f"POP3 server refused the session: {_show(greeting)}")
        raise StartTlsError(f"not a POP3 server: {_show(greeting)}")
    writer.write(b"STLS\r\n")
    answer = await _line(reader)
    if not answer.startswith(b"+OK"):
        raise StartTlsError(f"POP3 server refused STLS: {_show(answer)}")


async def _ldap(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(ldap_starttls_request(message_id=1))
    header = await reader.readexactly(2)
    if header[0] != 0x30:
        raise StartTlsError(f"not an LDAP server: {_show(header)}")
    length = header[1]
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 3:
            raise StartTlsError("not an LDAP server: bad BER length")
        length = int.from_bytes(await reader.readexactly(count), "big")
    if length > 65536:
        raise StartTlsError("LDAP server answered with an over-long message")
    body = await reader.readexactly(length)
    code, message = parse_ldap_extended_response(body)
    if code != 0:
        detail = f": {message}" if message else ""
        raise StartTlsError(f"LDAP server refused StartTLS (result code {code}){detail}")


async def _postgres(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(_PG_SSL_REQUEST)
    answer = await reader.readexactly(1)
    if answer == b"N":
        raise StartTlsError("PostgreSQL server does not accept TLS")
    if answer != b"S":
        raise StartTlsError(f"not a PostgreSQL server: {_show(answer)}")


Negotiator = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

STARTTLS_PROTOCOLS: dict[Protocol, Negotiator] = {
    Protocol.SMTP: _smtp,
    Protocol.IMAP: _imap,
    Protocol.POP3: _pop3,
    Protocol.FTP: _ftp,
    Protocol.LDAP: _ldap,
    Protocol.POSTGRES: _postgres,
}


def ldap_starttls_request(message_id: int) -> bytes:
    """LDAPMessage { messageID, ExtendedRequest { requestName [0] "1.3.6.1.4.1.1466.20037" } } in BER."""
    request_name = _tlv(0x80, _LDAP_STARTTLS_OID)
    extended_request = _tlv(0x77, request_name)  # [APPLICATION 23], constructed
    return _tlv(0x30, _tlv(0x02, _ber_int(message_id)) + extended_request)


def parse_ldap_extended_response(body: bytes) -> tuple[int, str]:
    """The (resultCode, diagnosticMessage) of an LDAPMessage body holding an ExtendedResponse."""
    tag, _, pos = _read_tlv(body, 0)
    if tag != 0x02:
        raise StartTlsError("not an LDAP server: no message ID")
    tag, op, _ = _read_tlv(body, pos)
    if tag != 0x78:  # [APPLICATION 24] ExtendedResponse
        raise StartTlsError(f"LDAP server answered with operation tag 0x{tag:02x}, not an extended response")
    tag, code_bytes, pos = _read_tlv(op, 0)
    if tag != 0x0A or not code_bytes:
        raise StartTlsError("LDAP server answered without a result code")
    code = int.from_bytes(code_bytes, "big")
    message = ""
    try:
        _, _, pos = _read_tlv(op, pos)  # matchedDN
        tag, diagnostic, _ = _read_tlv(op, pos)
        if tag == 0x04:
            message = diagnostic.decode("utf-8", "replace")
    except StartTlsError:
        pass  # the diagnostic is optional decoration
    return code, _show(message.encode()) if message else ""


def _tlv(tag: int, value: bytes) -> bytes:
    length = len(value)
    if length < 0x80:
        return bytes([tag, length]) + value
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(encoded)]) + encoded + value


def _ber_int(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True)


def _read_tlv(data: bytes, pos: int) -> tuple[int, bytes, int]:
    if pos + 2 > len(data):
        raise StartTlsError("LDAP server sent a truncated message")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 3 or pos + count > len(data):
            raise StartTlsError("LDAP server sent a bad BER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise StartTlsError("LDAP server sent a truncated message")
    return tag, data[pos : pos + length], pos + length


async def _line(reader: asyncio.StreamReader) -> bytes:
    line = await reader.readline()
    if not line:
        raise asyncio.IncompleteReadError(b"", None)
    return line.rstrip(b"\r\n")


async def _coded_reply(reader: asyncio.StreamReader, label: str) -> tuple[int, list[bytes]]:
    """A possibly multi-line ``NNN-...``/``NNN ...`` reply (SMTP, FTP)."""
    lines: list[bytes] = []
    for _ in range(_MAX_LINES):
        line = await _line(reader)
        match = _REPLY.match(line)
        if match is None:
            if not lines:
                raise StartTlsError(f"not an {label} server: {_show(line)}")
            continue  # FTP allows free text inside a multi-line reply
        lines.append(line)
        if match.group(2) == b" ":
            return int(match.group(1)), lines
    raise StartTlsError(f"{label} server sent a reply that never ends")


def _show(data: bytes) -> str:
    text = data.decode("latin-1").strip()
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


def _label(protocol: Protocol) -> str:
    return {Protocol.POSTGRES: "PostgreSQL"}.get(protocol, protocol.value.upper())
