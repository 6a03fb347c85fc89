"""Stores hosted on agents, on both databases: hosting rules, payloads sealed at rest, a deployment and a
validation carried by the agent's own job runner (the transport is covered by test_agents_stores_e2e)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from sslclm.agent.config import AgentConfig
from sslclm.agent.jobs import JobRunner
from sslclm.agents import hosting, queue, service
from sslclm.agents.ca import load_agent_ca
from sslclm.agents.models import Agent, AgentJob
from sslclm.agents.remote import applier
from sslclm.audit.service import AuditContext
from sslclm.core.platform import Platform
from sslclm.errors import SslClmError
from sslclm.notifications.models import NotificationEvent
from sslclm.pki import create_ca, issue_server_certificate
from sslclm.pki.export import certificate_to_pem
from sslclm.pki.identity import identity_facts, new_identity_request
from sslclm.protocol import AgentCapabilities, JobResult, RegisterRequest
from tests.conftest import ApiUser
from tests.integration.test_deploy_pem_files import run_jobs

API = "/api/v1"
CTX = AuditContext(actor="test")


def _register(platform: Platform, runner: JobRunner) -> Agent:
    ca = load_agent_ca(platform)
    with platform.sessions() as session:
        now = platform.clock()
        token = service.create_token(session, CTX, labels=[], description="", ttl=timedelta(hours=1), now=now)
        _, csr = new_identity_request("host-b")
        capabilities = AgentCapabilities(connectors=["pem-files"], job_kinds=runner.kinds)
        body = RegisterRequest(token=token.secret, name="host-b", csr_pem=csr, capabilities=capabilities)
        answer = service.register(session, ca, body, address="127.0.0.1", server_ca_pem="", now=now)
        session.commit()
        agent = service.authenticate(session, identity_facts(answer.certificate_pem.encode()))
        session.expunge(agent)
        return agent


def _agent_round(platform: Platform, agent: Agent, runner: JobRunner) -> list[JobResult]:
    """What ``sslclm agent run`` does with each job it fetches, without the network in between."""
    with platform.sessions() as session:
        claimed = queue.claim(session, agent, now=platform.clock())
        session.commit()
        stored = {row.id: row.payload for row in session.execute(select(AgentJob)).scalars()}
    results = []
    for job in claimed:
        at_rest = orjson.dumps(stored[job.id]).decode()
        assert "PRIVATE KEY" not in at_rest and "store_password" not in at_rest
        plain = hosting.opened(platform, job)
        try:
            result = JobResult(
                attempt=job.attempt,
                status="succeeded",
                result=runner.run(job.kind, dict(plain.payload), lambda message: None),
            )
        except SslClmError as exc:
            result = JobResult(attempt=job.attempt, status="failed", error=exc.message)
        with platform.sessions() as session:
            queue.accept_result(session, agent, job.id, result, now=platform.clock(), apply=applier(platform))
            session.commit()
        results.append(result)
    run_jobs(platform)
    return results


@pytest.fixture
def hosted(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, tmp_path: Path
) -> dict[str, Any]:
    admin = api_users["admin"].headers
    assert client.post(
        f"{API}/ca-connections", json={"name": "internal", "type": "local", "config": {}}, headers=admin
    ).is_success
    profile = {"name": "web", "ca_connection": "internal", "validity_days": 30}
    assert client.post(f"{API}/profiles", json=profile, headers=admin).is_success
    created = client.post(
        f"{API}/managed-certificates",
        json={"dns_names": ["www.example.com"], "profile": "web"},
        headers=admin,
    )
    assert created.status_code == 202, created.text
    run_jobs(platform)
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    config = AgentConfig(state_dir=str(tmp_path / "state"), deploy_paths=[str(deploy)])
    runner = JobRunner(config, tmp_path / "state")
    agent = _register(platform, runner)
    for name, type_key, store_config in (
        ("pem", "pem-files", {"directory": str(deploy)}),
        ("keystore", "jks", {"path": str(deploy / "k.jks"), "store_password": "a store password"}),
    ):
        made = client.post(
            f"{API}/stores", json={"name": name, "type": type_key, "config": store_config}, headers=admin
        )
        assert made.status_code == 201, made.text
    return {
        "agent": agent,
        "runner": runner,
        "deploy": deploy,
        "managed_id": created.json()["id"],
        "admin": admin,
    }


def test_hosting_rules(client: TestClient, hosted: dict[str, Any]) -> None:
    admin = hosted["admin"]
    assert client.get(f"{API}/stores/pem/host", headers=admin).json()["runs_on"] == "server"
    unknown = client.put(f"{API}/stores/keystore/host", json={"agent": "host-b"}, headers=admin)
    assert unknown.status_code == 409 and "does not run 'jks' stores" in unknown.text
    both = client.put(f"{API}/stores/pem/host", json={"agent": "host-b", "label": "web"}, headers=admin)
    assert both.status_code == 422, both.text
    assert client.put(f"{API}/stores/pem/host", json={"agent": "nobody"}, headers=admin).status_code == 404
    moved = client.put(f"{API}/stores/pem/host", json={"agent": "host-b"}, headers=admin)
    assert moved.status_code == 200 and moved.json()["runs_on"] == "agent 'host-b'"
    scan = client.post(f"{API}/stores/pem/scan", headers=admin)
    assert scan.status_code == 409 and "hosted on an agent" in scan.text
    check = client.post(f"{API}/stores/pem/check", headers=admin)
    assert check.status_code == 409 and "check it there with 'sslclm store validate'" in check.text
    reader = client.put(f"{API}/stores/pem/host", json={}, headers={})
    assert reader.status_code == 401


def test_deploy_and_validate_through_the_agent(
    client: TestClient, platform: Platform, hosted: dict[str, Any]
) -> None:
    admin, agent, runner, deploy = hosted["admin"], hosted["agent"], hosted["runner"], hosted["deploy"]
    assert client.put(f"{API}/stores/pem/host", json={"agent": "host-b"}, headers=admin).status_code == 200
    bound = client.post(
        f"{API}/bindings",
        json={"managed_certificate": str(hosted["managed_id"]), "store": "pem", "alias": "www"},
        headers=admin,
    )
    assert bound.status_code == 201, bound.text
    binding_id = bound.json()["id"]
    run_jobs(platform)
    waiting = client.get(f"{API}/jobs/{bound.json()['job_id']}", headers=admin).json()
    assert waiting["status"] == "waiting", waiting
    [result] = _agent_round(platform, agent, runner)
    assert result.status == "succeeded", result
    binding = client.get(f"{API}/bindings/{binding_id}", headers=admin).json()
    assert binding["status"] == "deployed" and binding["deployments"][0]["status"] == "succeeded"
    assert (deploy / "www.crt").exists()
    with platform.sessions() as session:
        payloads = [row.payload for row in session.execute(select(AgentJob)).scalars()]
    assert all("sealed" not in payload for payload in payloads)  # dropped once the result is in

    # Validation: nothing to report, then a certificate put there by hand is drift and is inventoried.
    assert client.post(f"{API}/stores/pem/validate", headers=admin).status_code == 202
    [clean] = _agent_round(platform, agent, runner)
    assert clean.result["held"] == {"www": binding["last_deployed_fingerprint"]}
    assert client.get(f"{API}/bindings/{binding_id}", headers=admin).json()["status"] == "deployed"
    key, ca = create_ca("someone's CA")
    _, foreign = issue_server_certificate(key, ca, hostnames=["www.example.com"])
    (deploy / "www.crt").write_bytes(certificate_to_pem(foreign))
    assert client.post(f"{API}/stores/pem/validate", headers=admin).status_code == 202
    _agent_round(platform, agent, runner)
    drifted = client.get(f"{API}/bindings/{binding_id}", headers=admin).json()
    assert drifted["status"] == "drifted" and "the store holds" in drifted["error"]
    with platform.sessions() as session:
        kinds = [row.kind for row in session.execute(select(NotificationEvent)).scalars()]
    assert "deployment.drift" in kinds

    # Undeploy goes through the agent as well.
    undo = client.post(f"{API}/bindings/{binding_id}/undeploy", headers=admin)
    assert undo.status_code == 202
    run_jobs(platform)
    _agent_round(platform, agent, runner)
    assert client.get(f"{API}/bindings/{binding_id}", headers=admin).json()["status"] == "undeployed"
    assert not (deploy / "www.crt").exists()


def test_a_deployment_waiting_for_a_revoked_agent_fails(
    client: TestClient, platform: Platform, hosted: dict[str, Any]
) -> None:
    admin = hosted["admin"]
    assert client.put(f"{API}/stores/pem/host", json={"agent": "host-b"}, headers=admin).status_code == 200
    bound = client.post(
        f"{API}/bindings",
        json={"managed_certificate": str(hosted["managed_id"]), "store": "pem", "alias": "www"},
        headers=admin,
    )
    run_jobs(platform)
    assert client.post(f"{API}/agents/host-b/revoke", headers=admin).status_code == 200
    run_jobs(platform)
    binding = client.get(f"{API}/bindings/{bound.json()['id']}", headers=admin).json()
    assert binding["status"] == "failed" and "host-b' was revoked" in binding["error"]
    assert client.get(f"{API}/jobs/{bound.json()['job_id']}", headers=admin).json()["status"] == "failed"
