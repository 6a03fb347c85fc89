"""The nginx store against a real nginx on loopback: deploy, test, reload, verify by handshake, roll back."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sslclm.connectors.nginx import NginxStore
from sslclm.deployments.tasks import fingerprint_of
from sslclm.deployments.verify import wait_for_fingerprint
from sslclm.errors import ConnectorError
from sslclm.spi.store import AddRequest, ReloadRequest
from sslclm.spi.testing import CertificateStoreConformance, memory_context, new_add_request


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[tuple[NginxStore, int]]:
    prefix = tmp_path / "nginx"
    certs = prefix / "certs"
    certs.mkdir(parents=True)
    (prefix / "logs").mkdir()
    port = _free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp_body; proxy_temp_path {prefix}/tmp_proxy;
    fastcgi_temp_path {prefix}/tmp_fcgi; uwsgi_temp_path {prefix}/tmp_uwsgi; scgi_temp_path {prefix}/tmp_scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {certs}/www.fullchain.pem;
        ssl_certificate_key {certs}/www.key;
        return 200 "ok";
    }}
}}
"""
    )
    store = NginxStore(
        NginxStore.Config(directory=str(certs), config_file=str(conf), prefix=str(prefix)),
        memory_context(tmp_path / "ctx"),
    )
    store.add(new_add_request("www"))
    subprocess.run(["nginx", "-p", str(prefix), "-c", str(conf)], check=True, timeout=30)
    try:
        yield store, port
    finally:
        subprocess.run(["nginx", "-p", str(prefix), "-c", str(conf), "-s", "stop"], check=False, timeout=30)
        pid = prefix / "nginx.pid"
        deadline = time.monotonic() + 10
        while pid.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


class TestNginxConformance(CertificateStoreConformance):
    @pytest.fixture
    def cert_store(self, nginx: tuple[NginxStore, int]) -> NginxStore:
        return nginx[0]


def test_reload_serves_the_new_certificate(nginx: tuple[NginxStore, int]) -> None:
    store, port = nginx
    request = new_add_request("www")
    store.add(request)
    store.reload(ReloadRequest())
    expected = fingerprint_of(request.certificate_pem)
    assert wait_for_fingerprint("127.0.0.1", port, "www.example.test", expected, timeout=10) == expected


def test_failed_config_test_is_rolled_back(nginx: tuple[NginxStore, int]) -> None:
    store, port = nginx
    good = new_add_request("www")
    store.add(good)
    store.reload(ReloadRequest())
    expected = fingerprint_of(good.certificate_pem)
    assert wait_for_fingerprint("127.0.0.1", port, None, expected) == expected
    other = new_add_request("www")
    # A key that does not belong to the certificate: nginx -t refuses it.
    mismatched = AddRequest(
        alias="www",
        certificate_pem=other.certificate_pem,
        chain_pem=other.chain_pem,
        private_key_pem=good.private_key_pem,
    )
    store.add(mismatched)
    with pytest.raises(ConnectorError) as caught:
        store.reload(ReloadRequest())
    assert "nginx -t -q failed" in caught.value.message and not caught.value.retryable
    assert store.restore_previous("www")
    store.reload(ReloadRequest())
    assert wait_for_fingerprint("127.0.0.1", port, None, expected) == expected
