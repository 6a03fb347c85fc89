"""The daily digest: one message per channel and day instead of one per event.

Rules marked ``digest`` queue their notifications as ``held``. Once a UTC day is over, the sweep
gathers that day's held rows per channel into one pending notification (the digest) and marks
them ``digested`` with the digest's id, in the same transaction: a crash either leaves them all
held or all folded into a digest, never both.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from sslclm.jobs.sql import insert_ignoring_conflict
from sslclm.notifications.models import NotificationLog
from sslclm.spi.notify import Severity

DIGEST_EVENT = "digest"
DIGEST_BATCH = 5000
# Beyond this many lines a digest says how many more there were, rather than become unreadable.
MAX_LINES = 200
SEVERITY_ORDER = (Severity.CRITICAL.value, Severity.WARNING.value, Severity.INFO.value)


def _start_of_day(now: datetime) -> datetime:
    return datetime.combine(now.date(), time.min, tzinfo=now.tzinfo)


def _summary(day: date, rows: list[NotificationLog]) -> tuple[str, str, str, dict[str, Any]]:
    by_event: dict[str, int] = defaultdict(int)
    for row in rows:
        by_event[row.event] += 1
    worst = min((row.severity for row in rows), key=SEVERITY_ORDER.index)
    subject = f"SSL-CLM daily digest for {day:%Y-%m-%d}: {len(rows)} notification(s)"
    counts = ", ".join(f"{event}: {n}" for event, n in sorted(by_event.items()))
    ordered = sorted(rows, key=lambda r: (SEVERITY_ORDER.index(r.severity), r.id))
    lines = [f"{len(rows)} notification(s) on {day:%Y-%m-%d} ({counts}).", ""]
    lines += [f"- [{row.severity}] {row.subject}" for row in ordered[:MAX_LINES]]
    if len(rows) > MAX_LINES:
        lines.append(f"... and {len(rows) - MAX_LINES} more (see the notification log)")
    details = {"day": day.isoformat(), "notifications": len(rows), "by_event": dict(by_event)}
    return subject, "\n".join(lines), worst, details


def build_digests(session: Session, *, now: datetime) -> int:
    """Folds the held notifications of every finished day into one digest per channel; returns how many."""
    held = (
        session.execute(
            select(NotificationLog)
            .where(NotificationLog.status == "held", NotificationLog.created_at < _start_of_day(now))
            .order_by(NotificationLog.id)
            .limit(DIGEST_BATCH)
        )
        .scalars()
        .all()
    )
    groups: dict[tuple[int | None, date], list[NotificationLog]] = defaultdict(list)
    for row in held:
        groups[(row.channel_id, row.created_at.date())].append(row)
    made = 0
    for (channel_id, day), rows in sorted(groups.items(), key=lambda item: (item[0][0] or 0, item[0][1])):
        subject, body, severity, details = _summary(day, rows)
        digest_id = insert_ignoring_conflict(
            session,
            NotificationLog,
            {
                # The first row's id keeps the key unique should stragglers of a past day turn up later.
                "dedupe_key": f"digest:c{channel_id}:{day:%Y%m%d}:{rows[0].id}",
                "rule_id": None,
                "channel_id": channel_id,
                "event": DIGEST_EVENT,
                "subject": subject,
                "body": body,
                "severity": severity,
                "details": details,
                "status": "pending",
                "attempts": 0,
                "created_at": now,
            },
            ("dedupe_key",),
            returning=NotificationLog.id,
        )
        if digest_id is None:
            continue
        session.execute(
            update(NotificationLog)
            .where(NotificationLog.id.in_([row.id for row in rows]))
            .values(status="digested", detail=f"in digest {digest_id}")
        )
        made += 1
    if held and made:
        # Loaded rows are stale after the bulk update; later reads in this session must see it.
        session.expire_all()
    return made
