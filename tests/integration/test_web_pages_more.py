"""The console's second round of screens through the real app and database: agents, notifications,
scan schedules, the profile / policy / exemption forms and the certificate page's deploy and metadata
actions; each with its role checks, CSRF and bad input."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.testclient import TestClient
from test_web_pages import assert_strict_page, import_pems, login

from conftest import ApiUser
from sslclm.agents import service as agents
from sslclm.agents.ca import load_agent_ca
from sslclm.core.platform import Platform
from sslclm.jobs.registry import load_task_modules
from sslclm.jobs.worker import Worker
from sslclm.notifications import events
from sslclm.pki.identity import new_identity_request
from sslclm.protocol import AgentCapabilities, RegisterRequest
from support.certs import make_ca, make_leaf

SECRET = re.compile(r'<code class="secret">([^<]+)</code>')


def post_actions(html: str) -> list[str]:
    return re.findall(r'<form[^>]*method="post"[^>]*action="([^"]+)"', html)


def register_agent(platform: Platform, secret: str, name: str) -> int:
    """What ``sslclm agent register`` does on a host: a key, a CSR and the one-time token."""
    _, csr = new_identity_request(name)
    body = RegisterRequest(
        token=secret,
        name=name,
        csr_pem=csr,
        labels=["web"],
        capabilities=AgentCapabilities(
            connectors=["pem-files"], job_kinds=["discover-filesystem"], os="linux", version="9.9.1"
        ),
    )
    with platform.sessions() as session:
        answer = agents.register(
            session,
            load_agent_ca(platform),
            body,
            address="127.0.0.1",
            server_ca_pem="",
            now=platform.clock(),
        )
        session.commit()
    return answer.agent_id


# --- agents ----------------------------------------------------------------------------------------


def test_registration_token_is_shown_once_and_registers_an_agent(
    client: TestClient, platform: Platform, api_users: dict[str, ApiUser]
) -> None:
    csrf = login(client, "admin-user")
    created = client.post(
        "/ui/agents/tokens",
        data={"csrf_token": csrf, "description": "web hosts", "labels": "web", "expires_in_hours": "2"},
    )
    assert created.status_code == 201, created.text
    assert_strict_page(created)
    secret = SECRET.search(created.text)
    assert secret and secret.group(1).startswith("sslclm_agent_")
    listing = client.get("/ui/agents")
    assert secret.group(1) not in listing.text and "web hosts" in listing.text

    agent_id = register_agent(platform, secret.group(1), "edge-1")
    admin = api_users["admin"]
    dispatched = client.post(
        f"/api/v1/agents/{agent_id}/discover", json={"paths": ["/etc/ssl"]}, headers=admin.headers
    )
    assert dispatched.status_code == 202, dispatched.text

    listing = client.get("/ui/agents")
    assert_strict_page(listing)
    assert "edge-1" in listing.text and "status-online" in listing.text and "9.9.1" in listing.text
    assert "pem-files" in listing.text and "No unused tokens." in listing.text  # the token is used now
    dashboard = client.get("/ui/")
    assert re.search(r'<span class="figure">1</span> agents online', dashboard.text)
    page = client.get(f"/ui/agents/{agent_id}")
    assert_strict_page(page)
    assert "discover-filesystem" in page.text and "status-queued" in page.text

    revoked = client.post(f"/ui/agents/{agent_id}/revoke", data={"csrf_token": csrf}, follow_redirects=False)
    assert revoked.status_code == 303
    page = client.get(revoked.headers["location"])
    assert (
        "status-revoked" in page.text and "status-cancelled" in page.text and "Revoke agent" not in page.text
    )
    audit = client.get("/api/v1/audit/events", params={"action": "agent.revoked"}, headers=admin.headers)
    assert audit.status_code == 200 and "admin-user" in audit.text, audit.text


def test_registration_token_bad_input_revoke_and_roles(
    client: TestClient, api_users: dict[str, ApiUser]
) -> None:
    csrf = login(client, "admin-user")
    for data, message in (
        ({"expires_in_hours": "0"}, "whole number of hours from 1 to 720"),
        ({"expires_in_hours": "abc"}, "whole number of hours"),
        ({"labels": "Not Valid"}, "label &#39;Not Valid&#39; must be lowercase"),
        ({"description": "x" * 201}, "at most 200 characters"),
    ):
        refused = client.post("/ui/agents/tokens", data={"csrf_token": csrf, **data})
        assert refused.status_code == 422, (data, refused.status_code)
        assert message in refused.text and SECRET.search(refused.text) is None
    assert "No unused tokens." in client.get("/ui/agents").text  # nothing half-made

    made = client.post("/ui/agents/tokens", data={"csrf_token": csrf, "description": "spare"})
    token_id = re.search(r'action="/ui/agents/tokens/(\d+)/revoke"', made.text)
    assert token_id
    assert client.post(f"/ui/agents/tokens/{token_id.group(1)}/revoke", data={}).status_code == 403  # no CSRF
    done = client.post(f"/ui/agents/tokens/{token_id.group(1)}/revoke", data={"csrf_token": csrf})
    assert done.status_code == 200 and "Revoked." in done.text and "No unused tokens." in done.text
    missing = client.post("/ui/agents/tokens/999999/revoke", data={"csrf_token": csrf})
    assert missing.status_code == 404 and "no registration token 999999" in missing.text
    assert client.get("/ui/agents?status=sleepy").status_code == 400
    assert client.get("/ui/agents/nobody").status_code == 404

    client.cookies.clear()
    csrf = login(client, "operator-user")
    page = client.get("/ui/agents")
    assert page.status_code == 200 and post_actions(page.text) == ["/ui/logout"]
    assert "Registration tokens" not in page.text
    assert client.post("/ui/agents/tokens", data={"csrf_token": csrf}).status_code == 403


# --- notifications ---------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[list[bytes]]:
    """A loopback webhook receiver that accepts every POST and keeps its body."""
    received: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    received.append(f"http://127.0.0.1:{server.server_address[1]}/hook".encode())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


def test_channel_rule_delivery_log_and_events(
    client: TestClient, platform: Platform, api_users: dict[str, ApiUser], receiver: list[bytes]
) -> None:
    url = receiver.pop(0).decode()
    csrf = login(client, "admin-user")
    form = client.get("/ui/notifications/channels/new/webhook")
    assert form.status_code == 200 and 'name="config.url"' in form.text and 'type="password"' in form.text
    assert 'action="/ui/notifications/channels/new/webhook"' in form.text
    bad = client.post(
        "/ui/notifications/channels/new/webhook",
        data={"csrf_token": csrf, "name": "ops-hook", "config.url": "ftp://x", "config.secret": "s3cret-key"},
    )
    assert bad.status_code == 422 and "url" in bad.text and "s3cret-key" not in bad.text
    created = client.post(
        "/ui/notifications/channels/new/webhook",
        data={"csrf_token": csrf, "name": "ops-hook", "config.url": url, "config.secret": "s3cret-key"},
        follow_redirects=False,
    )
    assert created.status_code == 303, created.text
    overview = client.get("/ui/notifications")
    assert_strict_page(overview)
    assert "ops-hook" in overview.text and "s3cret-key" not in overview.text

    for data, status, message in (
        ({"name": "r", "event": "moon.phase", "channel": "ops-hook"}, 422, "event"),
        ({"name": "r", "event": "job.failed", "channel": "nowhere"}, 404, "nowhere"),
        (
            {"name": "r", "event": "certificate.expiring", "channel": "ops-hook", "thresholds": "7, soon"},
            422,
            "whole numbers of days",
        ),
        ({"name": "", "event": "job.failed", "channel": "ops-hook"}, 422, "name"),
    ):
        refused = client.post("/ui/notifications/rules", data={"csrf_token": csrf, **data})
        assert refused.status_code == status and message in refused.text, (data, refused.text[-800:])
    assert "No rules: nothing is sent." in client.get("/ui/notifications").text
    made = client.post(
        "/ui/notifications/rules",
        data={"csrf_token": csrf, "name": "failures", "event": "job.failed", "channel": "ops-hook"},
        follow_redirects=False,
    )
    assert made.status_code == 303

    with platform.sessions() as session:
        events.raise_event(
            session,
            kind=events.JOB_FAILED,
            key="job:1",
            subject="job 1 <failed>",
            body="boom",
            now=platform.clock(),
        )
        session.commit()
    swept = client.post("/api/v1/notifications/sweep", headers=api_users["admin"].headers)
    assert swept.status_code == 200 and swept.json()["sent"] == 1, swept.text
    assert len(receiver) == 1
    log = client.get("/ui/notifications/log?status=sent")
    assert_strict_page(log)
    assert "job 1 &lt;failed&gt;" in log.text and "status-sent" in log.text
    assert "No events raised." not in client.get("/ui/notifications/events?kind=job.failed").text
    assert client.get("/ui/notifications/log?status=lost").status_code == 400
    assert client.get("/ui/notifications/events?kind=nope").status_code == 400

    rule_id = re.search(
        r'action="/ui/notifications/rules/(\d+)/delete"', client.get("/ui/notifications").text
    )
    assert rule_id
    assert client.post(f"/ui/notifications/rules/{rule_id.group(1)}/delete", data={}).status_code == 403
    deleted = client.post(f"/ui/notifications/rules/{rule_id.group(1)}/delete", data={"csrf_token": csrf})
    assert deleted.status_code == 200 and "No rules: nothing is sent." in deleted.text
    gone = client.post(f"/ui/notifications/rules/{rule_id.group(1)}/delete", data={"csrf_token": csrf})
    assert gone.status_code == 404


def test_a_viewer_reads_notifications_but_changes_nothing(
    client: TestClient, api_users: dict[str, ApiUser]
) -> None:
    csrf = login(client, "viewer-user")
    for path in ("/ui/notifications", "/ui/notifications/log", "/ui/notifications/events", "/ui/agents"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert post_actions(page.text) == ["/ui/logout"], path
    assert client.get("/ui/notifications/channels/new/webhook").status_code == 403
    refused = client.post(
        "/ui/notifications/rules",
        data={"csrf_token": csrf, "name": "r", "event": "job.failed", "channel": "x"},
    )
    assert refused.status_code == 403


# --- scan schedules --------------------------------------------------------------------------------


def test_scan_schedules_are_listed_created_and_deleted(
    client: TestClient, api_users: dict[str, ApiUser]
) -> None:
    csrf = login(client, "operator-user")
    assert 'href="/ui/scan-schedules"' in client.get("/ui/scans").text
    base = {"csrf_token": csrf, "name": "nightly", "targets": "127.0.0.1", "ports": "443, 8443"}
    for data, message in (
        ({"cron": "every night"}, "invalid cron expression"),
        ({"cron": "61 3 * * *"}, "invalid cron expression"),
        ({"cron": "0 3 * * *", "targets": ""}, "targets"),
        ({"cron": "0 3 * * *", "ports": "http"}, "port"),
    ):
        refused = client.post("/ui/scan-schedules", data={**base, **data})
        assert refused.status_code == 422, (data, refused.status_code, refused.text[-600:])
        assert message in refused.text and "No scheduled scans." in refused.text
    created = client.post(
        "/ui/scan-schedules", data={**base, "cron": "0 3 * * *", "enabled": "1"}, follow_redirects=False
    )
    assert created.status_code == 303, created.text
    page = client.get("/ui/scan-schedules")
    assert_strict_page(page)
    assert "nightly" in page.text and "0 3 * * *" in page.text
    clash = client.post("/ui/scan-schedules", data={**base, "cron": "0 4 * * *"})
    assert clash.status_code == 409 and "already exists" in clash.text
    schedule_id = re.search(r'action="/ui/scan-schedules/(\d+)/delete"', page.text)
    assert schedule_id
    path = f"/ui/scan-schedules/{schedule_id.group(1)}/delete"
    assert client.post(path, data={}).status_code == 403
    deleted = client.post(path, data={"csrf_token": csrf})
    assert deleted.status_code == 200 and "No scheduled scans." in deleted.text
    assert client.post(path, data={"csrf_token": csrf}).status_code == 404

    client.cookies.clear()
    csrf = login(client, "viewer-user")
    page = client.get("/ui/scan-schedules")
    assert page.status_code == 200 and post_actions(page.text) == ["/ui/logout"]
    assert client.post("/ui/scan-schedules", data={**base, "csrf_token": csrf}).status_code == 403


# --- profiles, policy sets, exemptions ------------------------------------------------------------


def test_profile_form(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    admin = api_users["admin"]
    csrf = login(client, "admin-user")
    assert "Add a" in client.get("/ui/profiles").text  # no CA connection yet
    made = client.post(
        "/api/v1/ca-connections", json={"name": "internal", "type": "local"}, headers=admin.headers
    )
    assert made.status_code == 201
    base = {"csrf_token": csrf, "name": "web", "ca_connection": "internal", "validity_days": "30"}
    for data, status, message in (
        ({"name": "no spaces"}, 422, "name must be 1-150 letters"),
        ({"key_type": "DSA-1024"}, 422, "key type must be one of"),
        ({"validity_days": "ninety"}, 422, "validity days must be a number"),
        ({"validity_days": "9999"}, 422, "validity_days"),
        ({"renewal_mode": "days", "renewal_value": "-2"}, 422, "positive number of days"),
        ({"ca_connection": "elsewhere"}, 404, "elsewhere"),
    ):
        refused = client.post("/ui/profiles", data={**base, **data})
        assert refused.status_code == status and message in refused.text, (data, refused.text[-600:])
    assert "No profiles." in client.get("/ui/profiles").text
    created = client.post(
        "/ui/profiles",
        data={**base, "allowed_names": "*.example.com\napp.example.org", "approval_required": "1"},
        follow_redirects=False,
    )
    assert created.status_code == 303, created.text
    page = client.get("/ui/profiles")
    assert_strict_page(page)
    assert "*.example.com, app.example.org" in page.text and "required" in page.text
    listed = client.get("/api/v1/profiles", headers=admin.headers).json()
    assert [p["name"] for p in listed] == ["web"] and listed[0]["validity_days"] == 30

    client.cookies.clear()
    csrf = login(client, "operator-user")
    assert post_actions(client.get("/ui/profiles").text) == ["/ui/logout"]
    assert client.post("/ui/profiles", data={**base, "csrf_token": csrf}).status_code == 403


def test_policy_set_form_shows_errors_inline_with_their_line(
    client: TestClient, api_users: dict[str, ApiUser]
) -> None:
    csrf = login(client, "admin-user")
    form = client.get("/ui/policies/new")
    assert form.status_code == 200 and "name: web-servers" in form.text
    assert_strict_page(form)
    broken = "name: strict\nchecks:\n  - check: key-algorithm\n  - check: nope\n"
    refused = client.post("/ui/policies/new", data={"csrf_token": csrf, "document": broken})
    assert refused.status_code == 422
    assert "line 4: checks[1].check: unknown check &#39;nope&#39;" in refused.text
    assert "- check: nope" in refused.text  # the document stays in the textarea to be fixed
    bad_yaml = client.post("/ui/policies/new", data={"csrf_token": csrf, "document": "name: [x\nchecks: 1\n"})
    assert (
        bad_yaml.status_code == 422
        and "document: line 2: expected &#39;,&#39; or &#39;]&#39;" in bad_yaml.text
    )
    empty = client.post("/ui/policies/new", data={"csrf_token": csrf, "document": "  "})
    assert empty.status_code == 422 and "write the policy document" in empty.text
    assert "No policy sets" in client.get("/ui/policies").text

    good = "name: strict\nscope:\n  kind: team\n  value: web\nchecks:\n  - check: key-algorithm\n"
    saved = client.post(
        "/ui/policies/new", data={"csrf_token": csrf, "document": good}, follow_redirects=False
    )
    assert saved.status_code == 303, saved.text
    assert "strict" in client.get("/ui/policies").text

    client.cookies.clear()
    csrf = login(client, "operator-user")
    assert client.get("/ui/policies/new").status_code == 403
    assert client.post("/ui/policies/new", data={"csrf_token": csrf, "document": good}).status_code == 403
    assert "New policy set" not in client.get("/ui/policies").text


def test_exemption_form(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    csrf = login(client, "admin-user")
    page = client.get("/ui/policies")
    assert 'action="/ui/policies/exemptions"' in page.text
    base = {
        "csrf_token": csrf,
        "check": "wildcard",
        "justification": "legacy load balancer needs it",
        "approver": "security-lead",
        "expires_on": "2099-12-31",
    }
    for data, status, message in (
        ({"expires_on": "next year"}, 422, "a date as YYYY-MM-DD"),
        ({"expires_on": "2001-01-01"}, 422, "expires_at must be in the future"),
        ({"check": "nope"}, 422, "unknown check"),
        ({"justification": "short"}, 422, "justification"),
        ({"approver": "admin-user"}, 409, "someone other than the requester"),
        ({"certificate_id": "abc"}, 422, "a certificate id"),
        ({"certificate_id": "999999"}, 404, "no certificate 999999"),
    ):
        refused = client.post("/ui/policies/exemptions", data={**base, **data})
        assert refused.status_code == status and message in refused.text, (data, refused.text[-600:])
    assert "No exemptions." in client.get("/ui/policies").text
    granted = client.post("/ui/policies/exemptions", data=base, follow_redirects=False)
    assert granted.status_code == 303
    page = client.get("/ui/policies")
    assert "legacy load balancer needs it" in page.text and "security-lead" in page.text
    assert client.post("/ui/policies/exemptions", data={**base, "csrf_token": ""}).status_code == 403

    client.cookies.clear()
    csrf = login(client, "operator-user")
    assert 'action="/ui/policies/exemptions"' not in client.get("/ui/policies").text
    assert client.post("/ui/policies/exemptions", data={**base, "csrf_token": csrf}).status_code == 403


# --- certificate page: deployment and metadata -----------------------------------------------------


def run_jobs(platform: Platform) -> None:
    load_task_modules()
    Worker(platform, concurrency=2, poll_interval=0.05).run_until_idle(timeout=60)


def test_certificate_page_binds_deploys_and_undeploys(
    client: TestClient, platform: Platform, api_users: dict[str, ApiUser], tmp_path: Path
) -> None:
    admin = api_users["admin"].headers
    assert (
        client.post(
            "/api/v1/ca-connections", json={"name": "internal", "type": "local"}, headers=admin
        ).status_code
        == 201
    )
    assert (
        client.post(
            "/api/v1/profiles", json={"name": "web", "ca_connection": "internal"}, headers=admin
        ).status_code
        == 201
    )
    enrolled = client.post(
        "/api/v1/managed-certificates",
        json={"dns_names": ["www.example.com"], "profile": "web"},
        headers=admin,
    )
    assert enrolled.status_code == 202, enrolled.text
    run_jobs(platform)
    managed = client.get(f"/api/v1/managed-certificates/{enrolled.json()['id']}", headers=admin).json()
    cert_id = managed["current_certificate_id"]
    page_url = f"/ui/certificates/{cert_id}"

    csrf = login(client, "operator-user")
    page = client.get(page_url)
    assert "Not bound to any store." in page.text and "Add a" in page.text
    directory = tmp_path / "www"
    directory.mkdir()
    store = client.post(
        "/api/v1/stores",
        json={"name": "web-files", "type": "pem-files", "config": {"directory": str(directory)}},
        headers=admin,
    )
    assert store.status_code == 201, store.text

    for data, status, message in (
        ({"store": "web-files", "alias": "../escape"}, 422, "alias"),
        ({"store": "nowhere", "alias": "www"}, 404, "nowhere"),
        (
            {"store": "web-files", "alias": "www", "verify_host": "127.0.0.1", "verify_port": "https"},
            422,
            "verify port",
        ),
    ):
        refused = client.post(f"{page_url}/bindings", data={"csrf_token": csrf, **data})
        assert refused.status_code == status and message in refused.text, (data, refused.text[-600:])
        assert "Not bound to any store." in refused.text
    assert client.post(f"{page_url}/bindings", data={"store": "web-files", "alias": "www"}).status_code == 403
    bound = client.post(
        f"{page_url}/bindings",
        data={"csrf_token": csrf, "store": "web-files", "alias": "www"},
        follow_redirects=False,
    )
    assert bound.status_code == 303, bound.text
    run_jobs(platform)
    assert (directory / "www.crt").exists()
    page = client.get(page_url)
    assert_strict_page(page)
    assert "status-deployed" in page.text and "(this)" in page.text
    binding_id = re.search(rf'action="{page_url}/bindings/(\d+)/redeploy"', page.text)
    assert binding_id

    redeployed = client.post(f"{page_url}/bindings/{binding_id.group(1)}/redeploy", data={"csrf_token": csrf})
    assert redeployed.status_code == 200 and "Deployment requested" in redeployed.text
    run_jobs(platform)
    undeployed = client.post(f"{page_url}/bindings/{binding_id.group(1)}/undeploy", data={"csrf_token": csrf})
    assert undeployed.status_code == 200 and "Removal from the store requested" in undeployed.text
    run_jobs(platform)
    assert not (directory / "www.crt").exists()
    assert (
        client.post(
            f"{page_url}/bindings/{binding_id.group(1)}/reboot", data={"csrf_token": csrf}
        ).status_code
        == 404
    )
    assert client.post(f"{page_url}/bindings/999999/redeploy", data={"csrf_token": csrf}).status_code == 404

    client.cookies.clear()
    csrf = login(client, "viewer-user")
    assert post_actions(client.get(page_url).text) == ["/ui/logout"]
    assert (
        client.post(
            f"{page_url}/bindings/{binding_id.group(1)}/redeploy", data={"csrf_token": csrf}
        ).status_code
        == 403
    )


def test_certificate_metadata_is_edited_on_its_page(
    client: TestClient, api_users: dict[str, ApiUser]
) -> None:

    admin = api_users["admin"]
    ca = make_ca("Meta CA")
    import_pems(client, admin, [make_leaf(ca, "meta.example.com").cert.public_bytes(Encoding.PEM)])
    cert_id = client.get(
        "/api/v1/certificates", params={"q": "meta.example.com"}, headers=admin.headers
    ).json()["items"][0]["id"]
    page_url = f"/ui/certificates/{cert_id}"
    csrf = login(client, "operator-user")
    assert f'action="{page_url}/metadata"' in client.get(page_url).text
    base = {
        "csrf_token": csrf,
        "owner": "alice",
        "team": "payments",
        "environment": "prod",
        "notes": "<b>pci</b>",
    }
    refused = client.post(f"{page_url}/metadata", data={**base, "tags": "ok, bad tag"})
    assert refused.status_code == 422 and "tag &#39;bad tag&#39; must be" in refused.text
    assert refused.text.count("alice") == 0  # nothing was saved
    assert client.post(f"{page_url}/metadata", data={**base, "csrf_token": ""}).status_code == 403
    saved = client.post(f"{page_url}/metadata", data={**base, "tags": "pci, web"}, follow_redirects=False)
    assert saved.status_code == 303
    page = client.get(page_url)
    assert "Saved." not in page.text  # the notice is on the redirect target only
    detail = client.get(f"/api/v1/certificates/{cert_id}", headers=admin.headers).json()
    assert (detail["owner"], detail["team"], detail["environment"], detail["notes"]) == (
        "alice",
        "payments",
        "prod",
        "<b>pci</b>",
    )
    assert detail["tags"] == ["pci", "web"]
    assert "&lt;b&gt;pci&lt;/b&gt;" in page.text and "<b>pci</b>" not in page.text
    cleared = client.post(
        f"{page_url}/metadata", data={"csrf_token": csrf, "owner": "bob"}, follow_redirects=False
    )
    assert cleared.status_code == 303
    detail = client.get(f"/api/v1/certificates/{cert_id}", headers=admin.headers).json()
    assert (detail["owner"], detail["team"], detail["tags"]) == ("bob", None, [])

    client.cookies.clear()
    csrf = login(client, "viewer-user")
    assert client.post(f"{page_url}/metadata", data={**base, "csrf_token": csrf}).status_code == 403
