"""CA sync: certificates issued by a CA outside the platform's workflows appear in the inventory."""

from __future__ import annotations

from fastapi.testclient import TestClient

from sslclm.core.platform import Platform
from sslclm.jobs.registry import load_task_modules
from sslclm.jobs.worker import Worker
from sslclm.pki import build_csr, generate_private_key
from sslclm.pki.ca_tools import csr_to_pem
from sslclm.spi.types import IssueRequest, RevocationReason, RevokeRequest
from sslclm.workflows.connections import build_ca_gateway, get_connection
from tests.conftest import ApiUser

API = "/api/v1"


def test_sync_imports_what_the_ca_issued_and_marks_revocations(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    admin = api_users["admin"].headers
    assert (
        client.post(
            f"{API}/ca-connections", json={"name": "corp", "type": "local", "config": {}}, headers=admin
        ).status_code
        == 201
    )
    with platform.sessions() as session:
        gateway = build_ca_gateway(platform, get_connection(session, "corp"))
    issued = []
    for i in range(3):
        key = generate_private_key("EC-P256")
        csr = csr_to_pem(build_csr(key, f"outside{i}.example.com", [f"outside{i}.example.com"]))
        issued.append(
            gateway.issue(
                IssueRequest(csr_pem=csr, idempotency_key=f"outside-{i}", names=(f"outside{i}.example.com",))
            )
        )
    assert issued[0].certificate_pem is not None
    gateway.revoke(
        RevokeRequest(certificate_pem=issued[0].certificate_pem, reason=RevocationReason.KEY_COMPROMISE)
    )

    started = client.post(f"{API}/ca-connections/corp/sync", headers=admin)
    assert started.status_code == 202, started.text
    load_task_modules()
    Worker(platform, concurrency=1, poll_interval=0.05).run_until_idle(timeout=60)
    job = client.get(f"{API}/jobs/{started.json()['job_id']}", headers=admin).json()
    assert job["status"] == "succeeded", job
    synced = client.get(
        f"{API}/certificates", params={"source": "ca-sync:corp", "q": "outside"}, headers=admin
    ).json()
    assert sorted(item["common_name"] for item in synced["items"]) == [
        f"outside{i}.example.com" for i in range(3)
    ]
    statuses = {item["common_name"]: item["status"] for item in synced["items"]}
    assert statuses["outside0.example.com"] == "revoked"


def test_sync_refuses_a_connection_that_cannot_list(
    client: TestClient, api_users: dict[str, ApiUser]
) -> None:
    admin = api_users["admin"].headers
    response = client.post(f"{API}/ca-connections/nowhere/sync", headers=admin)
    assert response.status_code == 404
