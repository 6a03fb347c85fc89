"""The platform driving a real step-ca: a CA connection whose provisioner key is sealed at rest, then
enroll, renew (a new key through /1.0/sign) and revoke jobs run by a worker, and a refusal that fails
the job with step-ca's message."""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from sslclm.api.app import create_app
from sslclm.audit.service import AuditContext
from sslclm.auth import service as auth_service
from sslclm.core.config import Settings
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.jobs.registry import load_task_modules
from sslclm.jobs.worker import Worker
from sslclm.workflows.models import Connection
from tests.support.step_ca import StepCA, run_step_ca

API = "/api/v1"
pytestmark = pytest.mark.timeout(300, func_only=True)


@dataclass
class Stack:
    platform: Platform
    app: FastAPI
    step_ca: StepCA
    admin: dict[str, str]
    operator: dict[str, str]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("step-ca-workflows")
    settings = Settings(
        home=directory / "home",
        database_url=f"sqlite:///{directory / 'sslclm.db'}",
        master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
    )
    platform = Platform.open(settings)
    headers = {}
    with session_scope(platform.sessions) as session:
        for role in ("admin", "operator"):
            user = auth_service.create_user(
                session, AuditContext(actor="test"), f"{role}-user", "a long test password", role
            )
            token = auth_service.create_token(session, AuditContext(actor="test"), user, role)
            headers[role] = {"Authorization": f"Bearer {token.secret}"}
    try:
        with run_step_ca(directory / "step-ca") as step_ca:
            yield Stack(
                platform, create_app(platform=platform), step_ca, headers["admin"], headers["operator"]
            )
    finally:
        platform.close()


@pytest.fixture
def client(stack: Stack) -> Iterator[TestClient]:
    with TestClient(stack.app, base_url="https://testserver") as test_client:
        yield test_client


def run_jobs(platform: Platform) -> None:
    load_task_modules()
    Worker(platform, concurrency=2, poll_interval=0.05).run_until_idle(timeout=120)


def connection_and_profile(client: TestClient, stack: Stack, name: str, **config: Any) -> None:
    made = client.post(
        f"{API}/ca-connections",
        json={"name": name, "type": "step-ca", "config": stack.step_ca.config(**config)},
        headers=stack.admin,
    )
    assert made.status_code == 201, made.text
    profile = client.post(
        f"{API}/profiles",
        json={"name": name, "ca_connection": name, "allowed_names": ["*.step.test"], "validity_days": 30},
        headers=stack.admin,
    )
    assert profile.status_code == 201, profile.text


def enroll(client: TestClient, stack: Stack, profile: str, *names: str) -> dict[str, Any]:
    created = client.post(
        f"{API}/managed-certificates",
        json={"dns_names": list(names), "profile": profile},
        headers=stack.operator,
    )
    assert created.status_code == 202, created.text
    run_jobs(stack.platform)
    body: dict[str, Any] = created.json()
    return body


def test_enroll_renew_and_revoke_through_step_ca(client: TestClient, stack: Stack) -> None:
    connection_and_profile(client, stack, "step")
    shown = client.get(f"{API}/ca-connections/step", headers=stack.admin)
    assert shown.status_code == 200
    private_d = stack.step_ca.provisioner.key.as_dict(private=True)["d"]
    assert private_d not in shown.text
    with stack.platform.sessions() as session:
        stored = session.execute(
            select(Connection).where(Connection.kind == "ca-gateway", Connection.name == "step")
        ).scalar_one()
        assert private_d not in json.dumps(stored.config, default=str)  # sealed at rest
        assert stored.sealed_secrets is not None and private_d.encode() not in stored.sealed_secrets
    check = client.post(f"{API}/ca-connections/step/check", headers=stack.admin).json()
    assert check["ok"] is True, check

    name = f"www-{uuid.uuid4().hex[:8]}.step.test"
    created = enroll(client, stack, "step", name)
    job = client.get(f"{API}/jobs/{created['job_id']}", headers=stack.operator).json()
    assert job["status"] == "succeeded", job
    managed = client.get(f"{API}/managed-certificates/{created['id']}", headers=stack.operator).json()
    assert managed["status"] == "active"
    first = client.get(
        f"{API}/certificates/{managed['current_certificate_id']}", headers=stack.operator
    ).json()
    assert first["sans"] == [f"DNS:{name}"] and "step-ca Intermediate" in first["issuer"]
    assert first["has_private_key"] is True

    renewed = client.post(f"{API}/managed-certificates/{created['id']}/renew", headers=stack.operator)
    assert renewed.status_code == 202, renewed.text
    run_jobs(stack.platform)
    managed = client.get(f"{API}/managed-certificates/{created['id']}", headers=stack.operator).json()
    assert managed["status"] == "active" and managed["current_certificate_id"] != first["id"]
    second = client.get(
        f"{API}/certificates/{managed['current_certificate_id']}", headers=stack.operator
    ).json()
    assert second["serial"] != first["serial"]

    revoked = client.post(
        f"{API}/managed-certificates/{created['id']}/revoke",
        json={"reason": "superseded"},
        headers=stack.operator,
    )
    assert revoked.status_code == 202, revoked.text
    run_jobs(stack.platform)
    after = client.get(f"{API}/certificates/{second['id']}", headers=stack.operator).json()
    assert after["status"] == "revoked" and after["revocation_reason"] == "superseded"


def test_a_refused_token_fails_the_job_without_retrying(client: TestClient, stack: Stack) -> None:
    # A provisioner name step-ca does not know: every token is refused (401), which no retry fixes.
    connection_and_profile(client, stack, "unknown-provisioner", provisioner="nobody@example.test")
    check = client.post(f"{API}/ca-connections/unknown-provisioner/check", headers=stack.admin).json()
    assert check["ok"] is False and "no provisioner named" in check["message"]
    created = enroll(client, stack, "unknown-provisioner", f"api-{uuid.uuid4().hex[:8]}.step.test")
    job = client.get(f"{API}/jobs/{created['job_id']}", headers=stack.operator).json()
    assert job["status"] == "failed" and job["attempts"] == 1, job
    assert "ca-rejected" in job["last_error"] and "HTTP 401" in job["last_error"], job["last_error"]
    managed = client.get(f"{API}/managed-certificates/{created['id']}", headers=stack.operator).json()
    assert managed["status"] == "failed" and managed["current_certificate_id"] is None
