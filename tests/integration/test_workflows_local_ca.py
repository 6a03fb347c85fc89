"""Enroll, renew, revoke and approve through the API, issued by the built-in CA, run by a real worker."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509
from fastapi.testclient import TestClient

from sslclm.core.platform import Platform
from sslclm.jobs.registry import load_task_modules
from sslclm.jobs.worker import Worker
from sslclm.workflows.managed import enqueue_due_renewals
from tests.conftest import ApiUser

API = "/api/v1"


def run_jobs(platform: Platform) -> None:
    load_task_modules()
    Worker(platform, concurrency=2, poll_interval=0.05).run_until_idle(timeout=60)


@pytest.fixture
def local_profile(client: TestClient, api_users: dict[str, ApiUser]) -> dict:
    admin = api_users["admin"].headers
    made = client.post(
        f"{API}/ca-connections", json={"name": "internal", "type": "local", "config": {}}, headers=admin
    )
    assert made.status_code == 201, made.text
    assert made.json()["config"]["crl_url"].endswith(f"/api/v1/ca-connections/{made.json()['id']}/crl")
    profile = client.post(
        f"{API}/profiles",
        json={
            "name": "web",
            "ca_connection": "internal",
            "validity_days": 30,
            "allowed_names": ["*.example.com", "10.0.0.0/8"],
        },
        headers=admin,
    )
    assert profile.status_code == 201, profile.text
    return profile.json()


def test_enroll_renew_revoke_with_lineage_and_crl(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, local_profile: dict
) -> None:
    operator = api_users["operator"].headers
    created = client.post(
        f"{API}/managed-certificates",
        json={
            "dns_names": ["www.example.com", "api.example.com"],
            "ip_addresses": ["10.1.2.3"],
            "profile": "web",
            "owner": "web-team",
        },
        headers=operator,
    )
    assert created.status_code == 202, created.text
    managed_id = created.json()["id"]
    run_jobs(platform)
    job = client.get(f"{API}/jobs/{created.json()['job_id']}", headers=operator).json()
    assert job["status"] == "succeeded", job
    managed = client.get(f"{API}/managed-certificates/{managed_id}", headers=operator).json()
    assert managed["status"] == "active"
    first = managed["current_certificate_id"]
    cert = client.get(f"{API}/certificates/{first}", headers=operator).json()
    assert cert["sans"] == ["DNS:www.example.com", "DNS:api.example.com", "IP:10.1.2.3"]
    assert cert["has_private_key"] is True and cert["owner"] == "web-team"
    assert cert["crl_distribution_points"][0].endswith("/crl")
    # Renewal planned with a third of the lifetime left (30 days → about day 20), jitter only earlier.
    renew_at = managed["renew_at"]
    assert renew_at < cert["not_after"]

    renewed = client.post(f"{API}/managed-certificates/{managed_id}/renew", headers=operator)
    assert renewed.status_code == 202
    run_jobs(platform)
    managed = client.get(f"{API}/managed-certificates/{managed_id}", headers=operator).json()
    second = managed["current_certificate_id"]
    assert second != first
    assert [i["reason"] for i in managed["issuances"]] == ["enroll", "renew"]
    old = client.get(f"{API}/certificates/{first}", headers=operator).json()
    new = client.get(f"{API}/certificates/{second}", headers=operator).json()
    assert old["status"] == "superseded" and old["superseded_by_id"] == second
    assert old["public_key_sha256"] != new["public_key_sha256"]  # a new key on renewal by default

    revoked = client.post(
        f"{API}/managed-certificates/{managed_id}/revoke", json={"reason": "key-compromise"}, headers=operator
    )
    assert revoked.status_code == 202, revoked.text
    run_jobs(platform)
    assert client.get(f"{API}/certificates/{second}", headers=operator).json()["status"] == "revoked"
    assert (
        client.get(f"{API}/managed-certificates/{managed_id}", headers=operator).json()["status"] == "revoked"
    )
    conn_id = client.get(f"{API}/ca-connections/internal", headers=operator).json()["id"]
    crl_response = client.get(f"{API}/ca-connections/{conn_id}/crl")  # public, no credentials
    assert crl_response.status_code == 200
    crl = x509.load_der_x509_crl(crl_response.content)
    assert crl.get_revoked_certificate_by_serial_number(int(new["serial"], 16)) is not None


def test_names_outside_the_profile_are_refused(
    client: TestClient, api_users: dict[str, ApiUser], local_profile: dict
) -> None:
    response = client.post(
        f"{API}/managed-certificates",
        json={"dns_names": ["evil.example.org"], "profile": "web"},
        headers=api_users["operator"].headers,
    )
    assert response.status_code == 422
    assert "evil.example.org" in response.json()["detail"]
    deep = client.post(
        f"{API}/managed-certificates",
        json={"dns_names": ["a.b.example.com"], "profile": "web"},
        headers=api_users["operator"].headers,
    )
    assert deep.status_code == 422


def test_approval_needs_a_second_person(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, local_profile: dict
) -> None:
    admin = api_users["admin"].headers
    client.post(
        f"{API}/profiles",
        json={"name": "guarded", "ca_connection": "internal", "approval_required": True},
        headers=admin,
    )
    created = client.post(
        f"{API}/managed-certificates",
        json={"dns_names": ["pay.example.com"], "profile": "guarded"},
        headers=admin,
    ).json()
    run_jobs(platform)
    pending = client.get(f"{API}/approvals", headers=admin).json()
    assert len(pending) == 1 and pending[0]["job_id"] == created["job_id"]
    # The requester may not approve their own request.
    own = client.post(f"{API}/approvals/{pending[0]['id']}/approve", headers=admin)
    assert own.status_code == 403
    # An operator may not decide at all.
    assert (
        client.post(
            f"{API}/approvals/{pending[0]['id']}/approve", headers=api_users["operator"].headers
        ).status_code
        == 403
    )


def test_scheduler_tick_enqueues_due_renewals_once(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, local_profile: dict
) -> None:
    operator = api_users["operator"].headers
    created = client.post(
        f"{API}/managed-certificates",
        json={"dns_names": ["tick.example.com"], "profile": "web"},
        headers=operator,
    ).json()
    run_jobs(platform)
    later = platform.clock() + timedelta(days=29)
    with platform.sessions() as session:
        assert enqueue_due_renewals(session, now=later) == 1
        assert enqueue_due_renewals(session, now=later) == 0  # renew_at moved on: no storm
        session.commit()
    forecast = client.get(f"{API}/renewals/forecast", params={"days": 30}, headers=operator).json()
    assert forecast["days"] == 30 and len(forecast["per_day"]) == 31
    assert created["id"]
