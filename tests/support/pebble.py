"""Runs the real Pebble ACME test server (Debian package ``pebble``) for tests, with real validation.

Pebble resolves every name through the test DNS server (:mod:`tests.support.dns_server`), which answers
127.0.0.1, so it fetches http-01 challenges from a :class:`ChallengeServer` on loopback and reads dns-01
TXT records that an RFC 2136 UPDATE stored. Ports are chosen free at start so several test runs can
share the machine.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from sslclm.pki import certificate_to_pem, create_ca, issue_server_certificate, private_key_to_pem
from tests.support.dns_server import DnsServer

PEBBLE = Path("/usr/bin/pebble")
CHALLENGE_PATH = re.compile(r"^/\.well-known/acme-challenge/([A-Za-z0-9_-]+)$")


def require_pebble() -> Path:
    """The pebble binary; fails (not skips) the test when it is missing, since ``make test`` installs it."""
    if not PEBBLE.exists():
        pytest.fail("pebble is required: install the Debian package 'pebble' (make system-deps, as root)")
    return PEBBLE


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ChallengeServer:
    """An HTTP server on loopback answering ``/.well-known/acme-challenge/<token>`` through ``lookup``.

    ``lookup`` may be swapped by each test (the gateway's responder, a webroot, a wrong answer);
    ``delay`` holds every answer back that many seconds. Fetched tokens are kept in ``fetched``.
    """

    def __init__(self) -> None:
        self.lookup: Callable[[str], bytes | None] = lambda token: None
        self.delay = 0.0
        self.fetched: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                match = CHALLENGE_PATH.match(self.path)
                body = outer.lookup(match.group(1)) if match else None
                if match:
                    outer.fetched.append(match.group(1))
                if outer.delay:
                    time.sleep(outer.delay)
                self.send_response(200 if body is not None else 404)
                payload = body if body is not None else b"not found"
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1})
        self._thread.daemon = True
        self._thread.start()

    def reset(self) -> None:
        self.lookup = lambda token: None
        self.delay = 0.0
        self.fetched.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@dataclass
class Pebble:
    directory_url: str
    management_url: str
    ca_bundle: Path  # the CA of Pebble's listener certificate, for the client's TLS verification
    http_port: int
    log: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def _client(self) -> httpx.Client:
        return httpx.Client(verify=ssl.create_default_context(cafile=str(self.ca_bundle)), timeout=10)

    def get_management(self, path: str) -> httpx.Response:
        with self._client() as client:
            return client.get(f"{self.management_url}/{path.lstrip('/')}")

    def root_pem(self) -> bytes:
        response = self.get_management("roots/0")
        response.raise_for_status()
        return response.content

    def cert_status(self, serial_hex: str) -> dict[str, Any]:
        """Pebble's record of a certificate: ``Status`` ("Valid"/"Revoked"), ``Reason``, ``RevokedAt``."""
        response = self.get_management(f"cert-status-by-serial/{serial_hex}")
        response.raise_for_status()
        status: dict[str, Any] = response.json()
        return status


def _write_listener_certificate(directory: Path) -> tuple[Path, Path, Path]:
    ca_key, ca_cert = create_ca("Pebble Listener Test CA")
    key, cert = issue_server_certificate(
        ca_key, ca_cert, hostnames=["localhost"], ip_addresses=["127.0.0.1"], valid_days=30
    )
    ca_path, cert_path, key_path = (
        directory / "listener-ca.pem",
        directory / "cert.pem",
        directory / "key.pem",
    )
    ca_path.write_bytes(certificate_to_pem(ca_cert))
    cert_path.write_bytes(certificate_to_pem(cert))
    key_path.write_bytes(private_key_to_pem(key))
    key_path.chmod(0o600)
    return ca_path, cert_path, key_path


@contextmanager
def run_pebble(
    directory: Path,
    *,
    dns_port: int,
    http_port: int,
    eab_keys: Mapping[str, str] | None = None,
    blocklist: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Iterator[Pebble]:
    """Start pebble validating http-01 on ``http_port`` and resolving through 127.0.0.1:``dns_port``.

    ``eab_keys`` (kid → base64url HMAC key) makes external account binding required.
    """
    binary = require_pebble()
    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = _write_listener_certificate(directory)
    listen, management = free_port(), free_port()
    config: dict[str, Any] = {
        "listenAddress": f"127.0.0.1:{listen}",
        "managementListenAddress": f"127.0.0.1:{management}",
        "certificate": str(cert_path),
        "privateKey": str(key_path),
        "httpPort": http_port,
        "tlsPort": free_port(),
        "ocspResponderURL": "",
        "externalAccountBindingRequired": bool(eab_keys),
        "domainBlocklist": list(blocklist),
        "certificateValidityPeriod": 90 * 86400,
    }
    if eab_keys:
        config["externalAccountMACKeys"] = dict(eab_keys)
    config_path = directory / "pebble-config.json"
    config_path.write_text(json.dumps({"pebble": config}, indent=2))
    # Real validation (no PEBBLE_VA_ALWAYS_VALID) without the random sleep; nonces are still rejected
    # at Pebble's default rate, which the client must survive.
    process_env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", **(env or {})}
    process_env.pop("PEBBLE_VA_ALWAYS_VALID", None)
    log = directory / "pebble.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [str(binary), "-config", str(config_path), "-dnsserver", f"127.0.0.1:{dns_port}"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=process_env,
            start_new_session=True,
        )
    pebble = Pebble(
        directory_url=f"https://127.0.0.1:{listen}/dir",
        management_url=f"https://127.0.0.1:{management}",
        ca_bundle=ca_path,
        http_port=http_port,
        log=log,
        process=process,
    )
    try:
        _wait_until_ready(pebble)
        yield pebble
    finally:
        _stop(process)


def _wait_until_ready(pebble: Pebble) -> None:
    deadline = time.monotonic() + 20
    context = ssl.create_default_context(cafile=str(pebble.ca_bundle))
    while time.monotonic() < deadline:
        if pebble.process.poll() is not None:
            pytest.fail(f"pebble exited with {pebble.process.returncode}: {pebble.log.read_text()[-2000:]}")
        try:
            with httpx.Client(verify=context, timeout=2) as client:
                if client.get(pebble.directory_url).status_code == 200:
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"pebble did not answer at {pebble.directory_url}: {pebble.log.read_text()[-2000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@dataclass
class AcmeLab:
    """Pebble with everything it validates against: the DNS server (zone ``acme.test``, which takes
    RFC 2136 updates signed with ``tsig_name``/``tsig_secret``) and the http-01 challenge server.
    """

    pebble: Pebble
    dns: DnsServer
    challenges: ChallengeServer
    zone: str
    tsig_name: str
    tsig_secret: str

    def config(self, **overrides: Any) -> dict[str, Any]:
        """An ``acme`` gateway config for this Pebble (http-01 through the responder by default)."""
        config: dict[str, Any] = {
            "directory_url": self.pebble.directory_url,
            "ca_bundle": str(self.pebble.ca_bundle),
            "terms_of_service_agreed": True,
            "contact_emails": ["pki@example.com"],
            "management_url": self.pebble.management_url,
            "poll_interval_seconds": 0.2,
            "order_timeout_seconds": 60,
        }
        config.update(overrides)
        return config

    def rfc2136(self, **overrides: Any) -> dict[str, Any]:
        provider: dict[str, Any] = {
            "kind": "rfc2136",
            "server": "127.0.0.1",
            "port": self.dns.port,
            "zone": self.zone,
            "tsig_key_name": self.tsig_name,
            "tsig_secret": self.tsig_secret,
        }
        provider.update(overrides)
        return provider


@contextmanager
def acme_lab(
    directory: Path, *, eab_keys: Mapping[str, str] | None = None, blocklist: Sequence[str] = ()
) -> Iterator[AcmeLab]:
    require_pebble()
    secret = base64.b64encode(os.urandom(32)).decode()
    zone, tsig_name = "acme.test.", "sslclm-acme."
    challenges = ChallengeServer()
    try:
        with (
            DnsServer([zone, "sslclm.test."], tsig_keys={tsig_name: secret}) as dns_server,
            run_pebble(
                directory,
                dns_port=dns_server.port,
                http_port=challenges.port,
                eab_keys=eab_keys,
                blocklist=blocklist,
                env={"PEBBLE_WFE_ORDERS_PER_PAGE": "100"},
            ) as pebble,
        ):
            yield AcmeLab(pebble, dns_server, challenges, zone, tsig_name, secret)
    finally:
        challenges.close()
