"""Heavy reports served from stored results, recomputed in the background.

A report over a million certificates (a breakdown by owner, a risk roll-up, the expiry forecast)
groups the whole table: seconds of work. The API serves each report from ``report_snapshots`` when
the stored result is younger than ``MAX_AGE`` and otherwise computes it, stores it and serves it;
the ``reporting.refresh-reports`` task recomputes every stored report before it gets that old, so
readers rarely wait. ``?fresh=true`` on a report route computes it live. The snapshot's time is
returned in the ``X-Report-As-Of`` header.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from sslclm.errors import InvalidInputError
from sslclm.reporting import service
from sslclm.reporting.models import ReportSnapshot

MAX_AGE = timedelta(minutes=10)
REFRESH_AFTER = timedelta(minutes=4)
PREFIX = "report:"

Compute = Callable[[Session, datetime, int], Any]


def _risk(by: str) -> Compute:
    return lambda session, now, expiring: service.risk_rollup(session, by)


def _breakdown(by: str) -> Compute:
    return lambda session, now, expiring: service.breakdown(session, by, now=now, expiring_days=expiring)


def _forecast(per: str) -> Compute:
    return lambda session, now, expiring: service.expiry_forecast(session, now=now, per=per)  # type: ignore[arg-type]


def _concentration(ca_id: int) -> Compute:
    return lambda session, now, expiring: service.ca_concentration(session, ca_id)


def compute_for(key: str) -> Compute:
    """The computation behind a snapshot key (``breakdown:owner``, ``risk:team``, ``ca:42`` ...)."""
    kind, _, arg = key.partition(":")
    if kind == "breakdown":
        return _breakdown(arg)
    if kind == "risk":
        return _risk(arg)
    if kind == "forecast" and arg in ("day", "week"):
        return _forecast(arg)
    if kind == "ca" and arg.isdigit():
        return _concentration(int(arg))
    raise InvalidInputError(f"no report '{key}'", field="report")


def store(session: Session, key: str, data: Any, *, now: datetime, duration_ms: int) -> None:
    row = session.get(ReportSnapshot, PREFIX + key)
    if row is None:
        session.add(ReportSnapshot(name=PREFIX + key, data=data, computed_at=now, duration_ms=duration_ms))
    else:
        row.data, row.computed_at, row.duration_ms = data, now, duration_ms
    session.flush()


def compute(session: Session, key: str, *, now: datetime, expiring_days: int) -> Any:
    started = time.perf_counter()
    data = compute_for(key)(session, now, expiring_days)
    store(session, key, data, now=now, duration_ms=int((time.perf_counter() - started) * 1000))
    return data


def serve(
    session: Session, key: str, *, now: datetime, expiring_days: int, fresh: bool = False
) -> tuple[Any, datetime]:
    """The report for ``key`` and when it was computed; stored results younger than ``MAX_AGE``."""
    if not fresh:
        row = session.get(ReportSnapshot, PREFIX + key)
        if row is not None and now - row.computed_at < MAX_AGE:
            return row.data, row.computed_at
    data = compute(session, key, now=now, expiring_days=expiring_days)
    session.commit()
    return data, now


def refresh_due(session: Session, *, now: datetime, expiring_days: int, limit: int = 50) -> list[str]:
    """Recomputes stored reports older than ``REFRESH_AFTER``; returns their keys."""
    names = session.execute(
        select(ReportSnapshot.name)
        .where(ReportSnapshot.name.like(PREFIX + "%"), ReportSnapshot.computed_at < now - REFRESH_AFTER)
        .order_by(ReportSnapshot.computed_at)
        .limit(limit)
    ).scalars()
    done = []
    for name in list(names):
        key = name.removeprefix(PREFIX)
        try:
            compute(session, key, now=now, expiring_days=expiring_days)
        except InvalidInputError:
            # The report can no longer be made (say, its CA certificate was removed): drop it.
            row = session.get(ReportSnapshot, name)
            if row is not None:
                session.delete(row)
            continue
        done.append(key)
    return done
