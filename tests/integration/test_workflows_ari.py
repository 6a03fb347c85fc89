"""ARI in the renewal planner: the ``renewals.ari`` task asks each ARI-capable CA for its suggested
window, stores it on the managed certificate and replans the renewal inside it. Against the HTTPS test
double of an ACME server with ``renewalInfo`` from test_acme_ari (Pebble 2.4 has none)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from sslclm.audit.service import AuditContext
from sslclm.connectors.acme.ari import cert_id
from sslclm.core.clock import as_utc
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.inventory.service import get_certificate
from sslclm.inventory.writer import InventoryWriter, parse_file_bytes
from sslclm.jobs import queue
from sslclm.jobs.models import Job
from sslclm.jobs.registry import default_registry, load_task_modules
from sslclm.jobs.worker import Worker
from sslclm.spi.capabilities import ConnectorKind
from sslclm.workflows import connections, managed, profiles
from sslclm.workflows.managed import enqueue_due_renewals
from sslclm.workflows.models import ManagedCertificate
from tests.integration.test_acme_ari import AriServer, ari  # noqa: F401  (the test double, module-scoped)
from tests.support.certs import NOW, make_ca, make_leaf

CTX = AuditContext(actor="ari-test")


def _adopt(platform: Platform, pem: bytes, profile: str) -> int:
    with session_scope(platform.sessions) as session:
        written = InventoryWriter(platform, source="import", sighting_kind="file").write(
            session, [parse_file_bytes("adopted.pem", pem, None)]
        )
        cert = get_certificate(session, next(iter(written.certificate_ids.values())))
        return managed.adopt(session, CTX, platform, cert, profile_ref=profile).id


def _run_refresh(platform: Platform) -> dict[str, Any]:
    load_task_modules()
    with session_scope(platform.sessions) as session:
        job_id = queue.enqueue(session, "renewals.ari", {}, now=platform.clock()).id
    Worker(platform, concurrency=1, poll_interval=0.05).run_until_idle(timeout=60)
    with platform.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.status == "succeeded", (job.status, job.last_error) if job else None
        return dict(job.result or {})


def _managed(platform: Platform, managed_id: int) -> ManagedCertificate:
    with platform.sessions() as session:
        row = session.get(ManagedCertificate, managed_id)
        assert row is not None
        return row


def test_the_ari_window_drives_the_renewal_time(platform: Platform, ari: AriServer) -> None:  # noqa: F811
    ari.replies.clear()
    with session_scope(platform.sessions) as session:
        for name, type_key, config in (
            ("acme-ari", "acme", {"directory_url": ari.url, "ca_bundle": ari.ca_pem}),
            ("local", "local", {}),
        ):
            connections.create_connection(
                session,
                CTX,
                platform,
                kind=ConnectorKind.CA_GATEWAY.value,
                name=name,
                type_key=type_key,
                config=config,
            )
            profiles.create_profile(
                session,
                CTX,
                platform,
                profiles.ProfileInput(name=name, ca_connection=name, renewal_mode="ari"),
            )
    issuer = make_ca("ARI Issuer")
    answered = make_leaf(issuer, "answered.example.test", days=90).pem
    broken = make_leaf(issuer, "broken.example.test", days=90).pem
    local = make_leaf(issuer, "local.example.test", days=90).pem
    answered_id = _adopt(platform, answered, "acme-ari")
    broken_id = _adopt(platform, broken, "acme-ari")
    local_id = _adopt(platform, local, "local")
    before = {i: _managed(platform, i).renew_at for i in (answered_id, broken_id, local_id)}

    start, end = NOW + dt.timedelta(days=20), NOW + dt.timedelta(days=22)
    window = {"start": start.isoformat(), "end": end.isoformat()}
    ari.replies[cert_id(answered)] = (200, {"suggestedWindow": window}, {"Retry-After": "21600"})
    problem = {"type": "urn:ietf:params:acme:error:serverInternal", "detail": "try later"}
    ari.replies[cert_id(broken)] = (503, problem, {})

    assert _run_refresh(platform) == {"updated": 1, "failed": 1, "unsupported": 1}
    refreshed = _managed(platform, answered_id)
    assert refreshed.ari_window_start is not None and refreshed.ari_window_end is not None
    assert (as_utc(refreshed.ari_window_start), as_utc(refreshed.ari_window_end)) == (start, end)
    assert refreshed.renew_at is not None and start <= as_utc(refreshed.renew_at) <= end
    # What could not be asked keeps the time the planner gave it (a third of the lifetime left).
    assert _managed(platform, broken_id).renew_at == before[broken_id]
    assert _managed(platform, local_id).renew_at == before[local_id]
    assert cert_id(answered) in ari.asked and cert_id(local) not in ari.asked

    # The scheduler's tick renews inside the window, not at the lifetime fraction (about day 60).
    with session_scope(platform.sessions) as session:
        assert enqueue_due_renewals(session, now=end) == 1
        renewal = session.execute(select(Job).where(Job.kind == "certificate.issue")).scalar_one()
        assert renewal.payload["managed_id"] == answered_id


def test_the_refresh_runs_every_six_hours() -> None:
    load_task_modules()
    schedules = {schedule.name: schedule for schedule in default_registry.schedules()}
    assert schedules["renewals.ari"].every == dt.timedelta(hours=6)
    assert schedules["renewals.tick"].every == dt.timedelta(minutes=1)
