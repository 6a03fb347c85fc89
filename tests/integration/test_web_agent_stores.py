"""Stores hosted on agents in the console, on both databases: where a store runs, hosting it on an agent,
a label or back on the server, "validate now" queueing the agent's job, and the stores an agent's page
lists; each with its role checks, CSRF and audit (agent records are registered without the network)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from test_web_console_actions import audited
from test_web_pages import assert_strict_page, login

from conftest import ApiUser
from sslclm.agents import service
from sslclm.agents.ca import load_agent_ca
from sslclm.agents.models import AgentJob
from sslclm.audit.service import AuditContext
from sslclm.core.platform import Platform
from sslclm.pki.identity import new_identity_request
from sslclm.protocol import STORE_DEPLOY, STORE_INVENTORY, STORE_REMOVE, AgentCapabilities, RegisterRequest

API = "/api/v1"
CTX = AuditContext(actor="test")


def register_agent(platform: Platform, name: str, connectors: list[str], labels: list[str]) -> int:
    """An agent record as registration leaves it; its identity request never leaves the process."""
    with platform.sessions() as session:
        now = platform.clock()
        token = service.create_token(
            session, CTX, labels=labels, description="", ttl=timedelta(hours=1), now=now
        )
        _, csr = new_identity_request(name)
        capabilities = AgentCapabilities(
            connectors=connectors, job_kinds=[STORE_DEPLOY, STORE_REMOVE, STORE_INVENTORY]
        )
        body = RegisterRequest(
            token=token.secret, name=name, csr_pem=csr, labels=labels, capabilities=capabilities
        )
        answer = service.register(
            session, load_agent_ca(platform), body, address="127.0.0.1", server_ca_pem="", now=now
        )
        session.commit()
        return answer.agent_id


@pytest.fixture
def stores(
    client: TestClient, platform: Platform, api_users: dict[str, ApiUser], tmp_path: Path
) -> dict[str, int]:
    admin = api_users["admin"].headers
    made = client.post(
        f"{API}/stores",
        json={"name": "pem", "type": "pem-files", "config": {"directory": str(tmp_path)}},
        headers=admin,
    )
    assert made.status_code == 201, made.text
    return {
        "pem": made.json()["id"],
        "host-b": register_agent(platform, "host-b", ["pem-files"], ["edge"]),
        "host-j": register_agent(platform, "host-j", ["jks"], []),
    }


def test_an_admin_hosts_a_store_on_an_agent_and_back(
    client: TestClient, platform: Platform, stores: dict[str, int]
) -> None:
    csrf = login(client, "admin-user")
    path = f"/ui/connectors/{stores['pem']}/host"
    listing = client.get("/ui/connectors")
    assert_strict_page(listing)
    assert f'<a href="{path}">server</a>' in listing.text
    page = client.get(path)
    assert_strict_page(page)
    # Only the agents that declare the store's type are offered; nothing to validate on the server.
    assert "<option>host-b</option>" in page.text and "host-j" not in page.text
    assert "Validate now" not in page.text and "Run on the server" not in page.text

    for data, status, message in (
        ({"agent": "host-b", "label": "edge"}, 422, "not both"),
        ({"agent": "host-j"}, 409, "does not run &#39;pem-files&#39; stores"),
        ({"agent": "nobody"}, 404, "nobody"),
        ({"label": "x" * 65}, 422, "1 to 64 characters"),
    ):
        refused = client.post(path, data={"csrf_token": csrf, **data})
        assert refused.status_code == status and message in refused.text, (data, refused.text[-600:])
        assert f'action="{path}"' in refused.text
    assert client.post(path, data={"csrf_token": "", "agent": "host-b"}).status_code == 403

    moved = client.post(path, data={"csrf_token": csrf, "agent": "host-b"}, follow_redirects=False)
    assert moved.status_code == 303
    page = client.get(moved.headers["location"])
    assert (
        "Saved." in page.text
        and f'<a href="/ui/agents/{stores["host-b"]}">agent &#39;host-b&#39;</a>' in page.text
    )
    assert "Validate now" in page.text and "Run on the server" in page.text
    agent_page = client.get("/ui/agents/host-b")
    assert_strict_page(agent_page)
    assert f'<a href="{path}">pem</a></td><td>pem-files</td><td>this agent</td>' in agent_page.text
    assert "No store is hosted on this agent." in client.get("/ui/agents/host-j").text

    queued = client.post(
        f"/ui/connectors/{stores['pem']}/validate", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert queued.status_code == 303
    assert "Validation queued for the agent hosting the store" in client.get(queued.headers["location"]).text
    with platform.sessions() as session:
        [job] = session.execute(select(AgentJob)).scalars()
        assert (job.kind, job.agent_id, job.status) == (STORE_INVENTORY, stores["host-b"], "queued")
    assert audited(platform, "store.validate-requested")

    labelled = client.post(path, data={"csrf_token": csrf, "label": "edge"})
    assert labelled.status_code == 200 and "agents labelled &#39;edge&#39;" in labelled.text
    assert "<td>label &#39;edge&#39;</td>" in client.get("/ui/agents/host-b").text

    back = client.post(path, data={"csrf_token": csrf})
    assert back.status_code == 200 and "Validate now" not in back.text
    assert f'<a href="{path}">server</a>' in client.get("/ui/connectors").text
    not_hosted = client.post(f"/ui/connectors/{stores['pem']}/validate", data={"csrf_token": csrf})
    assert not_hosted.status_code == 409 and "is not hosted on an agent" in not_hosted.text
    moves = [event.summary for event in sorted(audited(platform, "store.host"), key=lambda e: e.id)]
    assert [(m["before"], m["after"]) for m in moves] == [
        ("server", "agent 'host-b'"),
        ("agent 'host-b'", "agents labelled 'edge'"),
        ("agents labelled 'edge'", "server"),
    ]
    assert client.get("/ui/connectors/999999/host").status_code == 404


def test_a_viewer_sees_where_a_store_runs_but_cannot_change_it(
    client: TestClient, platform: Platform, api_users: dict[str, ApiUser], stores: dict[str, int]
) -> None:
    admin = api_users["admin"].headers
    assert client.put(f"{API}/stores/pem/host", json={"agent": "host-b"}, headers=admin).status_code == 200
    csrf = login(client, "viewer-user")
    path = f"/ui/connectors/{stores['pem']}/host"
    page = client.get(path)
    assert_strict_page(page)
    assert "agent &#39;host-b&#39;" in page.text
    assert "<form" not in re.sub(r'<form[^>]*action="/ui/logout".*?</form>', "", page.text, flags=re.S)
    assert "Validate now" not in page.text
    assert f'<a href="{path}">pem</a>' in client.get("/ui/agents/host-b").text
    assert client.post(path, data={"csrf_token": csrf}).status_code == 403
    validate = f"/ui/connectors/{stores['pem']}/validate"
    assert client.post(validate, data={"csrf_token": csrf}).status_code == 403
    with platform.sessions() as session:
        assert session.execute(select(AgentJob)).first() is None
    assert client.get(f"{API}/stores/pem/host", headers=admin).json()["runs_on"] == "agent 'host-b'"
