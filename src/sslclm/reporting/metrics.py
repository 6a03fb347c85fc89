"""Prometheus metrics from a few aggregate queries, cached for a few seconds per process.

Labels are small closed sets (status, window, severity, job state): no per-certificate series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from sslclm.core.platform import Platform
from sslclm.discovery.models import Scan
from sslclm.inventory.models import Certificate
from sslclm.inventory.query import Status, status_condition
from sslclm.jobs.models import Job
from sslclm.policies.models import PolicyViolation

CACHE_SECONDS = 5.0
WINDOWS = (7, 30, 90)


class _Snapshot(Collector):
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self.families


def _families(platform: Platform) -> list[GaugeMetricFamily]:
    now = platform.clock()
    window = timedelta(days=platform.settings.expiring_days)
    live = Certificate.archived_at.is_(None)
    with platform.sessions() as session:
        by_status = GaugeMetricFamily(
            "sslclm_certificates", "Certificates by lifecycle status", labels=["status"]
        )
        for status in Status:
            count = session.execute(
                select(func.count())
                .select_from(Certificate)
                .where(live, status_condition(status, now, window))
            ).scalar_one()
            by_status.add_metric([status.value], count)
        expiring = GaugeMetricFamily(
            "sslclm_certificates_expiring", "Live certificates expiring within N days", labels=["within_days"]
        )
        for days in WINDOWS:
            count = session.execute(
                select(func.count())
                .select_from(Certificate)
                .where(
                    live,
                    Certificate.revoked_at.is_(None),
                    Certificate.not_after >= now,
                    Certificate.not_after < now + timedelta(days=days),
                )
            ).scalar_one()
            expiring.add_metric([str(days)], count)
        violations = GaugeMetricFamily(
            "sslclm_policy_violations", "Open (non-exempt) policy violations by severity", labels=["severity"]
        )
        for severity, count in session.execute(
            select(PolicyViolation.severity, func.count())
            .where(PolicyViolation.exemption_id.is_(None))
            .group_by(PolicyViolation.severity)
        ):
            violations.add_metric([severity], count)
        jobs = GaugeMetricFamily("sslclm_jobs", "Jobs by state", labels=["state"])
        for state, count in session.execute(select(Job.status, func.count()).group_by(Job.status)):
            jobs.add_metric([state], count)
        scans = GaugeMetricFamily("sslclm_scans", "Discovery scans by status", labels=["status"])
        for state, count in session.execute(select(Scan.status, func.count()).group_by(Scan.status)):
            scans.add_metric([state], count)
    return [by_status, expiring, violations, jobs, scans]


class MetricsCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._body: bytes = b""
        self._until = 0.0

    def render(self, platform: Platform) -> bytes:
        with self._lock:
            if time.monotonic() < self._until:
                return self._body
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Snapshot(_families(platform)))
            self._body = generate_latest(registry)
            self._until = time.monotonic() + CACHE_SECONDS
            return self._body
