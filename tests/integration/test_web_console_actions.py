"""The console's remaining actions through the real app and database: scan schedule edit, policy set
delete and exemption withdrawal, notification channel test send and delete, and the reports page
read from the stored report snapshots; each with its role checks, CSRF and audit."""

from __future__ import annotations

import re

from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.testclient import TestClient
from sqlalchemy import select
from test_web_pages import assert_strict_page, import_pems, login
from test_web_pages_more import post_actions, receiver  # noqa: F401  (the loopback webhook fixture)

from conftest import ApiUser
from sslclm.audit.models import AuditEvent
from sslclm.core.platform import Platform
from sslclm.discovery.models import ScanSchedule
from sslclm.notifications.models import NotificationRule
from sslclm.reporting.models import ReportSnapshot
from sslclm.workflows.models import Connection
from support.certs import make_ca, make_leaf


def audited(platform: Platform, action: str) -> list[AuditEvent]:
    with platform.sessions() as session:
        return list(session.execute(select(AuditEvent).where(AuditEvent.action == action)).scalars())


def test_a_scan_schedule_is_edited(
    client: TestClient, platform: Platform, api_users: dict[str, ApiUser]
) -> None:
    csrf = login(client, "operator-user")
    base = {"csrf_token": csrf, "name": "nightly", "targets": "127.0.0.1", "ports": "443", "enabled": "1"}
    created = client.post("/ui/scan-schedules", data={**base, "cron": "0 3 * * *"}, follow_redirects=False)
    assert created.status_code == 303
    listing = client.get("/ui/scan-schedules")
    found = re.search(r'href="/ui/scan-schedules/(\d+)"', listing.text)
    assert found, listing.text
    path = f"/ui/scan-schedules/{found.group(1)}"
    form = client.get(path)
    assert_strict_page(form)
    assert 'value="0 3 * * *"' in form.text and "127.0.0.1</textarea>" in form.text
    for data, status, message in (
        ({"cron": "sometimes"}, 422, "invalid cron expression"),
        ({"cron": "0 4 * * *", "targets": ""}, 422, "targets"),
        ({"cron": "0 4 * * *", "name": ""}, 422, "name"),
    ):
        refused = client.post(path, data={**base, **data})
        assert refused.status_code == status and message in refused.text, (data, refused.text[-600:])
        assert 'action="' + path + '"' in refused.text  # the form again, with what was typed
    assert client.post(path, data={**base, "cron": "0 4 * * *"} | {"csrf_token": ""}).status_code == 403
    saved = client.post(
        path, data={**base, "cron": "30 4 * * 1", "targets": "127.0.0.1\nlocalhost", "enabled": ""}
    )
    assert saved.status_code == 200 and "Saved." in saved.text
    with platform.sessions() as session:
        schedule = session.execute(select(ScanSchedule)).scalar_one()
        assert schedule.cron == "30 4 * * 1" and not schedule.enabled
        assert schedule.targets["targets"] == ["127.0.0.1", "localhost"]
    assert audited(platform, "scan-schedule.update")
    assert client.get("/ui/scan-schedules/999999").status_code == 404

    client.cookies.clear()
    csrf = login(client, "viewer-user")
    assert 'href="/ui/scan-schedules/' not in client.get("/ui/scan-schedules").text
    assert client.get(path).status_code == 403
    assert client.post(path, data={**base, "csrf_token": csrf, "cron": "0 5 * * *"}).status_code == 403


def test_policy_sets_are_deleted_and_exemptions_withdrawn(
    client: TestClient, platform: Platform, api_users: dict[str, ApiUser]
) -> None:
    csrf = login(client, "admin-user")
    document = "name: strict\nchecks:\n  - check: key-algorithm\n"
    assert client.post("/ui/policies/new", data={"csrf_token": csrf, "document": document}).status_code == 200
    granted = client.post(
        "/ui/policies/exemptions",
        data={
            "csrf_token": csrf,
            "check": "wildcard",
            "justification": "legacy load balancer needs it",
            "approver": "security-lead",
            "expires_on": "2099-12-31",
        },
    )
    assert granted.status_code == 200
    page = client.get("/ui/policies")
    assert 'action="/ui/policies/strict/delete"' in page.text
    exemption = re.search(r'action="/ui/policies/exemptions/(\d+)/delete"', page.text)
    assert exemption

    assert client.post("/ui/policies/strict/delete", data={}).status_code == 403
    deleted = client.post("/ui/policies/strict/delete", data={"csrf_token": csrf})
    assert deleted.status_code == 200 and "Deleted." in deleted.text and "No policy sets" in deleted.text
    missing = client.post("/ui/policies/strict/delete", data={"csrf_token": csrf})
    assert missing.status_code == 404 and "strict" in missing.text
    withdraw = f"/ui/policies/exemptions/{exemption.group(1)}/delete"
    withdrawn = client.post(withdraw, data={"csrf_token": csrf})
    assert withdrawn.status_code == 200 and "No exemptions." in withdrawn.text
    assert client.post(withdraw, data={"csrf_token": csrf}).status_code == 404
    assert audited(platform, "policy.delete") and audited(platform, "policy.exemption.delete")

    client.cookies.clear()
    csrf = login(client, "operator-user")
    assert "/delete" not in "".join(post_actions(client.get("/ui/policies").text))
    assert client.post("/ui/policies/strict/delete", data={"csrf_token": csrf}).status_code == 403


def test_a_channel_sends_a_test_and_is_deleted_with_its_rules(
    client: TestClient,
    platform: Platform,
    api_users: dict[str, ApiUser],
    receiver: list[bytes],  # noqa: F811
) -> None:
    url = receiver.pop(0).decode()
    csrf = login(client, "admin-user")
    for name, target in (("ops-hook", url), ("dead-hook", "http://127.0.0.1:9/nothing-listens")):
        created = client.post(
            "/ui/notifications/channels/new/webhook",
            data={"csrf_token": csrf, "name": name, "config.url": target, "config.attempts": "1"},
            follow_redirects=False,
        )
        assert created.status_code == 303, created.text
    made = client.post(
        "/ui/notifications/rules",
        data={"csrf_token": csrf, "name": "failures", "event": "job.failed", "channel": "ops-hook"},
    )
    assert made.status_code == 200
    with platform.sessions() as session:
        ids = {row.name: row.id for row in session.execute(select(Connection)).scalars()}

    test_path = f"/ui/notifications/channels/{ids['ops-hook']}/test"
    assert client.post(test_path, data={}).status_code == 403
    sent = client.post(test_path, data={"csrf_token": csrf})
    assert sent.status_code == 200 and "Test sent through ops-hook" in sent.text, sent.text[-800:]
    assert_strict_page(sent)
    assert len(receiver) == 1 and b"test notification" in receiver[0]
    failed = client.post(f"/ui/notifications/channels/{ids['dead-hook']}/test", data={"csrf_token": csrf})
    assert failed.status_code == 200 and "Test through dead-hook failed" in failed.text
    assert [e.summary["ok"] for e in audited(platform, "notification.test")] == [True, False]

    delete_path = f"/ui/notifications/channels/{ids['ops-hook']}/delete"
    assert client.post(delete_path, data={}).status_code == 403
    deleted = client.post(delete_path, data={"csrf_token": csrf})
    assert deleted.status_code == 200 and "Deleted." in deleted.text
    with platform.sessions() as session:
        assert session.get(Connection, ids["ops-hook"]) is None
        assert session.execute(select(NotificationRule)).first() is None
    (event,) = audited(platform, "connection.delete")
    assert event.summary["name"] == "ops-hook" and event.summary["rules"] == ["failures"]
    assert client.post(delete_path, data={"csrf_token": csrf}).status_code == 404
    # Another kind of connection is not a channel.
    assert client.post("/ui/notifications/channels/999999/test", data={"csrf_token": csrf}).status_code == 404

    client.cookies.clear()
    csrf = login(client, "viewer-user")
    assert post_actions(client.get("/ui/notifications").text) == ["/ui/logout"]
    dead = f"/ui/notifications/channels/{ids['dead-hook']}"
    assert client.post(f"{dead}/test", data={"csrf_token": csrf}).status_code == 403
    assert client.post(f"{dead}/delete", data={"csrf_token": csrf}).status_code == 403


def test_reports_page_reads_the_stored_snapshots(
    client: TestClient, platform: Platform, api_users: dict[str, ApiUser]
) -> None:
    login(client, "viewer-user")
    first = client.get("/ui/reports?by=team")
    assert first.status_code == 200 and "As of" in first.text
    assert_strict_page(first)
    with platform.sessions() as session:
        stored = {row.name: row.computed_at for row in session.execute(select(ReportSnapshot)).scalars()}
    assert {"report:forecast:week", "report:breakdown:team"} <= set(stored)
    # The API serves the same stored result: one computation for both.
    api = client.get("/api/v1/reports/breakdown", params={"by": "team"}, headers=api_users["viewer"].headers)
    assert api.status_code == 200
    assert api.headers["X-Report-As-Of"].startswith(stored["report:breakdown:team"].isoformat()[:19])
    assert client.get("/ui/reports?by=moon").status_code == 400


def test_selected_certificates_export_as_csv(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    ca = make_ca("Bulk Export CA")
    pems = [
        make_leaf(ca, f"bulk{i}.example.com", days=30 + i).cert.public_bytes(Encoding.PEM) for i in range(3)
    ]
    import_pems(client, api_users["admin"], pems)
    listed = client.get(
        "/api/v1/certificates",
        params={"q": "bulk", "sort": "common_name"},
        headers=api_users["admin"].headers,
    ).json()["items"]
    chosen = [str(item["id"]) for item in listed[:2]]
    csrf = login(client, "operator-user")
    assert '<option value="export">Export CSV</option>' in client.get("/ui/certificates").text
    exported = client.post(
        "/ui/certificates/bulk", data={"csrf_token": csrf, "action": "export", "ids": chosen}
    )
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    lines = exported.text.strip().splitlines()
    assert len(lines) == 3 and "bulk0.example.com" in lines[1] and "bulk1.example.com" in lines[2]
    nothing = client.post("/ui/certificates/bulk", data={"csrf_token": csrf, "action": "export"})
    assert nothing.status_code == 422 and "select at least one certificate" in nothing.text
    assert client.post("/ui/certificates/bulk", data={"action": "export", "ids": chosen}).status_code == 403
