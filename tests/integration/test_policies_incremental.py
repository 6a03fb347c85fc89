"""Violations kept current by every trigger: import, key reuse, metadata, archive, scans and time.

Nothing here calls a full re-evaluation: each test changes the inventory the way users and the
platform do and reads the stored violations.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import ApiUser
from sslclm.audit.service import AuditContext
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.discovery import service as discovery
from sslclm.discovery.scans import run_scan
from sslclm.discovery.schemas import ScanOptionsIn, ScanTargetsIn
from sslclm.inventory.models import Certificate
from sslclm.jobs import queue
from sslclm.jobs.models import Job
from sslclm.jobs.registry import load_task_modules
from sslclm.jobs.worker import Worker
from sslclm.policies import incremental
from sslclm.policies import service as policy_service
from sslclm.policies.models import PolicyViolation, PolicyViolationCount
from sslclm.policies.tasks import REEVALUATE_TASK
from sslclm.reporting import service as reports
from sslclm.reporting.models import ReportSnapshot
from support.certs import Issued, make_ca, make_leaf
from support.tls_threads import ServerThread
from support.tls_zoo import Pki, server_context, write_identity

API = "/api/v1"
CTX = AuditContext(actor="test")
POLICY = """\
name: live
scope: {kind: all}
checks:
  - check: expiry
    params: {warning_days: 30, critical_days: 7}
  - check: key-reuse
  - check: endpoint-trust
"""
PAYMENTS = """\
name: payments
scope: {kind: team, value: payments}
checks:
  - check: domains
    params: {allowed: [".pay.example"]}
"""


def _import(client: TestClient, user: ApiUser, issued: Issued, name: str) -> int:
    response = client.post(
        f"{API}/certificates/import", files=[("files", (name, issued.pem))], headers=user.headers
    )
    assert response.status_code in (200, 201), response.text
    found = client.get(f"{API}/certificates?q={issued.fingerprint}", headers=user.headers).json()
    return int(found["items"][0]["id"])


def _violations(platform: Platform, certificate_id: int) -> dict[str, str]:
    with platform.sessions() as session:
        rows = session.execute(
            select(PolicyViolation.check, PolicyViolation.severity).where(
                PolicyViolation.certificate_id == certificate_id
            )
        )
        return {check: severity for check, severity in rows}


def _put(client: TestClient, admin: ApiUser, text: str) -> None:
    response = client.put(f"{API}/policies", content=text, headers=admin.headers)
    assert response.status_code in (200, 201), response.text


def test_imports_metadata_and_archiving_keep_violations_current(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    admin = api_users["admin"]
    _put(client, admin, POLICY)
    _put(client, admin, PAYMENTS)
    ca = make_ca("Live Root")
    soon = _import(client, admin, make_leaf(ca, "soon.example.com", days=5), "soon.pem")
    assert _violations(platform, soon) == {"expiry": "high"}

    # Key reuse: the second certificate with the same key flags both, the older one included.
    first = make_leaf(ca, "one.example.com", days=200)
    first_id = _import(client, admin, first, "one.pem")
    assert "key-reuse" not in _violations(platform, first_id)
    twin = make_leaf(ca, "two.example.com", days=200, same_key_as=first)
    twin_id = _import(client, admin, twin, "two.pem")
    assert _violations(platform, twin_id).get("key-reuse") == "medium"
    assert _violations(platform, first_id).get("key-reuse") == "medium"

    # Moving it into the payments team brings that team's policy set into force.
    patched = client.patch(f"{API}/certificates/{first_id}", json={"team": "payments"}, headers=admin.headers)
    assert patched.status_code == 200, patched.text
    assert _violations(platform, first_id).get("domains") == "high"
    client.patch(f"{API}/certificates/{first_id}", json={"team": None}, headers=admin.headers)
    assert "domains" not in _violations(platform, first_id)

    # Archiving drops its violations; the maintained counts follow every change.
    archived = client.post(f"{API}/certificates/{soon}/archive", headers=admin.headers)
    assert archived.status_code in (200, 204), archived.text
    assert _violations(platform, soon) == {}
    with platform.sessions() as session:
        counts = {
            (row.policy, row.check, row.severity): row.violations
            for row in session.execute(select(PolicyViolationCount)).scalars()
        }
        grouped = reports.compliance(session)
    assert counts[("live", "expiry", "high")] == 0
    assert counts[("live", "key-reuse", "medium")] == 2
    assert {(r["check"], r["violations"]) for r in grouped} == {("key-reuse", 2)}


def test_time_passing_re_evaluates_only_certificates_crossing_a_window(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    admin = api_users["admin"]
    _put(client, admin, POLICY)
    ca = make_ca("Time Root")
    crossing = _import(client, admin, make_leaf(ca, "cross.example.com", days=40), "cross.pem")
    later = _import(client, admin, make_leaf(ca, "later.example.com", days=300), "later.pem")
    assert _violations(platform, crossing) == {}
    start = platform.clock()
    with session_scope(platform.sessions) as session:
        incremental.set_clock(session, start)

    fifteen_days = start + timedelta(days=15)
    with platform.sessions() as session:
        selected = incremental.ids_changed_by_time(session, start, fifteen_days)
    # 40 days left crosses the 30-day window within 15 days; 300 days left crosses nothing.
    assert crossing in selected and later not in selected
    with session_scope(platform.sessions) as session:
        stats = incremental.evaluate_elapsed(session, since=start, now=fifteen_days)
    assert stats.certificates == len(selected)
    assert _violations(platform, crossing) == {"expiry": "medium"}
    with platform.sessions() as session:
        assert incremental.clock(session) == fifteen_days

    past_expiry = start + timedelta(days=41)
    with session_scope(platform.sessions) as session:
        incremental.evaluate_elapsed(session, since=fifteen_days, now=past_expiry)
    assert _violations(platform, crossing) == {"expiry": "critical"}
    assert _violations(platform, later) == {}


def test_an_expiring_exemption_brings_its_violation_back(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    admin, operator = api_users["admin"], api_users["operator"]
    _put(client, admin, POLICY)
    soon = _import(client, admin, make_leaf(make_ca("Exempt Root"), "x.example.com", days=5), "x.pem")
    now = platform.clock()
    granted = client.post(
        f"{API}/policies/exemptions",
        json={
            "certificate_id": soon,
            "check": "expiry",
            "justification": "replacement is being rolled out",
            "approver": operator.username,
            "expires_at": (now + timedelta(days=1)).isoformat(),
        },
        headers=admin.headers,
    )
    assert granted.status_code == 201, granted.text
    with platform.sessions() as session:
        assert session.execute(select(PolicyViolation.exemption_id)).scalar_one() is not None
    with session_scope(platform.sessions) as session:
        incremental.evaluate_elapsed(session, since=now, now=now + timedelta(days=2))
    with platform.sessions() as session:
        assert session.execute(select(PolicyViolation.exemption_id)).scalar_one() is None


@pytest.fixture
def servers() -> Iterator[ServerThread]:
    with ServerThread() as thread:
        yield thread


def test_scans_update_the_served_certificates_verdicts(
    client: TestClient,
    api_users: dict[str, ApiUser],
    platform: Platform,
    servers: ServerThread,
    tmp_path: Path,
) -> None:
    _put(client, api_users["admin"], POLICY)
    pki = Pki.create("Sighting")
    # Served for a name the scan does not use: the endpoint reports a hostname mismatch.
    leaf = pki.leaf("www.example.com")
    server = servers.serve(
        ssl_context=server_context(*write_identity(tmp_path, "w", leaf, [pki.intermediate]))
    )
    targets = ScanTargetsIn(targets=["127.0.0.1"], ports=str(server.port))
    opts = ScanOptionsIn(use_system_roots=False, extra_roots_pem=pki.root.pem.decode())  # type: ignore[call-arg]

    def scan() -> None:
        with session_scope(platform.sessions) as session:
            scan_id = discovery.create_scan(
                session, CTX, targets, opts, now=platform.clock(), enqueue=False
            ).id
        run_scan(platform, scan_id)

    scan()
    with platform.sessions() as session:
        leaf_id = session.execute(
            select(Certificate.id).where(Certificate.common_name == "www.example.com")
        ).scalar_one()
    assert _violations(platform, leaf_id) == {"endpoint-trust": "high"}

    # The endpoint stops serving it: the next scan clears the verdict of the certificate it served.
    servers.stop(server)
    scan()
    assert _violations(platform, leaf_id) == {}


def test_the_periodic_task_walks_once_then_follows_the_clock(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    _put(client, api_users["admin"], POLICY)
    _import(client, api_users["admin"], make_leaf(make_ca("Task Root"), "t.example.com", days=60), "t.pem")
    load_task_modules()
    results = []
    for _ in range(2):
        with session_scope(platform.sessions) as session:
            job = queue.enqueue(session, REEVALUATE_TASK, {}, now=platform.clock())
            job_id = job.id
        Worker(platform, concurrency=1, poll_interval=0.05).run_until_idle(timeout=60)
        with platform.sessions() as session:
            done = session.get(Job, job_id)
            assert done is not None and done.status == "succeeded", done and done.last_error
            results.append(done.result)
            assert incremental.clock(session) is not None
    assert results[0]["mode"] == "full" and results[0]["certificates"] == 1
    assert results[1]["mode"] == "elapsed"


def test_metrics_at_the_root_path_need_a_token_and_read_the_snapshot(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    _put(client, api_users["admin"], POLICY)
    _import(client, api_users["admin"], make_leaf(make_ca("Metrics Root"), "m.example.com", days=3), "m.pem")
    assert client.get("/metrics").status_code == 401
    first = client.get("/metrics", headers=api_users["viewer"].headers)
    assert first.status_code == 200
    assert 'sslclm_certificates_expiring{within_days="7"} 1.0' in first.text
    assert 'sslclm_policy_violations{severity="high"} 1.0' in first.text
    assert "sslclm_metrics_snapshot_age_seconds" in first.text
    with platform.sessions() as session:
        assert session.get(ReportSnapshot, "metrics:inventory") is not None


def test_a_policy_change_on_a_large_inventory_is_evaluated_by_a_job(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = api_users["admin"]
    ca = make_ca("Large Root")
    ids = [_import(client, admin, make_leaf(ca, f"l{n}.example.com", days=3), f"l{n}.pem") for n in range(2)]
    monkeypatch.setattr(policy_service, "SYNC_EVALUATION_LIMIT", 1)  # "large" = more than one here
    created = client.put(f"{API}/policies", content=POLICY, headers=admin.headers)
    assert created.status_code == 201, created.text
    assert "queued_job_id" in created.json()["evaluation"]
    load_task_modules()
    Worker(platform, concurrency=1, poll_interval=0.05).run_until_idle(timeout=60)
    assert all(_violations(platform, cid) == {"expiry": "high"} for cid in ids)
