"""Deploy managed certificates issued by the built-in CA to a pem-files store, run by a real worker."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from sslclm.audit.models import AuditEvent
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.deployments.tasks import fingerprint_of
from sslclm.jobs.registry import load_task_modules
from sslclm.jobs.worker import Worker
from tests.conftest import ApiUser

API = "/api/v1"


def run_jobs(platform: Platform) -> None:
    load_task_modules()
    Worker(platform, concurrency=2, poll_interval=0.05).run_until_idle(timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def enrolled(client: TestClient, api_users: dict[str, ApiUser], platform: Platform, tmp_path: Path) -> dict:
    admin = api_users["admin"].headers
    assert (
        client.post(
            f"{API}/ca-connections", json={"name": "internal", "type": "local", "config": {}}, headers=admin
        ).status_code
        == 201
    )
    profile = {"name": "web", "ca_connection": "internal", "validity_days": 30}
    assert client.post(f"{API}/profiles", json=profile, headers=admin).status_code == 201
    created = client.post(
        f"{API}/managed-certificates",
        json={"dns_names": ["www.example.com"], "profile": "web"},
        headers=admin,
    )
    assert created.status_code == 202, created.text
    run_jobs(platform)
    directory = tmp_path / "www"
    directory.mkdir()
    store = client.post(
        f"{API}/stores",
        json={"name": "web-files", "type": "pem-files", "config": {"directory": str(directory)}},
        headers=admin,
    )
    assert store.status_code == 201, store.text
    return {"managed_id": created.json()["id"], "directory": directory}


def _served(path: Path) -> str:
    return fingerprint_of(path.read_bytes())


def test_bind_deploy_redeploy_undeploy(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, enrolled: dict
) -> None:
    operator = api_users["operator"].headers
    directory: Path = enrolled["directory"]
    check = client.post(f"{API}/stores/web-files/check", headers=api_users["admin"].headers)
    assert check.json()["ok"] is True, check.text
    bound = client.post(
        f"{API}/bindings",
        json={"managed_certificate": str(enrolled["managed_id"]), "store": "web-files", "alias": "www"},
        headers=operator,
    )
    assert bound.status_code == 201, bound.text
    assert bound.json()["job_id"] is not None
    run_jobs(platform)
    binding = client.get(f"{API}/bindings/{bound.json()['id']}", headers=operator).json()
    assert binding["status"] == "deployed", binding
    assert binding["deployments"][0]["status"] == "succeeded"
    assert _served(directory / "www.crt") == binding["last_deployed_fingerprint"]
    assert stat.S_IMODE((directory / "www.key").stat().st_mode) == 0o600

    # A renewal deploys to every binding by itself.
    assert (
        client.post(
            f"{API}/managed-certificates/{enrolled['managed_id']}/renew", headers=operator
        ).status_code
        == 202
    )
    run_jobs(platform)
    renewed = client.get(f"{API}/bindings/{bound.json()['id']}", headers=operator).json()
    assert renewed["status"] == "deployed"
    assert renewed["last_deployed_fingerprint"] != binding["last_deployed_fingerprint"]
    assert _served(directory / "www.crt") == renewed["last_deployed_fingerprint"]
    assert _served(directory / "www.crt.previous") == binding["last_deployed_fingerprint"]
    # An explicit redeploy puts the same certificate back.
    again = client.post(f"{API}/bindings/{bound.json()['id']}/redeploy", headers=operator)
    assert again.status_code == 202, again.text
    run_jobs(platform)
    redeployed = client.get(f"{API}/bindings/{bound.json()['id']}", headers=operator).json()
    assert redeployed["status"] == "deployed"
    assert _served(directory / "www.crt") == renewed["last_deployed_fingerprint"]

    removed = client.post(f"{API}/bindings/{bound.json()['id']}/undeploy", headers=operator)
    assert removed.status_code == 202
    run_jobs(platform)
    assert (
        client.get(f"{API}/bindings/{bound.json()['id']}", headers=operator).json()["status"] == "undeployed"
    )
    assert not (directory / "www.crt").exists()


def test_failed_verification_rolls_back(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, enrolled: dict
) -> None:
    operator = api_users["operator"].headers
    directory: Path = enrolled["directory"]
    (directory / "www.crt").write_bytes(b"operator's own file\n")
    bound = client.post(
        f"{API}/bindings",
        json={
            "managed_certificate": str(enrolled["managed_id"]),
            "store": "web-files",
            "alias": "www",
            "options": {"verify_timeout": 0.5},
            "verify": {"host": "127.0.0.1", "port": free_port()},  # nothing listens: verification fails
        },
        headers=operator,
    )
    assert bound.status_code == 201, bound.text
    run_jobs(platform)
    binding = client.get(f"{API}/bindings/{bound.json()['id']}", headers=operator).json()
    assert binding["status"] == "failed"
    assert "restored the previous files" in binding["error"], binding["error"]
    assert binding["deployments"][0]["status"] == "failed"
    assert (directory / "www.crt").read_bytes() == b"operator's own file\n"
    assert not (directory / "www.key").exists()  # created by the failed deployment, so removed again
    with session_scope(platform.sessions) as session:
        actions = set(session.execute(select(AuditEvent.action)).scalars())
    assert {"deployment.bind", "deployment.failed"} <= actions


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"store": "web-files", "alias": "../x"}, 422, "alias"),
        ({"store": "nope", "alias": "x"}, 404, "connection"),
        ({"store": "web-files", "alias": "x", "verify": {"host": "h", "port": 0}}, 422, "port"),
    ],
)
def test_bad_binding_input(
    client: TestClient, api_users: dict[str, ApiUser], enrolled: dict, body: dict, status: int, field: str
) -> None:
    answer = client.post(
        f"{API}/bindings",
        json={"managed_certificate": str(enrolled["managed_id"]), **body},
        headers=api_users["operator"].headers,
    )
    assert answer.status_code == status, answer.text
    assert field in answer.text
