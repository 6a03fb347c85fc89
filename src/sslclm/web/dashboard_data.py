"""The dashboard's figures, each from an index or a maintained counter, never a scan of every certificate.

With a million certificates a ``count(*)`` per status reads the whole table; instead:
- the live total comes from ``issuer_certificate_counts`` (kept exact by triggers);
- expiry buckets are range counts on the (issuer, archived, expiry) index, one seek per issuer;
- revoked and superseded certificates are counted among the platform's issuances (small table);
- violations by severity come from the evaluator's ``policy_violation_counts``;
- agents by status are grouped in the database (one row per host, far fewer than certificates).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from sslclm.agents.models import Agent
from sslclm.inventory.models import Certificate, IssuerCertificateCount
from sslclm.jobs.models import Job, JobStatus
from sslclm.policies.models import CertificateRisk, PolicyViolationCount
from sslclm.workflows.models import Issuance, ManagedCertificate

WINDOWS = (7, 30, 90)
SEVERITY_ORDER = ("critical", "high", "medium", "low", "info")


@dataclass
class Dashboard:
    live: int
    expired: int
    # Certificates expiring within each window (cumulative: the 30-day figure includes the 7-day one).
    expiring: dict[int, int]
    later: int
    revoked_issued: int
    superseded_issued: int
    managed_by_status: list[tuple[str, int]]
    violations_by_severity: list[tuple[str, int]]
    top_risks: list[dict[str, Any]] = field(default_factory=list)
    upcoming_renewals: list[ManagedCertificate] = field(default_factory=list)
    recent_jobs: list[Job] = field(default_factory=list)
    recent_failures: list[Job] = field(default_factory=list)
    job_counts: dict[str, int] = field(default_factory=dict)
    agent_counts: dict[str, int] = field(default_factory=dict)


def _expiry_counts(session: Session, now: datetime) -> tuple[int, dict[int, int]]:
    issuer_ids = list(
        session.execute(
            select(IssuerCertificateCount.issuer_id).where(IssuerCertificateCount.live > 0)
        ).scalars()
    )
    if not issuer_ids:
        return 0, dict.fromkeys(WINDOWS, 0)
    # One bare count per disjoint range (expired, then up to 7, 30, 90 days): each is a walk of the
    # covering index and nothing else. A single pass summing CASE expressions over the whole
    # 90-day range reads the same entries but costs about five times as much per entry.
    edges = [now, *(now + timedelta(days=d) for d in WINDOWS)]
    ranges: list[tuple[datetime | None, datetime]] = [(None, now), *itertools.pairwise(edges)]
    connection = session.connection()
    counts = []
    for low, high in ranges:
        conditions = [
            Certificate.issuer_id.in_(issuer_ids),
            Certificate.archived_at.is_(None),
            Certificate.not_after < high,
        ]
        if low is not None:
            conditions.append(Certificate.not_after >= low)
        stmt = select(func.count()).select_from(Certificate).where(*conditions)
        counts.append(int(connection.execute(stmt).scalar_one()))
    within = itertools.accumulate(counts[1:])
    return counts[0], dict(zip(WINDOWS, within, strict=True))


def _issued_lifecycle(session: Session) -> tuple[int, int]:
    issued = select(Issuance.certificate_id).distinct().subquery()
    row = session.execute(
        select(
            func.sum(case((Certificate.revoked_at.is_not(None), 1), else_=0)),
            func.sum(
                case(
                    (Certificate.revoked_at.is_(None) & Certificate.superseded_by_id.is_not(None), 1),
                    else_=0,
                )
            ),
        ).join(issued, issued.c.certificate_id == Certificate.id)
    ).one()
    return int(row[0] or 0), int(row[1] or 0)


def load_dashboard(session: Session, *, now: datetime) -> Dashboard:
    live = int(session.execute(select(func.coalesce(func.sum(IssuerCertificateCount.live), 0))).scalar_one())
    expired, expiring = _expiry_counts(session, now)
    revoked, superseded = _issued_lifecycle(session)
    managed = session.execute(
        select(ManagedCertificate.status, func.count()).group_by(ManagedCertificate.status)
    ).all()
    severities: dict[str, int] = {}
    for severity, count in session.execute(
        select(PolicyViolationCount.severity, func.sum(PolicyViolationCount.violations)).group_by(
            PolicyViolationCount.severity
        )
    ):
        severities[severity] = int(count or 0)
    ordered = [(s, severities.pop(s)) for s in SEVERITY_ORDER if s in severities]
    ordered += sorted(severities.items())
    risks = [
        dict(row._mapping)
        for row in session.execute(
            select(CertificateRisk.certificate_id, CertificateRisk.score, Certificate.common_name)
            .join(Certificate, Certificate.id == CertificateRisk.certificate_id)
            .order_by(CertificateRisk.score.desc(), CertificateRisk.certificate_id)
            .limit(5)
        )
    ]
    renewals = list(
        session.execute(
            select(ManagedCertificate)
            .where(ManagedCertificate.auto_renew.is_(True), ManagedCertificate.renew_at.is_not(None))
            .order_by(ManagedCertificate.renew_at, ManagedCertificate.id)
            .limit(8)
        ).scalars()
    )
    recent = list(session.execute(select(Job).order_by(Job.id.desc()).limit(8)).scalars())
    failures = list(
        session.execute(
            select(Job).where(Job.status == JobStatus.FAILED.value).order_by(Job.id.desc()).limit(5)
        ).scalars()
    )
    # Active jobs are few (the partial index keeps them cheap); finished ones are not counted.
    active = {
        status: int(count)
        for status, count in session.execute(
            select(Job.status, func.count())
            .where(
                Job.status.in_([s.value for s in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.WAITING)])
            )
            .group_by(Job.status)
        )
    }
    agents = {
        status: int(count)
        for status, count in session.execute(select(Agent.status, func.count()).group_by(Agent.status))
    }
    return Dashboard(
        live=live,
        expired=expired,
        expiring=expiring,
        later=max(live - expired - expiring[max(WINDOWS)], 0),
        revoked_issued=revoked,
        superseded_issued=superseded,
        managed_by_status=sorted(((s, int(c)) for s, c in managed), key=lambda item: -item[1]),
        violations_by_severity=ordered,
        top_risks=risks,
        upcoming_renewals=renewals,
        recent_jobs=recent,
        recent_failures=failures,
        job_counts=active,
        agent_counts=agents,
    )
