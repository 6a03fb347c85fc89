"""Renewals in batches at the built-in CA: one job, the same rows and audit events as one by one."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from sslclm.audit.models import AuditEvent
from sslclm.audit.service import verify_chain
from sslclm.core.platform import Platform
from sslclm.inventory.models import Certificate, PrivateKey
from sslclm.jobs.models import Job
from sslclm.jobs.registry import load_task_modules
from sslclm.jobs.worker import Worker
from sslclm.workflows.managed import BATCH_TASK, ISSUE_TASK, enqueue_due_renewals
from sslclm.workflows.models import Issuance, ManagedCertificate
from tests.conftest import ApiUser

API = "/api/v1"


def make_due(platform: Platform, ids: list[int]) -> None:
    with platform.sessions() as session:
        session.execute(
            update(ManagedCertificate)
            .where(ManagedCertificate.id.in_(ids))
            .values(renew_at=platform.clock() - timedelta(minutes=1))
        )
        session.commit()


def run_jobs(platform: Platform) -> None:
    load_task_modules()
    Worker(platform, concurrency=2, poll_interval=0.05).run_until_idle(timeout=120)


@pytest.fixture
def enrolled(client: TestClient, api_users: dict[str, ApiUser], platform: Platform) -> list[int]:
    admin = api_users["admin"].headers
    made = client.post(
        f"{API}/ca-connections", json={"name": "internal", "type": "local", "config": {}}, headers=admin
    )
    assert made.status_code == 201, made.text
    for name, approval in (("web", False), ("guarded", True)):
        profile = client.post(
            f"{API}/profiles",
            json={
                "name": name,
                "ca_connection": "internal",
                "validity_days": 30,
                "allowed_names": ["*.example.com"],
                "approval_required": approval,
            },
            headers=admin,
        )
        assert profile.status_code == 201, profile.text
    ids = []
    for n in range(5):
        created = client.post(
            f"{API}/managed-certificates",
            json={"dns_names": [f"b{n}.example.com"], "profile": "web", "owner": "team-a"},
            headers=api_users["operator"].headers,
        )
        assert created.status_code == 202, created.text
        ids.append(created.json()["id"])
    run_jobs(platform)
    return ids


def test_due_renewals_at_the_built_in_ca_run_as_one_batch_job(
    platform: Platform, enrolled: list[int]
) -> None:
    with platform.sessions() as session:
        before = {
            m.id: m.current_certificate_id
            for m in session.execute(select(ManagedCertificate).where(ManagedCertificate.id.in_(enrolled)))
            .scalars()
            .all()
        }
        issued_events = session.execute(
            select(func.count()).where(AuditEvent.action == "certificate.issued")
        ).scalar_one()
        assert all(before.values())
        make_due(platform, enrolled)
        assert enqueue_due_renewals(session, now=platform.clock()) == 1
        session.commit()
        kinds = session.execute(select(Job.kind).where(Job.status == "queued")).scalars().all()
        assert kinds == [BATCH_TASK]
    run_jobs(platform)
    with platform.sessions() as session:
        job = session.execute(select(Job).where(Job.kind == BATCH_TASK)).scalar_one()
        assert job.status == "succeeded", job.last_error
        assert job.result["renewed"] == 5 and job.result["failed"] == 0
        for managed in session.execute(
            select(ManagedCertificate).where(ManagedCertificate.id.in_(enrolled))
        ).scalars():
            assert managed.status == "active"
            assert managed.current_certificate_id not in (None, before[managed.id])
            assert managed.renew_at is not None and managed.renew_at > platform.clock()
            old = session.get(Certificate, before[managed.id])
            new = session.get(Certificate, managed.current_certificate_id)
            assert old is not None and new is not None
            assert old.superseded_by_id == new.id
            assert new.has_private_key and new.owner == "team-a"
            assert session.execute(
                select(PrivateKey.id).where(PrivateKey.public_key_sha256 == new.public_key_sha256)
            ).scalar_one()
        lineage = session.execute(select(Issuance).where(Issuance.job_id == job.id)).scalars().all()
        assert sorted(i.managed_certificate_id for i in lineage) == sorted(enrolled)
        assert {i.reason for i in lineage} == {"renew"}
        after_events = session.execute(
            select(func.count()).where(AuditEvent.action == "certificate.issued")
        ).scalar_one()
        assert after_events == issued_events + 5
        assert verify_chain(session).ok


def test_renewals_that_need_approval_or_keep_their_key_stay_single_jobs(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, enrolled: list[int]
) -> None:
    with platform.sessions() as session:
        reuse = session.get(ManagedCertificate, enrolled[0])
        assert reuse is not None
        reuse.key_policy = "reuse"
        disabled = session.get(ManagedCertificate, enrolled[1])
        assert disabled is not None
        session.commit()
        make_due(platform, enrolled)
        assert enqueue_due_renewals(session, now=platform.clock()) == 2
        session.commit()
        queued = session.execute(select(Job.kind, Job.payload).where(Job.status == "queued")).all()
        assert sorted(kind for kind, _ in queued) == sorted([BATCH_TASK, ISSUE_TASK])
        batch_payload = next(payload for kind, payload in queued if kind == BATCH_TASK)
        assert sorted(batch_payload["managed_ids"]) == sorted(enrolled[1:])
        # Switched off between the tick and the job: the batch leaves it alone.
        disabled.status = "disabled"
        session.commit()
    run_jobs(platform)
    with platform.sessions() as session:
        job = session.execute(select(Job).where(Job.kind == BATCH_TASK)).scalar_one()
        assert job.status == "succeeded", job.last_error
        assert job.result["renewed"] == 3
        single = session.execute(select(Job).where(Job.kind == ISSUE_TASK, Job.status == "succeeded")).all()
        assert len(single) == 6  # five enrollments and the key-reusing renewal
        assert verify_chain(session).ok


STRICT = """\
name: strict
scope: {kind: all}
checks:
  - check: max-validity
    params: {max_days: 10}
"""


def test_a_renewal_the_policy_now_refuses_fails_on_its_own_with_the_reasons(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, enrolled: list[int]
) -> None:
    admin = api_users["admin"].headers
    assert client.put(f"{API}/policies", content=STRICT, headers=admin).status_code == 201
    make_due(platform, enrolled)
    with platform.sessions() as session:
        assert enqueue_due_renewals(session, now=platform.clock()) == 1
        session.commit()
    run_jobs(platform)
    with platform.sessions() as session:
        batch = session.execute(select(Job).where(Job.kind == BATCH_TASK)).scalar_one()
        assert batch.status == "succeeded" and batch.result["handed_over"] == 5, batch.result
        single = (
            session.execute(select(Job).where(Job.kind == ISSUE_TASK, Job.status == "failed")).scalars().all()
        )
        assert len(single) == 5
        assert all("refused by policy" in (job.last_error or "") for job in single)
        for managed in session.execute(
            select(ManagedCertificate).where(ManagedCertificate.id.in_(enrolled))
        ).scalars():
            assert managed.status == "active"  # the current certificate still serves
            assert "max-validity" in (managed.status_message or "")
