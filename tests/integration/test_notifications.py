"""Notifications end to end: e-mail through a real SMTP server (STARTTLS + AUTH), Slack, Teams and
signed webhooks against a loopback HTTP receiver, and the rules: routing, once per threshold,
raised events and the daily digest."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import ApiUser
from sslclm.audit.service import AuditContext
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.inventory.importer import import_bytes
from sslclm.inventory.models import Certificate
from sslclm.inventory.service import MetadataPatch, update_metadata
from sslclm.jobs import NoRetry, StepContext, TaskRegistry, Worker, enqueue
from sslclm.jobs.registry import load_task_modules
from sslclm.notifications import events, service
from sslclm.notifications.digest import build_digests
from sslclm.notifications.models import NotificationEvent, NotificationLog
from sslclm.policies import engine
from sslclm.policies import service as policies
from sslclm.workflows import connections
from support.certs import NOW, make_ca, make_leaf
from support.tls_zoo import Pki, free_port, server_context, write_identity

CTX = AuditContext(actor="test")
SMTP_USER = "alerts"
SMTP_PASSWORD = "mail password 42"
SECRET = "webhook signing key"


# --- a real SMTP server -----------------------------------------------------------------------------


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any) -> AuthResult:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
        SMTP_USER.encode(),
        SMTP_PASSWORD.encode(),
    )
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp(tmp_path: Path) -> Iterator[tuple[Controller, Mailbox, Path]]:
    pki = Pki.create("Mail")
    cert, key = write_identity(tmp_path / "smtp", "mail", pki.leaf("127.0.0.1"), [pki.intermediate])
    ca_file = tmp_path / "smtp" / "root.pem"
    ca_file.write_bytes(pki.root.pem)
    mailbox = Mailbox()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=server_context(cert, key),
        require_starttls=True,
        auth_required=True,
        authenticator=authenticate,
    )
    controller.start()
    try:
        yield controller, mailbox, ca_file
    finally:
        controller.stop()


# --- a loopback HTTP receiver -----------------------------------------------------------------------


@dataclass
class Receiver:
    url: str
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    # Paths answered with 503 this many more times before they succeed.
    failures: dict[str, int] = field(default_factory=dict)

    def bodies(self, path: str) -> list[Any]:
        return [json.loads(body) for p, _, body in self.requests if p == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            headers = dict(self.headers.items())
            state.requests.append((self.path, headers, body))
            if state.failures.get(self.path, 0) > 0:
                state.failures[self.path] -= 1
                self.send_response(503)
            elif self.path == "/hook" and not _signed(headers, body):
                self.send_response(401)
            else:
                self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _signed(headers: dict[str, str], body: bytes) -> bool:
    """What a receiver does: recompute the HMAC over '<timestamp>.<body>' and compare in constant time."""
    timestamp = headers.get("X-SSLCLM-Timestamp", "")
    expected = (
        "sha256=" + hmac.new(SECRET.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    )
    return hmac.compare_digest(expected, headers.get("X-SSLCLM-Signature", ""))


# --- helpers -----------------------------------------------------------------------------------------


def _channel(platform: Platform, name: str, type_key: str, config: dict[str, Any]) -> None:
    with session_scope(platform.sessions) as session:
        connections.create_connection(
            session, CTX, platform, kind="notifier", name=name, type_key=type_key, config=config
        )


def _rule(platform: Platform, **fields: Any) -> int:
    with session_scope(platform.sessions) as session:
        return service.create_rule(session, CTX, service.RuleCreate(**fields), now=NOW).id


def _import(platform: Platform, pem: bytes, name: str, **metadata: Any) -> int:
    import_bytes(platform, pem, name, CTX)
    with session_scope(platform.sessions) as session:
        cert = session.execute(select(Certificate).order_by(Certificate.id.desc()).limit(1)).scalar_one()
        if metadata:
            update_metadata(session, CTX, cert, MetadataPatch(**metadata), now=NOW)
        return cert.id


def _sweep(platform: Platform, now: Any) -> dict[str, int]:
    with session_scope(platform.sessions) as session:
        queued = service.queue_events(session, now=now)
        digests = build_digests(session, now=now)
    return {"queued": queued, "digests": digests, **service.deliver_pending(platform)}


def _log(platform: Platform) -> list[NotificationLog]:
    with platform.sessions() as session:
        return list(session.execute(select(NotificationLog).order_by(NotificationLog.id)).scalars())


# --- channels ----------------------------------------------------------------------------------------


def test_email_over_starttls_with_auth_and_a_refused_password(
    platform: Platform, smtp: tuple[Controller, Mailbox, Path]
) -> None:
    controller, mailbox, ca_file = smtp
    mail = {
        "host": "127.0.0.1",
        "port": controller.port,
        "starttls": True,
        "username": SMTP_USER,
        "password": SMTP_PASSWORD,
        "sender": "sslclm@example.com",
        "recipients": ["ops@example.com"],
        "ca_file": str(ca_file),
        "timeout_seconds": 10,
    }
    _channel(platform, "mail", "email", mail)
    _channel(platform, "mail-wrong", "email", {**mail, "password": "not the password"})
    _rule(platform, name="to-mail", event="certificate.expiring", channel="mail")
    _rule(platform, name="to-wrong", event="certificate.expiring", channel="mail-wrong")
    ca = make_ca("Mail Test CA")
    _import(platform, make_leaf(ca, "soon.mail.example", days=4).pem, "soon.pem")

    outcome = _sweep(platform, NOW)

    assert outcome == {"queued": 2, "digests": 0, "sent": 1, "failed": 1, "retrying": 0}
    [message] = mailbox.messages
    assert message["Subject"].startswith("Certificate soon.mail.example expires in")
    assert message["To"] == "ops@example.com" and message["From"] == "sslclm@example.com"
    assert "within 7 days" in message.get_payload()
    sent, failed = sorted(_log(platform), key=lambda e: e.status != "sent")
    assert sent.status == "sent" and "accepted for 1 recipient" in (sent.detail or "")
    assert failed.status == "failed" and failed.attempts == 1
    assert (failed.detail or "").startswith("the SMTP server refused the credentials: 535")
    assert SMTP_PASSWORD not in (failed.detail or "") and "not the password" not in (failed.detail or "")


def test_slack_teams_and_signed_webhook_payloads_with_a_retry(platform: Platform, receiver: Receiver) -> None:
    _channel(platform, "slack", "slack", {"url": f"{receiver.url}/slack", "backoff_seconds": 0})
    _channel(platform, "teams", "teams", {"url": f"{receiver.url}/teams", "backoff_seconds": 0})
    _channel(
        platform,
        "hook",
        "webhook",
        {"url": f"{receiver.url}/hook", "secret": SECRET, "attempts": 3, "backoff_seconds": 0},
    )
    for channel in ("slack", "teams", "hook"):
        _rule(platform, name=f"jobs-{channel}", event="job.failed", channel=channel)
    receiver.failures["/hook"] = 1  # the first POST gets a 503: the notifier must try again
    with session_scope(platform.sessions) as session:
        events.raise_job_failed(
            session, job_id=77, kind="workflows.renew", target="mc:3", error="CA down", now=NOW
        )

    assert _sweep(platform, NOW)["sent"] == 3

    [slack] = receiver.bodies("/slack")
    assert slack["text"] == "Job 77 (workflows.renew) failed"
    assert slack["blocks"][0]["type"] == "section" and slack["blocks"][0]["text"]["type"] == "mrkdwn"
    assert "CA down" in slack["blocks"][0]["text"]["text"]
    [teams] = receiver.bodies("/teams")
    assert teams["@type"] == "MessageCard" and teams["@context"] == "https://schema.org/extensions"
    assert teams["title"] == "Job 77 (workflows.renew) failed" and teams["themeColor"] == "C0392B"
    hook_calls = [(h, b) for p, h, b in receiver.requests if p == "/hook"]
    assert len(hook_calls) == 2  # one 503, then accepted
    assert all(_signed(h, b) for h, b in hook_calls)
    payload = json.loads(hook_calls[-1][1])
    assert payload["event"] == "job.failed" and payload["details"]["job_id"] == 77
    assert payload["severity"] == "critical" and payload["idempotency_key"]


def test_a_webhook_that_keeps_failing_is_retried_then_logged_failed(
    platform: Platform, receiver: Receiver
) -> None:
    _channel(
        platform, "flaky", "webhook", {"url": f"{receiver.url}/flaky", "attempts": 2, "backoff_seconds": 0}
    )
    _rule(platform, name="flaky-agents", event="agent.offline", channel="flaky")
    receiver.failures["/flaky"] = 100
    with session_scope(platform.sessions) as session:
        events.raise_event(
            session, kind=events.AGENT_OFFLINE, key="agent-1:t0", subject="Agent web-01 offline", now=NOW
        )
    for _ in range(service.MAX_ATTEMPTS):
        _sweep(platform, NOW)
    [entry] = _log(platform)
    assert entry.status == "failed" and entry.attempts == service.MAX_ATTEMPTS
    assert "HTTP 503" in (entry.detail or "")
    assert len(receiver.requests) == 2 * service.MAX_ATTEMPTS


# --- rules ------------------------------------------------------------------------------------------


def test_expiry_thresholds_once_each_routed_by_team_and_tag(platform: Platform, receiver: Receiver) -> None:
    _channel(platform, "payments", "webhook", {"url": f"{receiver.url}/payments", "backoff_seconds": 0})
    _channel(platform, "pci", "webhook", {"url": f"{receiver.url}/pci", "backoff_seconds": 0})
    _rule(platform, name="payments-expiry", event="certificate.expiring", channel="payments", team="payments")
    _rule(platform, name="pci-expiry", event="certificate.expiring", channel="pci", tag="pci", thresholds=[3])
    ca = make_ca("Routing CA")
    pay = _import(
        platform, make_leaf(ca, "pay.example", days=12).pem, "pay.pem", team="payments", tags=["pci"]
    )
    _import(platform, make_leaf(ca, "web.example", days=12).pem, "web.pem", team="web")

    assert _sweep(platform, NOW)["queued"] == 1  # 11 days left: payments' 14-day notice; pci waits for 3
    assert _sweep(platform, NOW + timedelta(hours=6))["queued"] == 0  # no repeat within a threshold
    assert _sweep(platform, NOW + timedelta(days=5))["queued"] == 1  # 6 days left: the 7-day notice
    assert _sweep(platform, NOW + timedelta(days=9))["queued"] == 1  # 2 days left: pci's 3-day notice
    assert _sweep(platform, NOW + timedelta(days=10, hours=12))["queued"] == 1  # the last day
    notices = [
        (b["details"]["certificate_id"], b["details"]["threshold_days"]) for b in receiver.bodies("/payments")
    ]
    assert notices == [(pay, 14), (pay, 7), (pay, 1)]
    assert [
        (b["details"]["certificate_id"], b["details"]["threshold_days"]) for b in receiver.bodies("/pci")
    ] == [(pay, 3)]


def test_a_new_critical_violation_is_notified_once(platform: Platform, receiver: Receiver) -> None:
    _channel(platform, "sec", "webhook", {"url": f"{receiver.url}/sec", "backoff_seconds": 0})
    _rule(platform, name="critical", event="policy.critical", channel="sec")
    ca = make_ca("Critical CA")
    bad = _import(platform, make_leaf(ca, "db.internal.example", days=60).pem, "bad.pem")
    _import(platform, make_leaf(ca, "fine.example.com", days=60).pem, "fine.pem")
    document = (
        "name: no-internal\nchecks:\n  - check: domains\n    severity: critical\n"
        '    params: {forbidden: ["*.internal.example"]}\n'
    )
    with session_scope(platform.sessions) as session:
        policies.put_policy(session, CTX, document, now=NOW)
        engine.reevaluate_all(session, now=NOW)

    assert _sweep(platform, NOW)["sent"] == 1
    assert _sweep(platform, NOW + timedelta(hours=1))["queued"] == 0
    [body] = receiver.bodies("/sec")
    assert body["event"] == "policy.critical" and body["details"]["certificate_id"] == bad
    assert body["subject"] == "Critical policy violation: domains on db.internal.example"


def test_raised_events_are_recorded_once_per_key_and_routed(platform: Platform, receiver: Receiver) -> None:
    _channel(platform, "ops", "webhook", {"url": f"{receiver.url}/ops", "backoff_seconds": 0})
    for kind in ("deployment.drift", "agent.offline", "discovery.new-certificates"):
        _rule(platform, name=f"ops-{kind}", event=kind, channel="ops")
    _rule(platform, name="web-team-drift", event="deployment.drift", channel="ops", team="web")
    with session_scope(platform.sessions) as session:
        first = events.raise_drift(
            session, binding_id=5, store="edge-nginx", alias="shop", finding="fingerprint differs", now=NOW
        )
        again = events.raise_drift(
            session, binding_id=5, store="edge-nginx", alias="shop", finding="fingerprint differs", now=NOW
        )
        events.raise_event(
            session,
            kind=events.AGENT_OFFLINE,
            key="agent-9:2026-11-28T01:00",
            subject="Agent db-9 offline",
            now=NOW,
        )
        events.raise_event(
            session,
            kind=events.AGENT_OFFLINE,
            key="agent-9:2026-11-28T01:00",
            subject="Agent db-9 offline",
            now=NOW,
        )
        events.raise_new_certificates(
            session, scan_id=12, counts={"certificates_new": 3, "endpoints_new": 2}, now=NOW
        )
        events.raise_new_certificates(session, scan_id=13, counts={"certificates_new": 0}, now=NOW)
        with pytest.raises(Exception, match="unknown event kind"):
            events.raise_event(session, kind="certificate.exploded", key="x", subject="?", now=NOW)
    assert first is not None and again is None

    assert _sweep(platform, NOW)["sent"] == 3  # the team-scoped rule matches nothing: drift had no team
    assert _sweep(platform, NOW)["queued"] == 0
    by_event = {b["event"]: b for b in receiver.bodies("/ops")}
    assert set(by_event) == {"deployment.drift", "agent.offline", "discovery.new-certificates"}
    assert by_event["deployment.drift"]["details"]["finding"] == "fingerprint differs"
    assert by_event["discovery.new-certificates"]["details"]["certificates_new"] == 3
    assert by_event["discovery.new-certificates"]["severity"] == "info"


def test_the_daily_digest_sends_one_message_per_channel_and_day(
    platform: Platform, receiver: Receiver
) -> None:
    _channel(platform, "digest", "webhook", {"url": f"{receiver.url}/digest", "backoff_seconds": 0})
    _rule(platform, name="jobs-digest", event="job.failed", channel="digest", digest=True)
    _rule(platform, name="drift-digest", event="deployment.drift", channel="digest", digest=True)
    day = NOW.replace(hour=9, minute=0, second=0, microsecond=0)
    with session_scope(platform.sessions) as session:
        for job_id in (1, 2, 3):
            events.raise_job_failed(
                session, job_id=job_id, kind="demo", target=None, error=f"boom {job_id}", now=day
            )
        events.raise_drift(session, binding_id=4, store="s", alias="a", finding="missing", now=day)

    held = _sweep(platform, day + timedelta(hours=2))
    assert held == {"queued": 4, "digests": 0, "sent": 0, "failed": 0, "retrying": 0}
    assert _sweep(platform, day + timedelta(hours=8))["digests"] == 0  # the day is not over yet
    assert receiver.requests == []

    next_day = day + timedelta(days=1)
    assert _sweep(platform, next_day)["digests"] == 1
    assert _sweep(platform, next_day + timedelta(minutes=5))["digests"] == 0
    [digest] = receiver.bodies("/digest")
    assert digest["event"] == "digest" and digest["severity"] == "critical"
    assert digest["subject"] == f"SSL-CLM daily digest for {day:%Y-%m-%d}: 4 notification(s)"
    assert all(f"Job {n} (demo) failed" in digest["body"] for n in (1, 2, 3))
    assert "Deployment drift in s (a)" in digest["body"]
    assert digest["details"]["by_event"] == {"job.failed": 3, "deployment.drift": 1}
    statuses = sorted(e.status for e in _log(platform))
    assert statuses == ["digested"] * 4 + ["sent"]


def test_a_failed_job_raises_its_event_from_the_worker(platform: Platform) -> None:
    registry = TaskRegistry()

    @registry.task("test.doomed", retry=NoRetry())
    def doomed(ctx: StepContext) -> None:
        raise RuntimeError("the disk is full")

    with session_scope(platform.sessions) as session:
        job_id = enqueue(session, "test.doomed", {}, now=platform.clock()).id
    Worker(platform, registry=registry, concurrency=1, poll_interval=0.05).run_until_idle(timeout=60)
    with platform.sessions() as session:
        [event] = session.execute(select(NotificationEvent)).scalars()
    assert (event.kind, event.key) == ("job.failed", str(job_id))
    assert event.subject == f"Job {job_id} (test.doomed) failed" and "the disk is full" in event.body


def test_the_migration_matches_the_notification_models(platform: Platform) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from sslclm.core.models import Base

    ours = {"notification_events", "notification_rules", "notification_log"}
    with platform.engine.connect() as connection:
        diffs = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
        )

    def tables(diff: Any) -> set[str]:
        found: set[str] = set()
        for item in diff if isinstance(diff, list) else [diff]:
            for part in item[1:] if isinstance(item, tuple) else ():
                name = part if isinstance(part, str) else getattr(getattr(part, "table", None), "name", None)
                found.add(str(name or getattr(part, "name", "")))
        return found

    assert [d for d in diffs if tables(d) & ours] == []


def test_the_drift_check_raises_one_event_per_drift(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, tmp_path: Path
) -> None:
    admin = api_users["admin"].headers
    ca = {"name": "internal", "type": "local", "config": {}}
    assert client.post("/api/v1/ca-connections", json=ca, headers=admin).status_code == 201
    profile = {"name": "web", "ca_connection": "internal", "validity_days": 30}
    assert client.post("/api/v1/profiles", json=profile, headers=admin).status_code == 201
    managed = client.post(
        "/api/v1/managed-certificates",
        json={"dns_names": ["www.example.com"], "profile": "web"},
        headers=admin,
    )
    assert managed.status_code == 202, managed.text
    directory = tmp_path / "www"
    directory.mkdir()
    store = {"name": "web-files", "type": "pem-files", "config": {"directory": str(directory)}}
    assert client.post("/api/v1/stores", json=store, headers=admin).status_code == 201
    binding = {"managed_certificate": str(managed.json()["id"]), "store": "web-files", "alias": "www"}
    assert client.post("/api/v1/bindings", json=binding, headers=admin).status_code == 201
    _run_jobs(platform)
    (directory / "www.crt").write_bytes(make_leaf(make_ca("Intruder CA"), "www.example.com").pem)

    for _ in range(2):  # the hourly check finds the same drift twice: one event
        with session_scope(platform.sessions) as session:
            enqueue(session, "deployments.drift", {}, now=platform.clock())
        _run_jobs(platform)

    with platform.sessions() as session:
        [event] = session.execute(select(NotificationEvent)).scalars()
    assert event.kind == "deployment.drift" and event.subject == "Deployment drift in web-files (www)"
    assert event.details["alias"] == "www" and event.details["finding"]


def _run_jobs(platform: Platform) -> None:
    load_task_modules()
    Worker(platform, concurrency=1, poll_interval=0.05).run_until_idle(timeout=60)


def test_rules_and_events_through_the_api(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, receiver: Receiver
) -> None:
    admin, viewer = api_users["admin"].headers, api_users["viewer"].headers
    _channel(platform, "ops", "webhook", {"url": f"{receiver.url}/ops", "backoff_seconds": 0})
    rule = {"name": "offline", "event": "agent.offline", "channel": "ops", "digest": True}
    assert client.post("/api/v1/notifications/rules", json=rule, headers=viewer).status_code == 403
    created = client.post("/api/v1/notifications/rules", json=rule, headers=admin)
    assert created.status_code == 201 and created.json()["digest"] is True
    unknown = client.post("/api/v1/notifications/rules", json={**rule, "event": "cert.gone"}, headers=admin)
    assert unknown.status_code == 422 and "event" in unknown.text
    with session_scope(platform.sessions) as session:
        events.raise_event(session, kind=events.AGENT_OFFLINE, key="a1:t", subject="Agent a1 offline")
    [raised] = client.get("/api/v1/notifications/events?kind=agent.offline", headers=viewer).json()
    assert raised["subject"] == "Agent a1 offline" and raised["severity"] == "warning"
    swept = client.post("/api/v1/notifications/sweep", headers=admin).json()
    assert swept == {"queued": 1, "digests": 0, "sent": 0, "failed": 0, "retrying": 0}
    [held] = client.get("/api/v1/notifications/log", headers=viewer).json()
    assert held["status"] == "held" and held["event"] == "agent.offline"
