"""Issuance workflows against the real Pebble ACME server, with real http-01 validation.

The platform's web app runs with uvicorn (plain HTTP) on the port Pebble validates http-01 on, so
Pebble fetches every key authorization from the platform's own responder at
``/.well-known/acme-challenge/<token>``, which reads the ACME connection's state in the database:
the state a worker wrote while running the order.
"""

from __future__ import annotations

import base64
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from sslclm.api.app import create_app
from sslclm.audit.service import AuditContext
from sslclm.auth import service as auth_service
from sslclm.core.config import Settings
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.inventory.models import Certificate, PrivateKey
from sslclm.jobs.registry import load_task_modules
from sslclm.jobs.worker import Worker
from sslclm.workflows.models import ConnectorStateEntry, Issuance
from tests.support.dns_server import DnsServer
from tests.support.pebble import Pebble, free_port, run_pebble

API = "/api/v1"
BLOCKED = "blocked.acme.test"


@dataclass
class Stack:
    platform: Platform
    app: FastAPI
    pebble: Pebble
    admin: dict[str, str]
    operator: dict[str, str]
    port: int

    def acme_config(self, **overrides: Any) -> dict[str, Any]:
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


def _serve(app: FastAPI, port: int) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("the platform's web app did not start")
        time.sleep(0.05)
    return server, thread


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("acme-workflows")
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
    app = create_app(platform=platform)
    port = free_port()
    server, thread = _serve(app, port)
    try:
        with (
            DnsServer(["acme.test."], tsig_keys={"unused.": base64.b64encode(b"k" * 32).decode()}) as dns,
            run_pebble(
                directory / "pebble", dns_port=dns.port, http_port=port, blocklist=[BLOCKED]
            ) as pebble,
        ):
            yield Stack(platform, app, pebble, headers["admin"], headers["operator"], port)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        platform.close()


@pytest.fixture
def client(stack: Stack) -> Iterator[TestClient]:
    with TestClient(stack.app, base_url="https://testserver") as test_client:
        yield test_client


def unique(label: str) -> str:
    # Pebble reuses valid authorizations: fresh names make it validate again.
    return f"{label}-{uuid.uuid4().hex[:10]}.acme.test"


def run_jobs(platform: Platform) -> None:
    load_task_modules()
    Worker(platform, concurrency=2, poll_interval=0.05).run_until_idle(timeout=180)


def connection_and_profile(client: TestClient, stack: Stack, name: str, **config: Any) -> None:
    made = client.post(
        f"{API}/ca-connections",
        json={"name": name, "type": "acme", "config": stack.acme_config(**config)},
        headers=stack.admin,
    )
    assert made.status_code == 201, made.text
    profile = client.post(
        f"{API}/profiles",
        json={"name": name, "ca_connection": name, "allowed_names": ["*.acme.test"], "validity_days": 90},
        headers=stack.admin,
    )
    assert profile.status_code == 201, profile.text


def assert_nothing_half_done(platform: Platform) -> None:
    """Every stored key belongs to a certificate, every issued leaf to a managed certificate."""
    with platform.sessions() as session:
        orphan_keys = session.execute(
            select(func.count())
            .select_from(PrivateKey)
            .where(
                ~select(Certificate.id)
                .where(Certificate.public_key_sha256 == PrivateKey.public_key_sha256)
                .exists()
            )
        ).scalar_one()
        unlinked = session.execute(
            select(func.count())
            .select_from(Certificate)
            .where(
                Certificate.is_ca.is_(False),
                ~select(Issuance.id).where(Issuance.certificate_id == Certificate.id).exists(),
            )
        ).scalar_one()
    assert (orphan_keys, unlinked) == (0, 0)


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


def test_the_responder_answers_only_open_challenges(stack: Stack) -> None:
    base = f"http://127.0.0.1:{stack.port}/.well-known/acme-challenge"
    assert httpx.get(f"{base}/no-such-token").status_code == 404
    assert httpx.get(f"{base}/not%20a%20token").status_code == 404


def test_enroll_and_revoke_through_pebble(client: TestClient, stack: Stack) -> None:
    connection_and_profile(client, stack, "pebble")
    check = client.post(f"{API}/ca-connections/pebble/check", headers=stack.admin).json()
    assert check["ok"] is True, check
    www, api = unique("www"), unique("api")
    created = enroll(client, stack, "pebble", www, api)
    job = client.get(f"{API}/jobs/{created['job_id']}", headers=stack.operator).json()
    assert job["status"] == "succeeded", job
    managed = client.get(f"{API}/managed-certificates/{created['id']}", headers=stack.operator).json()
    assert managed["status"] == "active"
    assert [(i["reason"], i["job_id"]) for i in managed["issuances"]] == [("enroll", created["job_id"])]
    cert = client.get(
        f"{API}/certificates/{managed['current_certificate_id']}", headers=stack.operator
    ).json()
    assert sorted(cert["sans"]) == sorted([f"DNS:{www}", f"DNS:{api}"])
    assert cert["has_private_key"] is True and "Pebble" in cert["issuer"]
    assert stack.pebble.cert_status(cert["serial"])["Status"] == "Valid"
    with stack.platform.sessions() as session:
        open_tokens = session.execute(
            select(func.count()).where(ConnectorStateEntry.key.startswith("http01/"))
        ).scalar_one()
    assert open_tokens == 0  # answered, then removed

    revoked = client.post(
        f"{API}/managed-certificates/{created['id']}/revoke",
        json={"reason": "key-compromise"},
        headers=stack.operator,
    )
    assert revoked.status_code == 202, revoked.text
    run_jobs(stack.platform)
    after = client.get(f"{API}/certificates/{cert['id']}", headers=stack.operator).json()
    assert after["status"] == "revoked" and after["revocation_reason"] == "key-compromise"
    status = stack.pebble.cert_status(cert["serial"])
    assert status["Status"] == "Revoked" and status["Reason"] == 1
    assert_nothing_half_done(stack.platform)


def test_failed_validation_fails_the_job_with_the_reason(
    client: TestClient, stack: Stack, tmp_path: Path
) -> None:
    # Tokens go to a webroot no web server serves: Pebble asks the platform, which has none of them.
    connection_and_profile(
        client, stack, "unserved", http01={"mode": "webroot", "webroot": str(tmp_path / "nobody-serves-this")}
    )
    created = enroll(client, stack, "unserved", unique("lost"))
    job = client.get(f"{API}/jobs/{created['job_id']}", headers=stack.operator).json()
    assert job["status"] == "failed", job
    assert job["attempts"] == 1  # a failed validation is not retried
    assert "validation of lost-" in job["last_error"], job["last_error"]
    assert "http-01 challenge" in job["last_error"], job["last_error"]
    managed = client.get(f"{API}/managed-certificates/{created['id']}", headers=stack.operator).json()
    assert managed["status"] == "failed" and managed["current_certificate_id"] is None
    assert job["last_error"] in managed["status_message"]
    assert_nothing_half_done(stack.platform)


def test_a_name_the_ca_refuses_fails_the_job(client: TestClient, stack: Stack) -> None:
    connection_and_profile(client, stack, "strict")
    created = enroll(client, stack, "strict", BLOCKED)
    job = client.get(f"{API}/jobs/{created['job_id']}", headers=stack.operator).json()
    assert job["status"] == "failed" and job["attempts"] == 1, job
    assert "ca-rejected" in job["last_error"] and BLOCKED in job["last_error"], job["last_error"]
    assert_nothing_half_done(stack.platform)
