from __future__ import annotations

import errno
import socket
import ssl

import pytest

from sslclm.connectors.tls_scan import ErrorKind, ScanOptions, ScanTarget, TrustStore
from sslclm.connectors.tls_scan.scanner import _classify
from sslclm.connectors.tls_scan.starttls import StartTlsError

TARGET = ScanTarget("mail.example", 25, "mail.example")
OPTIONS = ScanOptions(connect_timeout=2, handshake_timeout=3, trust_store=TrustStore([]))


@pytest.mark.parametrize(
    ("exc", "stage", "expected"),
    [
        (TimeoutError(), "connect", (ErrorKind.TIMEOUT, "connect timed out after 2s")),
        (
            TimeoutError(),
            "SMTP STARTTLS dialogue",
            (ErrorKind.TIMEOUT, "SMTP STARTTLS dialogue timed out after 3s"),
        ),
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
            "connect",
            (ErrorKind.REFUSED, "connection refused"),
        ),
        (
            ConnectionResetError(errno.ECONNRESET, "reset"),
            "TLS handshake",
            (ErrorKind.RESET, "connection reset during the TLS handshake"),
        ),
        (
            ConnectionResetError(),
            "TLS handshake",
            (ErrorKind.CLOSED, "server closed the connection during the TLS handshake"),
        ),
        (
            StartTlsError("SMTP server does not offer STARTTLS"),
            "SMTP STARTTLS dialogue",
            (ErrorKind.STARTTLS, "SMTP server does not offer STARTTLS"),
        ),
        (
            ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
            "TLS handshake",
            (ErrorKind.CLOSED, "server closed the connection during the TLS handshake"),
        ),
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "connect",
            (ErrorKind.DNS, "cannot resolve mail.example: Name or service not known"),
        ),
        (
            OSError(errno.EHOSTUNREACH, "No route to host"),
            "connect",
            (ErrorKind.UNREACHABLE, "No route to host"),
        ),
        (
            OSError(errno.EMFILE, "Too many open files"),
            "connect",
            (ErrorKind.ERROR, "Too many open files during the connect"),
        ),
        # asyncio folds the errors of a name's several addresses into one message without an errno.
        (
            OSError(
                "Multiple exceptions: [Errno 111] Connect call failed ('::1', 25, 0, 0), "
                "[Errno 111] Connect call failed ('127.0.0.1', 25)"
            ),
            "connect",
            (ErrorKind.REFUSED, "connection refused (every address)"),
        ),
        (
            OSError(
                "Multiple exceptions: [Errno 113] Connect call failed ('2001:db8::1', 25, 0, 0), "
                "[Errno 101] Connect call failed ('192.0.2.1', 25)"
            ),
            "connect",
            (ErrorKind.UNREACHABLE, "unreachable (every address)"),
        ),
    ],
)
def test_errors_become_one_line_reasons(exc: Exception, stage: str, expected: tuple[ErrorKind, str]) -> None:
    assert _classify(exc, stage, TARGET, OPTIONS) == expected
