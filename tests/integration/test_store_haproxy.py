"""The haproxy store against a real HAProxy in master-worker mode on loopback: deploy, ``haproxy -c``,
SIGUSR2 reload, verification by TLS handshake, and rollback when the configuration test fails."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sslclm.connectors.haproxy import HaproxyStore
from sslclm.deployments.tasks import fingerprint_of
from sslclm.deployments.verify import served_fingerprint, wait_for_fingerprint
from sslclm.errors import ConnectorError
from sslclm.jobs.registry import load_task_modules
from sslclm.jobs.worker import Worker
from sslclm.spi.store import AddRequest, ReloadRequest, RemoveRequest
from sslclm.spi.testing import CertificateStoreConformance, memory_context, new_add_request
from tests.conftest import ApiUser

API = "/api/v1"
HAPROXY_CONFIG = """
global
    maxconn 64
defaults
    mode http
    timeout connect 5s
    timeout client 5s
    timeout server 5s
frontend www
    bind 127.0.0.1:{port} ssl crt-list {crt_list}
    http-request return status 200 content-type text/plain string ok
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@dataclass
class Haproxy:
    """A running HAProxy master with its files; ``config`` is what the store connection is given."""

    port: int
    directory: Path
    config_file: Path
    pid_file: Path
    crt_list: Path

    @property
    def config(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "crt_list": str(self.crt_list),
            "config_file": str(self.config_file),
            "pid_file": str(self.pid_file),
        }

    def store(self, tmp_path: Path) -> HaproxyStore:
        return HaproxyStore(HaproxyStore.Config(**self.config), memory_context(tmp_path / "ctx"))

    def master_pid(self) -> int:
        return int(self.pid_file.read_text().split()[0])


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Haproxy]:
    root = tmp_path / "haproxy"
    directory = root / "certs"
    directory.mkdir(parents=True)
    port = _free_port()
    crt_list = root / "certs.list"
    config_file = root / "haproxy.cfg"
    config_file.write_text(HAPROXY_CONFIG.format(port=port, crt_list=crt_list))
    running = Haproxy(port, directory, config_file, root / "haproxy.pid", crt_list)
    # HAProxy will not start without a certificate: the first one is put there the store's way.
    running.store(tmp_path).add(new_add_request("www", name="www.example.com"))
    subprocess.run(
        ["haproxy", "-W", "-D", "-q", "-p", str(running.pid_file), "-f", str(config_file)],
        check=True,
        timeout=30,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                served_fingerprint("127.0.0.1", port, None, timeout=1)
                break
            except ConnectorError:
                time.sleep(0.05)
        yield running
    finally:
        pid = running.master_pid()
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


class TestHaproxyConformance(CertificateStoreConformance):
    @pytest.fixture
    def cert_store(self, haproxy: Haproxy, tmp_path: Path) -> HaproxyStore:
        return haproxy.store(tmp_path)


def test_one_pem_with_key_listed_in_the_crt_list(haproxy: Haproxy, tmp_path: Path) -> None:
    store = haproxy.store(tmp_path)
    request = new_add_request("api")
    store.add(request)
    pem = haproxy.directory / "api.pem"
    assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    content = pem.read_bytes()
    assert content.startswith(request.certificate_pem)
    assert request.chain_pem[0] in content and content.endswith(request.private_key_pem or b"-")
    assert str(pem) in haproxy.crt_list.read_text().splitlines()
    store.remove(RemoveRequest(alias="api"))
    assert str(pem) not in haproxy.crt_list.read_text()
    assert str(haproxy.directory / "www.pem") in haproxy.crt_list.read_text()


def test_reload_serves_the_new_certificate(haproxy: Haproxy, tmp_path: Path) -> None:
    store = haproxy.store(tmp_path)
    master = haproxy.master_pid()
    request = new_add_request("www", name="www.example.com")
    store.add(request)
    assert "reloaded" in store.reload(ReloadRequest()).message
    expected = fingerprint_of(request.certificate_pem)
    assert wait_for_fingerprint("127.0.0.1", haproxy.port, "www.example.com", expected) == expected
    assert haproxy.master_pid() == master and _alive(master)  # reloaded, not restarted


def test_failed_config_test_is_rolled_back(haproxy: Haproxy, tmp_path: Path) -> None:
    store = haproxy.store(tmp_path)
    good = new_add_request("www")
    store.add(good)
    store.reload(ReloadRequest())
    expected = fingerprint_of(good.certificate_pem)
    assert wait_for_fingerprint("127.0.0.1", haproxy.port, None, expected) == expected
    other = new_add_request("www")
    # A key that does not belong to the certificate: haproxy -c refuses it and nothing is signalled.
    store.add(
        AddRequest(
            alias="www",
            certificate_pem=other.certificate_pem,
            chain_pem=other.chain_pem,
            private_key_pem=good.private_key_pem,
        )
    )
    with pytest.raises(ConnectorError) as caught:
        store.reload(ReloadRequest())
    assert "haproxy -c failed" in caught.value.message and not caught.value.retryable
    assert served_fingerprint("127.0.0.1", haproxy.port, None) == expected
    assert store.restore_previous("www")
    assert fingerprint_of((haproxy.directory / "www.pem").read_bytes()) == expected
    store.reload(ReloadRequest())
    assert wait_for_fingerprint("127.0.0.1", haproxy.port, None, expected) == expected


def test_a_new_alias_rolled_back_leaves_the_crt_list_as_it_was(haproxy: Haproxy, tmp_path: Path) -> None:
    store = haproxy.store(tmp_path)
    before = haproxy.crt_list.read_text()
    store.add(new_add_request("fresh"))
    assert haproxy.crt_list.read_text() != before
    assert store.restore_previous("fresh")
    assert not (haproxy.directory / "fresh.pem").exists()
    assert haproxy.crt_list.read_text() == before
    store.test_configuration()


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        ({"directory": "relative/dir"}, "absolute"),
        ({"directory": "/srv/certs", "mode": "0644"}, "others"),
        ({"directory": "/srv/certs", "crt_file": "x.pem"}, "{alias}"),
        ({"directory": "/srv/certs", "pid_file": None}, "reload"),
        ({"directory": "/srv/certs", "reload_command": []}, "non-empty"),
    ],
)
def test_bad_config_is_refused(config: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        HaproxyStore.Config(**config)


def test_check_names_a_missing_master(haproxy: Haproxy, tmp_path: Path) -> None:
    config = {**haproxy.config, "pid_file": str(tmp_path / "nope.pid")}
    store = HaproxyStore(HaproxyStore.Config(**config), memory_context(tmp_path / "ctx2"))
    result = store.check()
    assert not result.ok and "nope.pid does not exist" in result.message
    assert haproxy.store(tmp_path).check().ok


# --- through the deployment workflow --------------------------------------------------------------


def _run_jobs(platform: Any) -> None:
    load_task_modules()
    Worker(platform, concurrency=2, poll_interval=0.05).run_until_idle(timeout=120)


def test_workflow_deploys_verifies_and_rolls_back(
    client: TestClient, api_users: dict[str, ApiUser], platform: Any, haproxy: Haproxy
) -> None:
    admin = api_users["admin"].headers
    operator = api_users["operator"].headers
    ca = {"name": "internal", "type": "local", "config": {}}
    assert client.post(f"{API}/ca-connections", json=ca, headers=admin).status_code == 201
    profile = {"name": "web", "ca_connection": "internal", "validity_days": 30}
    assert client.post(f"{API}/profiles", json=profile, headers=admin).status_code == 201
    created = client.post(
        f"{API}/managed-certificates",
        json={"dns_names": ["www.example.com"], "profile": "web"},
        headers=admin,
    )
    assert created.status_code == 202, created.text
    store = {"name": "edge", "type": "haproxy", "config": haproxy.config}
    assert client.post(f"{API}/stores", json=store, headers=admin).status_code == 201
    _run_jobs(platform)
    bound = client.post(
        f"{API}/bindings",
        json={
            "managed_certificate": "www.example.com",
            "store": "edge",
            "alias": "www",
            "verify": {"host": "127.0.0.1", "port": haproxy.port, "sni": "www.example.com"},
        },
        headers=operator,
    )
    assert bound.status_code == 201, bound.text
    _run_jobs(platform)
    url = f"{API}/bindings/{bound.json()['id']}"
    first = client.get(url, headers=operator).json()
    assert first["status"] == "deployed", first
    deployed = first["last_deployed_fingerprint"]
    assert served_fingerprint("127.0.0.1", haproxy.port, "www.example.com") == deployed

    # The operator's configuration breaks: the next deployment fails its test and is undone.
    with haproxy.config_file.open("a") as config:
        config.write("frontend broken\n    bind 127.0.0.1:1 ssl crt /nonexistent.pem\n")
    renew = client.post(f"{API}/managed-certificates/www.example.com/renew", headers=operator)
    assert renew.status_code == 202, renew.text
    _run_jobs(platform)
    failed = client.get(url, headers=operator).json()
    assert failed["status"] == "failed", failed
    assert "haproxy -c failed" in failed["error"], failed["error"]
    assert failed["deployments"][0]["status"] == "failed"
    assert failed["last_deployed_fingerprint"] == deployed
    assert fingerprint_of((haproxy.directory / "www.pem").read_bytes()) == deployed
    assert served_fingerprint("127.0.0.1", haproxy.port, "www.example.com") == deployed
