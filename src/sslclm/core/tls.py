"""The server's own TLS: an internal CA kept in the data directory, and the certificate ``serve`` presents.

Layout under ``$SSLCLM_HOME/tls``::

    internal-ca.pem        the CA certificate (public; also served at /api/v1/system/ca.pem)
    internal-ca.key.enc    the CA key, PKCS#8 sealed with the platform envelope (0600)
    server.pem, server.key the listener's certificate and key, in clear because uvicorn reads them (0600)

The CA is created once and then only read, so clients that trusted it keep trusting the server; the
server certificate is re-issued at start whenever it is close to expiry, was signed by another CA, or
does not name the address being served, and while ``serve`` runs by the hourly check of
``sslclm.core.tls_renewal``, which swaps it into the live listeners.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import re
import secrets
import socket
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import cast

from sslclm.core.config import Settings
from sslclm.core.platform import Platform
from sslclm.errors import ConfigurationError, SslClmError
from sslclm.pki import (
    SigningKey,
    certificate_to_pem,
    create_ca,
    extract_info,
    issue_server_certificate,
    load_certificate,
    load_private_key_der,
    private_key_to_pem,
    private_key_to_pkcs8_der,
)
from sslclm.pki.info import CertificateInfo

TLS_DIR = "tls"
CA_CERT_FILE = "internal-ca.pem"
CA_KEY_FILE = "internal-ca.key.enc"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"
CA_KEY_AAD = b"internal-ca"
CA_VALID_DAYS = 3650
SERVER_VALID_DAYS = 365
RENEW_WITHIN = timedelta(days=30)
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
_HOSTNAME = re.compile(
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


@dataclass(frozen=True, slots=True)
class ServerTls:
    cert_file: Path
    key_file: Path
    ca_file: Path


def tls_dir(settings: Settings) -> Path:
    directory = settings.ensure_home() / TLS_DIR
    directory.mkdir(mode=0o700, exist_ok=True)
    return directory


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    # Two processes starting on one data directory must not each create a CA or a server key.
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replaces ``path`` in one rename, so a reader never sees a half-written key or certificate."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@dataclass(frozen=True, slots=True)
class _Ca:
    cert_pem: bytes
    info: CertificateInfo
    sealed_key: bytes


def _load_ca(directory: Path) -> _Ca | None:
    cert_path, key_path = directory / CA_CERT_FILE, directory / CA_KEY_FILE
    if not cert_path.exists() and not key_path.exists():
        return None
    if not (cert_path.exists() and key_path.exists()):
        present, absent = (cert_path, key_path) if cert_path.exists() else (key_path, cert_path)
        raise ConfigurationError(
            f"{present} exists but {absent} is missing; "
            "restore it, or remove both to create a new internal CA"
        )
    cert_pem = cert_path.read_bytes()
    try:
        info = extract_info(load_certificate(cert_pem))
    except SslClmError as exc:
        raise ConfigurationError(f"{cert_path} is not a readable certificate: {exc.message}") from exc
    return _Ca(cert_pem, info, key_path.read_bytes())


def _ensure_ca(platform: Platform, directory: Path) -> _Ca:
    existing = _load_ca(directory)
    if existing is not None:
        return existing
    key, cert = create_ca(f"SSL-CLM internal CA {secrets.token_hex(4)}", valid_days=CA_VALID_DAYS)
    sealed = platform.envelope.encrypt(private_key_to_pkcs8_der(key), CA_KEY_AAD)
    # The key first: a certificate without its key would block every later start.
    _write_atomically(directory / CA_KEY_FILE, sealed, 0o600)
    cert_pem = certificate_to_pem(cert)
    _write_atomically(directory / CA_CERT_FILE, cert_pem, 0o644)
    return _Ca(cert_pem, extract_info(cert), sealed)


def internal_ca_pem(platform: Platform) -> bytes:
    """The internal CA certificate as PEM, creating the CA on first use."""
    directory = tls_dir(platform.settings)
    # Under the lock: the CA's two files are written one after the other.
    with _locked(directory):
        return _ensure_ca(platform, directory).cert_pem


def server_names(settings: Settings, host: str | None) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses the server certificate must carry for ``host``."""
    wanted = [*settings.server_hostnames, "127.0.0.1", "::1"]
    if host is not None and host.strip("[]") not in WILDCARD_HOSTS:
        wanted.append(host.strip("[]"))
    elif host is not None:
        # Listening on every interface: the machine's own name is how others will reach it.
        machine = socket.gethostname()
        if _HOSTNAME.match(machine):
            wanted.append(machine)
    dns: list[str] = []
    ips: list[str] = []
    for name in wanted:
        try:
            address = str(ipaddress.ip_address(name))
        except ValueError:
            lowered = name.lower().rstrip(".")
            if lowered and lowered not in dns:
                dns.append(lowered)
            continue
        if address not in ips:
            ips.append(address)
    return dns, ips


def _covered_names(info: CertificateInfo) -> tuple[set[str], set[str]]:
    dns: set[str] = set()
    ips: set[str] = set()
    for san in info.sans:
        kind, _, value = san.partition(":")
        if kind == "DNS":
            dns.add(value.lower())
        elif kind == "IP":
            try:
                ips.add(str(ipaddress.ip_address(value)))
            except ValueError:
                continue
    return dns, ips


def _server_cert_current(
    directory: Path, ca: _Ca, dns: Sequence[str], ips: Sequence[str], now: datetime
) -> bool:
    cert_path, key_path = directory / SERVER_CERT_FILE, directory / SERVER_KEY_FILE
    if not cert_path.exists() or not key_path.exists():
        return False
    try:
        info = extract_info(load_certificate(cert_path.read_bytes()))
    except SslClmError:
        return False
    if info.issuer != ca.info.subject or (
        ca.info.subject_key_id and info.authority_key_id != ca.info.subject_key_id
    ):
        return False
    if info.not_after - now < RENEW_WITHIN:
        return False
    have_dns, have_ips = _covered_names(info)
    return set(dns) <= have_dns and set(ips) <= have_ips


def ensure_server_tls(platform: Platform, host: str | None = None) -> ServerTls:
    """The certificate and key ``serve`` listens with, issued by the internal CA when needed."""
    directory = tls_dir(platform.settings)
    dns, ips = server_names(platform.settings, host)
    now = platform.clock()
    with _locked(directory):
        ca = _ensure_ca(platform, directory)
        if not _server_cert_current(directory, ca, dns, ips, now):
            der = platform.envelope.decrypt(ca.sealed_key, CA_KEY_AAD)
            # The sealed blob is authenticated and written only by _ensure_ca, from a signing key.
            ca_key = cast(SigningKey, load_private_key_der(der))
            key, cert = issue_server_certificate(
                ca_key,
                load_certificate(ca.cert_pem),
                hostnames=dns,
                ip_addresses=ips,
                valid_days=SERVER_VALID_DAYS,
                now=now,
            )
            _write_atomically(directory / SERVER_KEY_FILE, private_key_to_pem(key), 0o600)
            _write_atomically(directory / SERVER_CERT_FILE, certificate_to_pem(cert), 0o644)
    return ServerTls(directory / SERVER_CERT_FILE, directory / SERVER_KEY_FILE, directory / CA_CERT_FILE)
