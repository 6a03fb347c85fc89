"""Scheduled scans: cron expressions (UTC) stored per schedule, turned into scans when due.

The ``discovery.scan-schedules`` periodic task runs every minute (cron's own resolution) and calls
:func:`enqueue_due_scans`. Several schedulers may run it at once: each due time of each schedule is
claimed in the job system's ``periodic_ticks`` table under a unique (schedule, due time) key, and
only the process whose insert wins creates the scan, in the same transaction.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.core.clock import as_utc
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.discovery.models import ScanSchedule
from sslclm.discovery.schemas import ScanOptionsIn, ScanTargetsIn, ScheduleCreate, ScheduleUpdate
from sslclm.discovery.service import create_scan, normalized_targets, scanner_options, target_set
from sslclm.errors import ConflictError, InvalidInputError, NotFoundError
from sslclm.jobs import Done, StepContext, periodic, task
from sslclm.jobs.models import PeriodicTick
from sslclm.jobs.queue import insert_ignoring_conflict

log = logging.getLogger(__name__)

SCHEDULE_TASK = "discovery.scan-schedules"
TICK_PREFIX = "scan-schedule:"
MAX_SCHEDULES_PER_TICK = 500
_CRON_ERRORS = (CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, ValueError, KeyError)


def next_run(cron: str, after: datetime) -> datetime:
    """The first time strictly after ``after`` that ``cron`` (five fields, UTC) matches.

    Raises ``InvalidInputError`` naming the ``cron`` field for an expression croniter refuses.
    """
    text = " ".join(cron.split())
    if len(text.split(" ")) != 5:
        raise InvalidInputError(
            f"invalid cron expression {cron!r}: expected five fields (minute hour day month weekday)",
            field="cron",
        )
    try:
        following = croniter(text, as_utc(after).astimezone(UTC)).get_next(datetime)
    except _CRON_ERRORS as exc:
        raise InvalidInputError(f"invalid cron expression {cron!r}: {exc}", field="cron") from None
    assert isinstance(following, datetime)
    return as_utc(following)


def _validate(targets: dict[str, Any], options: dict[str, Any], now: datetime) -> None:
    target_set(targets, options)
    scanner_options(options, lambda: now)


def create_schedule(
    session: Session, ctx: AuditContext, spec: ScheduleCreate, *, now: datetime
) -> ScanSchedule:
    targets = normalized_targets(spec)
    options = spec.options.model_dump(exclude_none=True)
    _validate(targets, options, now)
    schedule = ScanSchedule(
        name=spec.name.strip(),
        cron=" ".join(spec.cron.split()),
        targets=targets,
        options=options,
        enabled=spec.enabled,
        next_run_at=next_run(spec.cron, now),
        created_by=ctx.actor,
        created_at=now,
        updated_at=now,
    )
    _check_name_free(session, schedule.name, None)
    session.add(schedule)
    session.flush()
    record(
        session,
        ctx,
        "scan-schedule.create",
        "scan_schedule",
        schedule.id,
        {"name": schedule.name, "cron": schedule.cron, "targets": targets["targets"][:20]},
        occurred_at=now,
    )
    return schedule


def _check_name_free(session: Session, name: str, schedule_id: int | None) -> None:
    other = session.execute(select(ScanSchedule.id).where(ScanSchedule.name == name)).scalar()
    if other is not None and other != schedule_id:
        raise ConflictError(f"a scan schedule named '{name}' already exists", field="name")


def get_schedule(session: Session, schedule_id: int) -> ScanSchedule:
    schedule = session.get(ScanSchedule, schedule_id)
    if schedule is None:
        raise NotFoundError(f"no scan schedule {schedule_id}", field="schedule_id")
    return schedule


def list_schedules(session: Session) -> list[ScanSchedule]:
    return list(session.execute(select(ScanSchedule).order_by(ScanSchedule.name)).scalars())


def update_schedule(
    session: Session, ctx: AuditContext, schedule_id: int, change: ScheduleUpdate, *, now: datetime
) -> ScanSchedule:
    schedule = get_schedule(session, schedule_id)
    fields = change.model_dump(exclude_unset=True)
    changed: dict[str, Any] = {}
    if "name" in fields and change.name is not None:
        _check_name_free(session, change.name.strip(), schedule.id)
        schedule.name = change.name.strip()
        changed["name"] = schedule.name
    if change.targets is not None:
        schedule.targets = normalized_targets(change.targets)
        changed["targets"] = schedule.targets["targets"][:20]
    if change.options is not None:
        schedule.options = change.options.model_dump(exclude_none=True)
        changed["options"] = sorted(schedule.options)
    if change.targets is not None or change.options is not None:
        _validate(schedule.targets, schedule.options, now)
    if change.cron is not None:
        schedule.next_run_at = next_run(change.cron, now)
        schedule.cron = " ".join(change.cron.split())
        changed["cron"] = schedule.cron
    if change.enabled is not None:
        schedule.enabled = change.enabled
        changed["enabled"] = change.enabled
        if change.enabled and change.cron is None:
            schedule.next_run_at = next_run(schedule.cron, now)  # no catching up on runs missed while off
    schedule.updated_at = now
    record(session, ctx, "scan-schedule.update", "scan_schedule", schedule.id, changed, occurred_at=now)
    session.flush()
    return schedule


def delete_schedule(session: Session, ctx: AuditContext, schedule_id: int, *, now: datetime) -> None:
    schedule = get_schedule(session, schedule_id)
    record(
        session,
        ctx,
        "scan-schedule.delete",
        "scan_schedule",
        schedule.id,
        {"name": schedule.name},
        occurred_at=now,
    )
    session.delete(schedule)
    session.flush()


def due_schedules(
    session: Session, now: datetime, *, limit: int = MAX_SCHEDULES_PER_TICK
) -> list[ScanSchedule]:
    """Enabled schedules whose next run is at or before ``now``, the most overdue first."""
    return list(
        session.execute(
            select(ScanSchedule)
            .where(ScanSchedule.enabled.is_(True), ScanSchedule.next_run_at <= now)
            .order_by(ScanSchedule.next_run_at, ScanSchedule.id)
            .limit(limit)
        ).scalars()
    )


def enqueue_due_scans(platform: Platform, now: datetime | None = None) -> list[int]:
    """Creates (and enqueues) one scan per due schedule; returns the new scan ids.

    A schedule that was due several times while no scheduler ran gets one scan, not one per missed
    time. Each schedule is handled in its own transaction, so one broken schedule (targets that no
    longer parse) does not hold up the others.
    """
    now = now or platform.clock()
    with session_scope(platform.sessions) as session:
        due = [(s.id, s.next_run_at) for s in due_schedules(session, now)]
    created: list[int] = []
    for schedule_id, due_at in due:
        try:
            with session_scope(platform.sessions) as session:
                scan_id = _run_due(session, schedule_id, due_at, now)
        except (InvalidInputError, IntegrityError) as exc:
            log.error("scan schedule %s: could not start a scan: %s", schedule_id, exc)
            continue
        if scan_id is not None:
            created.append(scan_id)
    return created


def _run_due(session: Session, schedule_id: int, due_at: datetime | None, now: datetime) -> int | None:
    schedule = session.get(ScanSchedule, schedule_id)
    if schedule is None or not schedule.enabled or due_at is None or schedule.next_run_at != due_at:
        return None  # deleted, disabled or already handled since we looked
    try:
        next_at = next_run(schedule.cron, now)
    except InvalidInputError as exc:
        # An expression that no longer parses (say, after a croniter upgrade) must not fail every minute.
        log.error("scan schedule %s: disabled: %s", schedule.name, exc.message)
        schedule.enabled = False
        schedule.next_run_at = None
        return None
    claimed = insert_ignoring_conflict(
        session,
        PeriodicTick,
        {"schedule": f"{TICK_PREFIX}{schedule.id}", "due_at": due_at, "created_at": now},
        ("schedule", "due_at"),
        returning=PeriodicTick.id,
    )
    if claimed is None:
        return None  # another scheduler process took this due time
    scan = create_scan(
        session,
        AuditContext(actor=f"schedule:{schedule.name}"),
        ScanTargetsIn.model_validate(schedule.targets),
        ScanOptionsIn.model_validate(schedule.options),
        now=now,
        name=schedule.name,
        schedule_id=schedule.id,
    )
    schedule.last_run_at = now
    schedule.last_scan_id = scan.id
    schedule.next_run_at = next_at
    session.flush()
    return scan.id


@periodic(every=timedelta(minutes=1))
@task(SCHEDULE_TASK)
def scan_schedules(ctx: StepContext) -> Done:
    """Start the scans whose cron schedule is due."""
    return Done({"scans": enqueue_due_scans(ctx.platform, ctx.now)})
