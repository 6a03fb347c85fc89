"""Closing the loop: does the endpoint now serve the certificate we deployed?"""

from __future__ import annotations

import hashlib
import socket
import ssl
import time

from sslclm.errors import ConnectorError


def served_fingerprint(host: str, port: int, sni: str | None, *, timeout: float = 5.0) -> str:
    """SHA-256 of the leaf certificate the endpoint presents (no trust check: we compare, not trust)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=sni or None) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectorError(f"TLS handshake with {host}:{port} failed: {exc}", retryable=True) from None
    if not der:
        raise ConnectorError(f"{host}:{port} presented no certificate", retryable=True)
    return hashlib.sha256(der).hexdigest()


def wait_for_fingerprint(
    host: str, port: int, sni: str | None, expected: str, *, timeout: float = 10.0, interval: float = 0.2
) -> str:
    """Polls until the endpoint serves ``expected`` (a reload takes effect as old workers drain).

    Returns the fingerprint last seen, which differs from ``expected`` when the time ran out.
    """
    deadline = time.monotonic() + timeout
    seen = ""
    while True:
        try:
            seen = served_fingerprint(host, port, sni)
        except ConnectorError as exc:
            seen = f"(none: {exc.message})"
        if seen == expected or time.monotonic() >= deadline:
            return seen
        time.sleep(interval)
