"""The scanner against a real nginx on loopback: SNI-selected chains, a TLS 1.2-only port, and the
mail proxy's real SMTP/IMAP/POP3 STARTTLS (Debian packages nginx-light and libnginx-mod-mail)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sslclm.connectors.tls_scan import (
    ErrorKind,
    Protocol,
    ScanOptions,
    ScanResult,
    TrustError,
    TrustStore,
    parse_targets,
    scan,
)
from support.tls_zoo import Issued, Pki, free_port, issue, write_identity

MAIL_MODULE = Path("/usr/lib/nginx/modules/ngx_mail_module.so")


@dataclass(frozen=True)
class Nginx:
    pki: Pki
    leaves: dict[str, Issued]
    ports: dict[str, int]


def _config(directory: Path, ports: dict[str, int], identities: dict[str, tuple[Path, Path]]) -> str:
    def tls(label: str) -> str:
        cert, key = identities[label]
        return f"ssl_certificate {cert}; ssl_certificate_key {key};"

    temp = " ".join(
        f"{kind}_temp_path {directory}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
load_module {MAIL_MODULE};
daemon off;
worker_processes 1;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    {temp}
    ssl_protocols TLSv1.2 TLSv1.3;
    server {{ listen 127.0.0.1:{ports["https"]} ssl default_server; {tls("default")} return 204; }}
    server {{ listen 127.0.0.1:{ports["https"]} ssl; server_name a.zoo.test; {tls("a")} return 204; }}
    server {{ listen 127.0.0.1:{ports["https"]} ssl; server_name b.zoo.test; {tls("b")} return 204; }}
    server {{ listen 127.0.0.1:{ports["tls12"]} ssl; ssl_protocols TLSv1.2; {tls("a")} return 204; }}
}}
mail {{
    server_name mail.zoo.test;
    auth_http 127.0.0.1:{ports["auth"]}/auth;
    {tls("mail")}
    starttls on;
    server {{ listen 127.0.0.1:{ports["smtp"]}; protocol smtp; }}
    server {{ listen 127.0.0.1:{ports["imap"]}; protocol imap; }}
    server {{ listen 127.0.0.1:{ports["pop3"]}; protocol pop3; }}
}}
"""


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    binary = shutil.which("nginx")
    if binary is None or not MAIL_MODULE.is_file():
        pytest.fail("nginx is required: install the Debian packages nginx-light and libnginx-mod-mail")
    directory = tmp_path_factory.mktemp("nginx")
    pki = Pki.create("Nginx")
    leaves = {
        "a": pki.leaf("a.zoo.test"),
        "b": pki.leaf("b.zoo.test"),
        "mail": pki.leaf("mail.zoo.test"),
        "default": issue("default.zoo.test", names=["default.zoo.test"]),
    }
    identities = {
        label: write_identity(directory, label, leaf, [] if label == "default" else [pki.intermediate])
        for label, leaf in leaves.items()
    }
    ports = {name: free_port() for name in ("https", "tls12", "smtp", "imap", "pop3", "auth")}
    config = directory / "nginx.conf"
    config.write_text(_config(directory, ports, identities))
    log = directory / "error.log"
    process = subprocess.Popen([binary, "-p", str(directory), "-c", str(config), "-e", str(log)])
    try:
        _wait_for(process, [p for name, p in ports.items() if name != "auth"], log)
        yield Nginx(pki, leaves, ports)
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for(process: subprocess.Popen[bytes], ports: list[int], log: Path) -> None:
    deadline = time.monotonic() + 15
    pending = list(ports)
    while pending:
        if process.poll() is not None:
            pytest.fail(f"nginx exited with {process.returncode}: {log.read_text() if log.exists() else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"nginx did not listen on {pending}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", pending[0]), timeout=0.5):
            pending.pop(0)
            continue
        time.sleep(0.05)


def _scan(nginx: Nginx, *specs: str) -> list[ScanResult]:
    async def main() -> list[ScanResult]:
        options = ScanOptions(trust_store=TrustStore([nginx.pki.root.cert]), handshake_timeout=5)
        return [r async for r in scan(parse_targets(specs), options)]

    return asyncio.run(main())


def test_nginx_serves_chains_by_sni(nginx: Nginx) -> None:
    results = _scan(nginx, f"a.zoo.test,b.zoo.test,c.zoo.test@127.0.0.1:{nginx.ports['https']}")
    by_sni = {r.target.sni: r for r in results}
    intermediate = nginx.pki.intermediate.der
    for name in ("a", "b"):
        result = by_sni[f"{name}.zoo.test"]
        assert result.chain == (nginx.leaves[name].der, intermediate)
        assert (result.ok, result.trusted, result.hostname_match, result.tls_version) == (
            True,
            True,
            True,
            "TLSv1.3",
        )
        assert result.alpn == "http/1.1"
    for sni in (None, "c.zoo.test"):  # unknown or absent names get the default server's certificate
        result = by_sni[sni]
        assert result.chain == (nginx.leaves["default"].der,)
        assert (result.trusted, result.trust_error_kind, result.hostname_match) == (
            False,
            TrustError.SELF_SIGNED,
            False,
        )


def test_nginx_tls12_only_port(nginx: Nginx) -> None:
    results = {r.target.sni: r for r in _scan(nginx, f"a.zoo.test@127.0.0.1:{nginx.ports['tls12']}")}
    assert results["a.zoo.test"].tls_version == "TLSv1.2"
    assert results["a.zoo.test"].cipher is not None and results["a.zoo.test"].trusted


@pytest.mark.parametrize("protocol", [Protocol.SMTP, Protocol.IMAP, Protocol.POP3])
def test_nginx_mail_proxy_starttls(nginx: Nginx, protocol: Protocol) -> None:
    results = _scan(nginx, f"{protocol.value}://mail.zoo.test@127.0.0.1:{nginx.ports[protocol.value]}")
    by_sni = {r.target.sni: r for r in results}
    for result in by_sni.values():
        assert result.target.protocol is protocol
        assert result.ok, result.error
        assert result.chain == (nginx.leaves["mail"].der, nginx.pki.intermediate.der)
        assert result.trusted
    assert by_sni["mail.zoo.test"].hostname_match is True
    assert by_sni[None].hostname_match is False  # the IP address is not in the mail certificate


def test_nginx_clear_text_greeting_is_not_tls(nginx: Nginx) -> None:
    # The mail proxy's SMTP port scanned as direct TLS: nginx greets in clear text first.
    (result,) = _scan(nginx, f"tls://127.0.0.1:{nginx.ports['smtp']}")
    assert (result.ok, result.error_kind) == (False, ErrorKind.NOT_TLS)
