"""Prometheus metrics, rendered from precomputed counts in a few milliseconds at any inventory size.

Inventory gauges (certificates by status, expiring within 7/30/90 days, jobs by state, the
duration of the jobs finished in the last hour, scans) need counts over whole tables; the
``reporting.metrics-snapshot`` task computes them every two minutes and stores them, and
``sslclm_metrics_snapshot_age_seconds`` says how old they are. Violations by severity come live from
the counts the policy evaluator maintains, and agents by status from the agents table (one row
per agent host, so counted on each render: an agent marked offline shows at once). When no snapshot
exists or it is older than ``STALE_AFTER`` (no scheduler is running), a render counts inline and
stores the result. The rendered text is also cached per process for a few seconds.

Labels are small closed sets (status, window, severity, job kind and state): no per-certificate
series. Job durations are a gauge histogram over a sliding window (``JOB_WINDOW``), not a counter:
they describe the recent jobs, and drop as old ones leave the window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from sslclm.agents.models import Agent, AgentStatus
from sslclm.core.platform import Platform
from sslclm.discovery.models import Scan
from sslclm.inventory.models import Certificate
from sslclm.inventory.query import Status, status_condition
from sslclm.jobs.models import Job, JobStatus
from sslclm.policies.models import PolicyViolationCount
from sslclm.reporting.models import ReportSnapshot

CACHE_SECONDS = 5.0
WINDOWS = (7, 30, 90)
SNAPSHOT = "metrics:inventory"
STALE_AFTER = timedelta(minutes=10)
# Jobs finished within this window before the snapshot make up the duration histogram.
JOB_WINDOW = timedelta(hours=1)
# Upper bounds, in seconds, of the duration buckets (a job runs from a second to hours).
JOB_BUCKETS = (1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
FINISHED = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value)


class _Snapshot(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def _duration_seconds(session: Session) -> Any:
    """Seconds from a job's creation to its end, in the database's own date arithmetic."""
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", Job.finished_at - Job.created_at)
    return (func.julianday(Job.finished_at) - func.julianday(Job.created_at)) * 86400.0


def job_durations(session: Session, *, now: datetime) -> list[dict[str, Any]]:
    """Per job kind and final state, the durations of the jobs finished within ``JOB_WINDOW``.

    Aggregated in SQL (a count per bucket, the count and the sum), so no job row is loaded.
    """
    seconds = _duration_seconds(session)
    buckets = [func.sum(case((seconds <= bound, 1), else_=0)) for bound in JOB_BUCKETS]
    rows = session.execute(
        select(Job.kind, Job.status, func.count(), func.sum(seconds), *buckets)
        .where(Job.status.in_(FINISHED), Job.finished_at >= now - JOB_WINDOW, Job.finished_at <= now)
        .group_by(Job.kind, Job.status)
        .order_by(Job.kind, Job.status)
    )
    return [
        {
            "kind": kind,
            "state": state,
            "count": int(count),
            "sum": max(float(total or 0.0), 0.0),
            "buckets": [int(n or 0) for n in within],
        }
        for kind, state, count, total, *within in rows
    ]


def count_gauges(session: Session, *, now: datetime, expiring_days: int) -> dict[str, Any]:
    """The whole-table counts behind the inventory gauges (the slow part; run by the task)."""
    window = timedelta(days=expiring_days)
    live = Certificate.archived_at.is_(None)
    statuses = {
        status.value: session.execute(
            select(func.count()).select_from(Certificate).where(live, status_condition(status, now, window))
        ).scalar_one()
        for status in Status
    }
    expiring = {
        str(days): session.execute(
            select(func.count())
            .select_from(Certificate)
            .where(
                live,
                Certificate.revoked_at.is_(None),
                Certificate.not_after >= now,
                Certificate.not_after < now + timedelta(days=days),
            )
        ).scalar_one()
        for days in WINDOWS
    }
    jobs = {state: n for state, n in session.execute(select(Job.status, func.count()).group_by(Job.status))}
    scans = {
        state: n for state, n in session.execute(select(Scan.status, func.count()).group_by(Scan.status))
    }
    return {
        "certificates": statuses,
        "expiring": expiring,
        "jobs": jobs,
        "job_durations": job_durations(session, now=now),
        "scans": scans,
    }


def refresh_snapshot(session: Session, *, now: datetime, expiring_days: int) -> ReportSnapshot:
    """Counts and stores the gauges (in the caller's transaction)."""
    started = time.perf_counter()
    data = count_gauges(session, now=now, expiring_days=expiring_days)
    duration = int((time.perf_counter() - started) * 1000)
    row = session.get(ReportSnapshot, SNAPSHOT)
    if row is None:
        row = ReportSnapshot(name=SNAPSHOT, data=data, computed_at=now, duration_ms=duration)
        session.add(row)
    else:
        row.data, row.computed_at, row.duration_ms = data, now, duration
    session.flush()
    return row


def _gauge(name: str, doc: str, label: str, values: dict[str, Any]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def _durations(entries: list[dict[str, Any]]) -> GaugeHistogramMetricFamily:
    family = GaugeHistogramMetricFamily(
        "sslclm_job_duration_seconds",
        "Seconds from creation to end of the jobs finished in the hour before the snapshot",
        labels=["kind", "state"],
    )
    for entry in entries:
        bounds = [str(bound) for bound in JOB_BUCKETS] + ["+Inf"]
        family.add_metric(
            [entry["kind"], entry["state"]],
            list(zip(bounds, [*entry["buckets"], entry["count"]], strict=True)),
            gsum_value=entry["sum"],
        )
    return family


def _families(platform: Platform) -> list[Metric]:
    now = platform.clock()
    with platform.sessions() as session:
        row = session.get(ReportSnapshot, SNAPSHOT)
        if row is None or now - row.computed_at > STALE_AFTER:
            row = refresh_snapshot(session, now=now, expiring_days=platform.settings.expiring_days)
            session.commit()
        data, computed_at = row.data, row.computed_at
        violations = {
            severity: int(count or 0)
            for severity, count in session.execute(
                select(PolicyViolationCount.severity, func.sum(PolicyViolationCount.violations)).group_by(
                    PolicyViolationCount.severity
                )
            )
        }
        agents = {status.value: 0 for status in AgentStatus}
        agents.update(
            (status, count)
            for status, count in session.execute(select(Agent.status, func.count()).group_by(Agent.status))
        )
    age = GaugeMetricFamily(
        "sslclm_metrics_snapshot_age_seconds",
        "Age of the inventory counts below (refreshed every two minutes)",
    )
    age.add_metric([], max((now - computed_at).total_seconds(), 0.0))
    return [
        _gauge("sslclm_certificates", "Certificates by lifecycle status", "status", data["certificates"]),
        _gauge(
            "sslclm_certificates_expiring",
            "Live certificates expiring within N days",
            "within_days",
            data["expiring"],
        ),
        _gauge(
            "sslclm_policy_violations",
            "Open (non-exempt) policy violations by severity",
            "severity",
            violations,
        ),
        _gauge("sslclm_jobs", "Jobs by state", "state", data["jobs"]),
        # Snapshots stored before durations were counted lack them until the next refresh.
        _durations(data.get("job_durations", [])),
        _gauge("sslclm_scans", "Discovery scans by status", "status", data["scans"]),
        _gauge("sslclm_agents", "Agents by status (online, offline, revoked)", "status", agents),
        age,
    ]


def render(platform: Platform) -> bytes:
    """The exposition text, without the per-process cache."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(_families(platform)))
    return generate_latest(registry)


class MetricsCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._body: bytes = b""
        self._until = 0.0

    def render(self, platform: Platform) -> bytes:
        with self._lock:
            if time.monotonic() < self._until:
                return self._body
            self._body = render(platform)
            self._until = time.monotonic() + CACHE_SECONDS
            return self._body
