"""The discovery API: scans run as jobs by a real worker, endpoints, certificate pages and schedules."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from conftest import ApiUser
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.discovery import scans as scan_tasks
from sslclm.discovery.models import Scan, ScanSchedule
from sslclm.discovery.schedules import SCHEDULE_TASK, due_schedules, enqueue_due_scans, next_run
from sslclm.errors import InvalidInputError
from sslclm.jobs import Worker
from sslclm.jobs.models import Job
from sslclm.pki import compute_fingerprint
from support.tls_threads import ServerThread
from support.tls_zoo import Pki, server_context, write_identity

API = "/api/v1"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create("Api")


@pytest.fixture
def servers() -> Iterator[ServerThread]:
    with ServerThread() as thread:
        yield thread


def scan_body(pki: Pki, targets: list[str], **extra: object) -> dict[str, object]:
    return {
        "targets": targets,
        "options": {"use_system_roots": False, "extra_roots_pem": pki.root.pem.decode()},
        **extra,
    }


def test_a_scan_created_through_the_api_runs_as_a_job(
    client: TestClient,
    api_users: dict[str, ApiUser],
    platform: Platform,
    servers: ServerThread,
    pki: Pki,
    tmp_path: Path,
) -> None:
    leaf = pki.leaf("127.0.0.1")
    server = servers.serve(
        ssl_context=server_context(*write_identity(tmp_path, "api", leaf, [pki.intermediate]))
    )
    operator, viewer = api_users["operator"].headers, api_users["viewer"].headers
    body = scan_body(pki, [f"127.0.0.1:{server.port}"], name="loopback")

    assert client.post(f"{API}/scans", json=body, headers=viewer).status_code == 403
    created = client.post(f"{API}/scans", json=body, headers=operator)
    assert created.status_code == 201, created.text
    scan = created.json()
    assert (scan["status"], scan["total"], scan["done"], scan["name"]) == ("queued", 1, 0, "loopback")
    assert scan["options"]["extra_roots_pem"] == "<1 certificates>"

    assert scan_tasks.SCAN_TASK in Worker(platform).registry
    stats = Worker(platform, poll_interval=0.05).run_until_idle(timeout=60)
    assert stats.succeeded == 1, stats

    shown = client.get(f"{API}/scans/{scan['id']}", headers=viewer).json()
    assert (shown["status"], shown["done"], shown["found"], shown["failed"], shown["progress"]) == (
        "succeeded",
        1,
        1,
        0,
        1.0,
    )
    job = client.get(f"{API}/jobs/{shown['job_id']}", headers=viewer).json()
    assert job["status"] == "succeeded"
    assert job["result"]["changes"]["endpoints_new"] == 1

    listed = client.get(f"{API}/scans", headers=viewer).json()
    assert [s["id"] for s in listed["items"]] == [scan["id"]]

    endpoints = client.get(f"{API}/endpoints", params={"port": server.port}, headers=viewer).json()["items"]
    assert len(endpoints) == 1
    endpoint = endpoints[0]
    assert (endpoint["host"], endpoint["sni"], endpoint["last_status"], endpoint["trusted"]) == (
        "127.0.0.1",
        None,
        "ok",
        True,
    )
    fingerprint = compute_fingerprint(leaf.der)
    assert endpoint["certificate"]["fingerprint_sha256"] == fingerprint
    for params, expected in [
        ({"status": "error"}, 0),
        ({"trusted": "false"}, 0),
        ({"trusted": "true", "host": "127.0.0.1"}, 1),
        ({"expiring": "true"}, 0),
        ({"expiring_days": 100}, 1),
    ]:
        found = client.get(f"{API}/endpoints", params=params, headers=viewer).json()["items"]
        assert len(found) == expected, params
    bad = client.get(f"{API}/endpoints", params={"status": "maybe"}, headers=viewer)
    assert bad.status_code == 422

    detail = client.get(f"{API}/endpoints/{endpoint['id']}", headers=viewer).json()
    assert [h["event"] for h in detail["history"]] == ["first-seen"]

    served = client.get(f"{API}/certificates/{fingerprint}/endpoints", headers=viewer).json()
    assert [(e["id"], e["serves_now"]) for e in served["items"]] == [(endpoint["id"], True)]
    intermediate = compute_fingerprint(pki.intermediate.der)
    assert client.get(f"{API}/certificates/{intermediate}/endpoints", headers=viewer).json()["items"] == []

    diff = client.get(f"{API}/scans/{scan['id']}/diff", headers=viewer).json()
    assert diff["previous_scan_id"] is None
    assert diff["counts"]["endpoints_new"] == 1
    assert client.get(f"{API}/scans/999999/diff", headers=viewer).status_code == 404

    # Finished scans cannot be cancelled; a queued one can, and its job goes with it.
    again = client.post(f"{API}/scans/{scan['id']}/cancel", headers=operator)
    assert again.status_code == 409
    queued = client.post(f"{API}/scans", json=body, headers=operator).json()
    cancelled = client.post(f"{API}/scans/{queued['id']}/cancel", headers=operator).json()
    assert cancelled["status"] == "cancelled"
    assert client.get(f"{API}/jobs/{queued['job_id']}", headers=viewer).json()["status"] == "cancelled"


@pytest.mark.parametrize(
    ("body", "field", "token"),
    [
        ({"targets": ["192.0.2.0/33"]}, "targets", "192.0.2.0/33"),
        ({"targets": ["ok.example", "not a host"]}, "targets", "not a host"),
        ({"targets": ["192.0.2.1"], "ports": "0"}, "ports", "0"),
        ({"targets": ["192.0.2.1"], "exclude": ["300.1.1.1"]}, "exclude", "300.1.1.1"),
        ({"targets": ["10.0.0.0/8"], "options": {"max_targets": 1000}}, "targets", "16,777,216"),
        ({"targets": ["192.0.2.1"], "protocol": "gopher"}, "protocol", "gopher"),
    ],
)
def test_bad_targets_get_a_422_naming_the_token(
    client: TestClient,
    api_users: dict[str, ApiUser],
    platform: Platform,
    body: dict[str, object],
    field: str,
    token: str,
) -> None:
    response = client.post(f"{API}/scans", json=body, headers=api_users["operator"].headers)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["field"] == field
    assert token in problem["detail"]
    with platform.sessions() as session:
        assert session.execute(select(func.count()).select_from(Scan)).scalar_one() == 0


def test_schema_errors_name_the_field(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    headers = api_users["operator"].headers
    for body in (
        {"targets": []},
        {"targets": ["a.example"], "options": {"concurrency": 0}},
        {"targets": ["x"], "bogus": 1},
    ):
        assert client.post(f"{API}/scans", json=body, headers=headers).status_code == 422


def test_scan_schedules_crud_and_due_runs(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, pki: Pki
) -> None:
    operator, viewer = api_users["operator"].headers, api_users["viewer"].headers
    body = scan_body(pki, ["192.0.2.10"], name="nightly", cron="0 3 * * *")
    bad = client.post(f"{API}/scan-schedules", json={**body, "cron": "61 * * * *"}, headers=operator)
    assert (bad.status_code, bad.json()["field"]) == (422, "cron")
    assert client.post(f"{API}/scan-schedules", json=body, headers=viewer).status_code == 403
    created = client.post(f"{API}/scan-schedules", json=body, headers=operator)
    assert created.status_code == 201, created.text
    schedule = created.json()
    now = platform.clock()
    expected = now.replace(hour=3, minute=0, second=0, microsecond=0)
    if expected <= now:
        expected += timedelta(days=1)
    assert datetime.fromisoformat(schedule["next_run_at"]) == expected
    assert client.post(f"{API}/scan-schedules", json=body, headers=operator).status_code == 409

    changed = client.patch(
        f"{API}/scan-schedules/{schedule['id']}", json={"cron": "*/10 * * * *"}, headers=operator
    ).json()
    assert changed["cron"] == "*/10 * * * *"
    due_at = datetime.fromisoformat(changed["next_run_at"])
    assert due_at.minute % 10 == 0 and due_at > now
    assert [s["name"] for s in client.get(f"{API}/scan-schedules", headers=viewer).json()] == ["nightly"]

    with platform.sessions() as session:
        assert due_schedules(session, due_at - timedelta(seconds=1)) == []
        assert [s.id for s in due_schedules(session, due_at)] == [schedule["id"]]
    (scan_id,) = enqueue_due_scans(platform, due_at + timedelta(seconds=5))
    assert enqueue_due_scans(platform, due_at + timedelta(seconds=6)) == []
    # Another scheduler that read the same due time before this one moved it on enqueues nothing.
    with session_scope(platform.sessions) as session:
        session.get_one(ScanSchedule, schedule["id"]).next_run_at = due_at
    assert enqueue_due_scans(platform, due_at + timedelta(seconds=7)) == []
    with platform.sessions() as session:
        scan = session.get_one(Scan, scan_id)
        assert (scan.schedule_id, scan.name, scan.targets["targets"], scan.status) == (
            schedule["id"],
            "nightly",
            ["192.0.2.10"],
            "queued",
        )
        job = session.get_one(Job, scan.job_id)
        assert job.kind == scan_tasks.SCAN_TASK
    shown = client.get(f"{API}/scan-schedules/{schedule['id']}", headers=viewer).json()
    assert shown["last_scan_id"] == scan_id
    assert [
        s["id"]
        for s in client.get(f"{API}/scans", params={"schedule_id": schedule["id"]}, headers=viewer).json()[
            "items"
        ]
    ] == [scan_id]

    assert client.delete(f"{API}/scan-schedules/{schedule['id']}", headers=operator).status_code == 204
    assert client.get(f"{API}/scan-schedules/{schedule['id']}", headers=viewer).status_code == 404


def test_the_schedule_sweep_is_a_periodic_task() -> None:
    from sslclm.jobs import default_registry

    assert SCHEDULE_TASK in default_registry
    assert SCHEDULE_TASK in [s.kind for s in default_registry.schedules()]


@pytest.mark.parametrize(
    ("cron", "after", "expected"),
    [
        ("*/15 * * * *", datetime(2030, 1, 1, 10, 7, tzinfo=UTC), datetime(2030, 1, 1, 10, 15, tzinfo=UTC)),
        ("0 3 * * *", datetime(2030, 1, 1, 3, 0, tzinfo=UTC), datetime(2030, 1, 2, 3, 0, tzinfo=UTC)),
        ("30 2 * * 1", datetime(2030, 1, 1, tzinfo=UTC), datetime(2030, 1, 7, 2, 30, tzinfo=UTC)),
        ("0 0 1 */3 *", datetime(2030, 2, 1, tzinfo=UTC), datetime(2030, 4, 1, tzinfo=UTC)),
    ],
)
def test_next_run(cron: str, after: datetime, expected: datetime) -> None:
    assert next_run(cron, after) == expected


@pytest.mark.parametrize("cron", ["", "* * * *", "61 * * * *", "* * * * * *", "a b c d e"])
def test_bad_cron_is_refused(cron: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        next_run(cron, datetime(2030, 1, 1, tzinfo=UTC))
    assert caught.value.field == "cron"
