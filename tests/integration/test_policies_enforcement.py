"""Policy enforced at enrollment, with the built-in CA and a real worker: refused up front with every
reason, and refused by the issuance job when the policy changed after the request was accepted."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from conftest import ApiUser
from sslclm.core.platform import Platform
from sslclm.jobs.registry import load_task_modules
from sslclm.jobs.worker import Worker
from sslclm.workflows.models import ManagedCertificate

API = "/api/v1"
STRICT = """\
name: strict-enrollment
scope: {kind: all}
checks:
  - check: max-validity
    params: {max_days: 10}
  - check: key-algorithm
    params: {ec_curves: [secp384r1]}
  - check: quantum-vulnerable
"""


def run_jobs(platform: Platform) -> None:
    load_task_modules()
    Worker(platform, concurrency=2, poll_interval=0.05).run_until_idle(timeout=60)


def _setup(client: TestClient, admin: dict[str, str]) -> None:
    made = client.post(
        f"{API}/ca-connections", json={"name": "internal", "type": "local", "config": {}}, headers=admin
    )
    assert made.status_code == 201, made.text
    profile = client.post(
        f"{API}/profiles",
        json={
            "name": "web",
            "ca_connection": "internal",
            "validity_days": 30,
            "allowed_names": ["*.example.com"],
        },
        headers=admin,
    )
    assert profile.status_code == 201, profile.text


def test_a_blocking_policy_refuses_the_request_with_every_reason(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    admin, operator = api_users["admin"].headers, api_users["operator"].headers
    _setup(client, admin)
    assert client.put(f"{API}/policies", content=STRICT, headers=admin).status_code == 201

    refused = client.post(
        f"{API}/managed-certificates",
        json={"dns_names": ["shop.example.com"], "profile": "web"},
        headers=operator,
    )
    assert refused.status_code == 422, refused.text
    problem = refused.json()
    assert problem["type"].endswith("/policy-refused") and problem["field"] == "policy"
    reasons = {r["check"]: r for r in problem["data"]["reasons"]}
    # Both blocking rules are listed; the informational quantum-safety finding does not block.
    assert set(reasons) == {"max-validity", "key-algorithm"}
    assert "at most 10" in reasons["max-validity"]["reason"]
    assert "secp256r1" in reasons["key-algorithm"]["reason"]
    assert "max-validity" in problem["detail"] and "key-algorithm" in problem["detail"]
    with platform.sessions() as session:
        # Nothing half-written: no managed certificate, no job.
        assert session.execute(select(func.count()).select_from(ManagedCertificate)).scalar_one() == 0


def test_the_issuance_job_checks_the_policy_in_force_when_it_runs(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    admin, operator = api_users["admin"].headers, api_users["operator"].headers
    _setup(client, admin)
    created = client.post(
        f"{API}/managed-certificates",
        json={"dns_names": ["www.example.com"], "profile": "web"},
        headers=operator,
    )
    assert created.status_code == 202, created.text
    # The policy tightens between the request and its job.
    assert client.put(f"{API}/policies", content=STRICT, headers=admin).status_code == 201
    run_jobs(platform)
    job = client.get(f"{API}/jobs/{created.json()['job_id']}", headers=operator).json()
    assert job["status"] == "failed" and job["attempts"] == 1, job
    assert "refused by policy" in job["last_error"]
    assert "max-validity" in job["last_error"] and "key-algorithm" in job["last_error"]
    managed = client.get(f"{API}/managed-certificates/{created.json()['id']}", headers=operator).json()
    assert managed["status"] == "failed" and managed["current_certificate_id"] is None


def test_an_allowed_request_is_issued_and_evaluated_at_once(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    admin, operator = api_users["admin"].headers, api_users["operator"].headers
    _setup(client, admin)
    lenient = "name: lenient\nscope: {kind: all}\nchecks:\n  - check: quantum-vulnerable\n"
    assert client.put(f"{API}/policies", content=lenient, headers=admin).status_code == 201
    created = client.post(
        f"{API}/managed-certificates",
        json={"dns_names": ["ok.example.com"], "profile": "web"},
        headers=operator,
    )
    assert created.status_code == 202, created.text
    run_jobs(platform)
    managed = client.get(f"{API}/managed-certificates/{created.json()['id']}", headers=operator).json()
    assert managed["status"] == "active", managed
    found = client.get(
        f"{API}/policies/violations?certificate_id={managed['current_certificate_id']}", headers=operator
    ).json()["items"]
    assert [(v["check"], v["severity"]) for v in found] == [("quantum-vulnerable", "info")]
