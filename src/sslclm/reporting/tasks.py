"""Periodic recomputation of the stored aggregates (see :mod:`sslclm.reporting.metrics` and
:mod:`sslclm.reporting.snapshots`)."""

from __future__ import annotations

from datetime import timedelta

from sslclm.jobs import Done, StepContext, periodic, task
from sslclm.reporting import snapshots
from sslclm.reporting.metrics import refresh_snapshot

METRICS_SNAPSHOT_TASK = "reporting.metrics-snapshot"
REFRESH_REPORTS_TASK = "reporting.refresh-reports"


# Counting a million certificates takes ~11 s on SQLite (bench/policy.py): every two minutes.
@periodic(every=timedelta(minutes=2))
@task(METRICS_SNAPSHOT_TASK)
def snapshot_metrics(ctx: StepContext) -> Done:
    """Counts certificates by status and expiry window, jobs and scans, for the next scrapes."""
    row = refresh_snapshot(ctx.session, now=ctx.now, expiring_days=ctx.platform.settings.expiring_days)
    return Done({"duration_ms": row.duration_ms})


@periodic(every=timedelta(minutes=2))
@task(REFRESH_REPORTS_TASK)
def refresh_reports(ctx: StepContext) -> Done:
    """Recomputes the stored reports before readers would find them too old."""
    keys = snapshots.refresh_due(ctx.session, now=ctx.now, expiring_days=ctx.platform.settings.expiring_days)
    return Done({"refreshed": keys})
