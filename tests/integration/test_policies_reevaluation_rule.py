"""One rule for what a policy or exemption change re-evaluates, through the API, the CLI and the
web console: only the certificates it can change, in the request when they are few, in a job when
they are many; and the maintained counts stay equal to a recount throughout."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, text

from conftest import ApiUser
from sslclm.core.db import create_db_engine, session_scope
from sslclm.core.migrate import alembic_config
from sslclm.core.platform import Platform
from sslclm.jobs.models import Job
from sslclm.jobs.registry import load_task_modules
from sslclm.jobs.worker import Worker
from sslclm.policies import incremental
from sslclm.policies import service as policy_service
from sslclm.policies.engine import rebuild_counts
from sslclm.policies.models import CertificateRisk, PolicyViolation, PolicyViolationCount
from support.certs import Issued, make_ca, make_leaf

API = "/api/v1"
EXPIRY = """\
name: expiry
scope: {kind: all}
checks:
  - check: expiry
    params: {warning_days: 30, critical_days: 7}
"""
DOMAINS = """\
name: domains
scope: {kind: all}
checks:
  - check: domains
    params: {allowed: [".ok.example"]}
"""
IN_A_YEAR = (datetime.now(UTC) + timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _import(client: TestClient, user: ApiUser, issued: Issued, name: str) -> int:
    response = client.post(
        f"{API}/certificates/import", files=[("files", (name, issued.pem))], headers=user.headers
    )
    assert response.status_code in (200, 201), response.text
    found = client.get(f"{API}/certificates?q={issued.fingerprint}", headers=user.headers).json()
    return int(found["items"][0]["id"])


def _put(client: TestClient, admin: ApiUser, text: str) -> dict[str, Any]:
    response = client.put(f"{API}/policies", content=text, headers=admin.headers)
    assert response.status_code in (200, 201), response.text
    evaluation: dict[str, Any] = response.json()["evaluation"]
    return evaluation


def _exempt(client: TestClient, admin: ApiUser, **scope: Any) -> dict[str, Any]:
    body = {"justification": "accepted for the migration", "approver": "ciso", "expires_at": IN_A_YEAR}
    response = client.post(f"{API}/policies/exemptions", json={**body, **scope}, headers=admin.headers)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def _open(platform: Platform) -> dict[int, set[str]]:
    """Non-exempt violations per certificate."""
    with platform.sessions() as session:
        found: dict[int, set[str]] = {}
        for cid, check in session.execute(
            select(PolicyViolation.certificate_id, PolicyViolation.check).where(
                PolicyViolation.exemption_id.is_(None)
            )
        ):
            found.setdefault(cid, set()).add(check)
        return found


def _counts(platform: Platform) -> dict[tuple[str, str, str], tuple[int, int]]:
    with platform.sessions() as session:
        return {
            (row.policy, row.check, row.severity): (row.violations, row.exempted)
            for row in session.execute(select(PolicyViolationCount)).scalars()
            if row.violations or row.exempted
        }


def _assert_counts_exact(platform: Platform) -> None:
    maintained = _counts(platform)
    with platform.sessions() as session:
        rebuild_counts(session)
        session.flush()
        recounted = {
            (row.policy, row.check, row.severity): (row.violations, row.exempted)
            for row in session.execute(select(PolicyViolationCount)).scalars()
            if row.violations or row.exempted
        }
        session.rollback()
    assert maintained == recounted


def _scores(platform: Platform) -> dict[int, int]:
    with platform.sessions() as session:
        return {
            cid: score
            for cid, score in session.execute(select(CertificateRisk.certificate_id, CertificateRisk.score))
        }


def _inventory(client: TestClient, admin: ApiUser) -> dict[str, int]:
    ca = make_ca("Rule Root")
    return {
        "soon": _import(client, admin, make_leaf(ca, "soon.ok.example", days=5), "soon.pem"),
        "both": _import(client, admin, make_leaf(ca, "both.bad.example", days=5), "both.pem"),
        "name": _import(client, admin, make_leaf(ca, "name.bad.example", days=200), "name.pem"),
        "clean": _import(client, admin, make_leaf(ca, "clean.ok.example", days=200), "clean.pem"),
    }


def _run_jobs(platform: Platform) -> None:
    load_task_modules()
    Worker(platform, concurrency=1, poll_interval=0.05).run_until_idle(timeout=60)


def test_an_exemption_re_evaluates_only_the_certificates_it_covers(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    admin = api_users["admin"]
    _put(client, admin, EXPIRY)
    _put(client, admin, DOMAINS)
    ids = _inventory(client, admin)
    assert _open(platform) == {
        ids["soon"]: {"expiry"},
        ids["both"]: {"expiry", "domains"},
        ids["name"]: {"domains"},
    }
    before = _scores(platform)

    # Every "expiry" violation: two certificates, not the four of the inventory.
    granted = _exempt(client, admin, check="expiry")
    assert granted["evaluation"]["certificates"] == 2
    assert _open(platform) == {ids["both"]: {"domains"}, ids["name"]: {"domains"}}
    after = _scores(platform)
    assert after[ids["soon"]] < before[ids["soon"]] and after[ids["name"]] == before[ids["name"]]
    _assert_counts_exact(platform)

    # One certificate under one policy set: that certificate only.
    single = _exempt(client, admin, certificate_id=ids["both"], policy="domains")
    assert single["evaluation"]["certificates"] == 1
    assert _open(platform) == {ids["name"]: {"domains"}}
    _assert_counts_exact(platform)

    # Withdrawn: what it covered is open again, where no other exemption covers it.
    withdrawn = client.delete(f"{API}/policies/exemptions/{granted['id']}", headers=admin.headers)
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["evaluation"]["certificates"] == 2
    assert _open(platform) == {
        ids["soon"]: {"expiry"},
        ids["both"]: {"expiry"},
        ids["name"]: {"domains"},
    }
    assert _scores(platform)[ids["soon"]] == before[ids["soon"]]
    _assert_counts_exact(platform)


def test_many_covered_certificates_are_left_to_a_job(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = api_users["admin"]
    _put(client, admin, EXPIRY)
    ids = _inventory(client, admin)
    monkeypatch.setattr(policy_service, "SYNC_EVALUATION_LIMIT", 1)  # "many" = more than one here
    granted = _exempt(client, admin, check="expiry")
    job_id = granted["evaluation"]["queued_job_id"]
    assert _open(platform) == {ids["soon"]: {"expiry"}, ids["both"]: {"expiry"}}  # not yet
    _run_jobs(platform)
    with platform.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "succeeded", job and job.last_error
        assert job.result == {"mode": "covered", "certificates": 2}
    assert _open(platform) == {}
    _assert_counts_exact(platform)

    withdrawn = client.delete(f"{API}/policies/exemptions/{granted['id']}", headers=admin.headers)
    assert "queued_job_id" in withdrawn.json()["evaluation"]
    # Released at once (counts included); the job brings the risk scores along.
    assert _open(platform) == {ids["soon"]: {"expiry"}, ids["both"]: {"expiry"}}
    _assert_counts_exact(platform)
    exempted_scores = _scores(platform)
    _run_jobs(platform)
    assert _scores(platform)[ids["soon"]] > exempted_scores[ids["soon"]]


def test_deleting_a_policy_set_re_evaluates_what_it_flagged(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = api_users["admin"]
    _put(client, admin, EXPIRY)
    _put(client, admin, DOMAINS)
    ids = _inventory(client, admin)
    before = _scores(platform)
    deleted = client.delete(f"{API}/policies/domains", headers=admin.headers)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["evaluation"]["certificates"] == 2  # "both" and "name"
    assert _open(platform) == {ids["soon"]: {"expiry"}, ids["both"]: {"expiry"}}
    assert _scores(platform)[ids["name"]] < before[ids["name"]]
    _assert_counts_exact(platform)

    # The last set gone, the built-in baseline applies to everything: the full rule.
    monkeypatch.setattr(policy_service, "SYNC_EVALUATION_LIMIT", 1)
    last = client.delete(f"{API}/policies/expiry", headers=admin.headers)
    assert "queued_job_id" in last.json()["evaluation"]
    _run_jobs(platform)
    with platform.sessions() as session:
        policies = set(session.execute(select(PolicyViolation.policy)).scalars())
    assert policies <= {"baseline"}
    _assert_counts_exact(platform)


def test_a_policy_change_during_a_full_walk_starts_it_over(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = api_users["admin"]
    ids = _inventory(client, admin)
    monkeypatch.setattr(policy_service, "SYNC_EVALUATION_LIMIT", 1)
    job_id = _put(client, admin, EXPIRY)["queued_job_id"]
    with session_scope(platform.sessions) as session:
        # The walk as it stands after its first two certificates, evaluated with "expiry" alone.
        job = session.get(Job, job_id)
        changed = incremental.clock(session, incremental.POLICIES_CLOCK)
        assert job is not None and changed is not None
        job.step = "walk"
        job.state = {
            "after_id": ids["both"],
            "certificates": 2,
            "started": platform.clock().isoformat(),
            "policies_changed_at": changed.isoformat(),
        }
    # One full walk at a time: the change gets the same job, which must not keep what it did.
    assert _put(client, admin, DOMAINS)["queued_job_id"] == job_id
    _run_jobs(platform)
    assert _open(platform) == {
        ids["soon"]: {"expiry"},
        ids["both"]: {"expiry", "domains"},
        ids["name"]: {"domains"},
    }
    _assert_counts_exact(platform)


def test_the_web_console_forms_follow_the_same_rule(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_web_pages import login

    _inventory(client, api_users["admin"])
    monkeypatch.setattr(policy_service, "SYNC_EVALUATION_LIMIT", 1)
    csrf = login(client, "admin-user")
    created = client.post("/ui/policies/new", data={"csrf_token": csrf, "document": EXPIRY})
    assert created.status_code == 200, created.text[-400:]
    granted = client.post(
        "/ui/policies/exemptions",
        data={
            "csrf_token": csrf,
            "check": "expiry",
            "justification": "accepted for the migration",
            "approver": "security-lead",
            "expires_on": "2099-12-31",
        },
    )
    assert granted.status_code == 200, granted.text[-400:]
    with platform.sessions() as session:
        payloads = [job.payload for job in session.execute(select(Job).order_by(Job.id)).scalars()]
    assert {"full": True} in payloads
    assert {"covered": {"certificate_id": None, "policy": None, "check": "expiry"}} in payloads
    _run_jobs(platform)
    assert all("expiry" not in checks for checks in _open(platform).values())
    _assert_counts_exact(platform)


def _index_definitions(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        if engine.dialect.name == "postgresql":
            rows = connection.execute(
                text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'policy_violations'")
            )
        else:
            rows = connection.execute(
                text("SELECT name, sql FROM sqlite_master WHERE tbl_name = :t AND sql IS NOT NULL"),
                {"t": "policy_violations"},
            )
        return {name: " ".join(str(sql).split()) for name, sql in rows}


def _migrate(engine: Engine, revision: str, *, down: bool = False) -> None:
    with engine.begin() as connection:
        config = alembic_config(engine)
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def test_the_migration_makes_two_indexes_partial_and_downgrades(empty_database_url: str) -> None:
    engine = create_db_engine(empty_database_url)
    try:
        _migrate(engine, "0015")
        partial = _index_definitions(engine)
        assert "WHERE" in partial["ix_policy_violations_exemption_id"]
        assert "exemption_id IS NOT NULL" in partial["ix_policy_violations_exemption_id"]
        assert "severity_rank >= 3" in partial["ix_policy_violations_severity_id"]
        assert "WHERE" not in partial["ix_policy_violations_check_id"]
        _migrate(engine, "0014", down=True)
        full = _index_definitions(engine)
        assert "WHERE" not in full["ix_policy_violations_exemption_id"]
        assert "WHERE" not in full["ix_policy_violations_severity_id"]
        _migrate(engine, "0015")
    finally:
        engine.dispose()
