"""Periodic tasks, safe to schedule from any number of processes at once.

Every schedule has due times on a fixed grid (``offset + k * every`` since the Unix epoch). To
enqueue a due time, a scheduler first inserts the row (schedule, due time) into ``periodic_ticks``,
whose unique key lets exactly one process succeed; only that process enqueues the job, in the same
transaction. So no leader election is needed: start the scheduler in every ``sslclm serve`` and
``sslclm worker`` you like. A scheduler that was down does not replay the ticks it missed; it
enqueues the latest due time once and carries on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, update

from sslclm.core.db import session_scope
from sslclm.jobs import queue
from sslclm.jobs.models import PeriodicTick
from sslclm.jobs.sql import insert_ignoring_conflict

if TYPE_CHECKING:
    from sslclm.core.platform import Platform

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NAME = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,99}$")
# Ticks older than this (and older than ten periods) are deleted: they only guard against a
# late scheduler enqueueing a due time again, which can only happen close to that time.
KEEP_TICKS = timedelta(days=1)


@dataclass(frozen=True)
class Schedule:
    """Enqueue a job of ``kind`` with ``payload`` (plus ``due_at``) every ``every``."""

    name: str
    kind: str
    every: timedelta
    payload: Mapping[str, Any] = field(default_factory=dict)
    offset: timedelta = timedelta(0)
    priority: int = 0

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise ValueError(f"schedule name {self.name!r} must match {NAME.pattern}")
        if self.every < timedelta(seconds=1):
            raise ValueError("a schedule runs at most once a second")
        if not timedelta(0) <= self.offset < self.every:
            raise ValueError("offset must be between zero and the period")

    def due_at(self, now: datetime) -> datetime:
        """The latest due time at or before ``now``."""
        periods = (now - EPOCH - self.offset) // self.every
        return EPOCH + self.offset + periods * self.every

    def next_after(self, now: datetime) -> datetime:
        return self.due_at(now) + self.every


class Scheduler:
    """Enqueues the due ticks of ``schedules``; call :meth:`tick` as often as you like."""

    def __init__(self, platform: Platform, schedules: Iterable[Schedule]) -> None:
        self.platform = platform
        self.schedules = list(schedules)
        self._next_check: datetime | None = None

    def tick(self, now: datetime | None = None) -> list[int]:
        """Enqueues every schedule whose latest due time no process has enqueued yet.

        Returns the ids of the jobs this call enqueued. Cheap when nothing is due: it then touches
        no database at all.
        """
        now = now or self.platform.clock()
        if not self.schedules or (self._next_check is not None and now < self._next_check):
            return []
        enqueued: list[int] = []
        for schedule in self.schedules:
            try:
                job_id = self._enqueue_due(schedule, schedule.due_at(now), now)
            except Exception as exc:
                # One broken schedule (say, a payload the database refuses) must not stop the rest.
                log.error("schedule %s: could not enqueue: %s", schedule.name, exc)
                continue
            if job_id is not None:
                enqueued.append(job_id)
        self._next_check = min(schedule.next_after(now) for schedule in self.schedules)
        return enqueued

    def seconds_until_due(self, now: datetime | None = None) -> float:
        if not self.schedules:
            return float("inf")
        now = now or self.platform.clock()
        upcoming = min(schedule.next_after(now) for schedule in self.schedules)
        return max((upcoming - now).total_seconds(), 0.0)

    def _enqueue_due(self, schedule: Schedule, due: datetime, now: datetime) -> int | None:
        with session_scope(self.platform.sessions) as session:
            tick_id = insert_ignoring_conflict(
                session,
                PeriodicTick,
                {"schedule": schedule.name, "due_at": due, "created_at": now},
                ("schedule", "due_at"),
                returning=PeriodicTick.id,
            )
            if tick_id is None:
                return None  # another scheduler enqueued this due time
            job = queue.enqueue(
                session,
                schedule.kind,
                {**schedule.payload, "due_at": due.isoformat()},
                dedupe_key=f"periodic:{schedule.name}",
                priority=schedule.priority,
                now=now,
            )
            session.execute(update(PeriodicTick).where(PeriodicTick.id == tick_id).values(job_id=job.id))
            horizon = due - max(KEEP_TICKS, schedule.every * 10)
            session.execute(
                delete(PeriodicTick).where(
                    PeriodicTick.schedule == schedule.name, PeriodicTick.due_at < horizon
                )
            )
            log.info("schedule %s: enqueued job %s for %s", schedule.name, job.id, due.isoformat())
            return job.id
