"""The storage boundary of the job system: every read and write of job rows goes through here.

Every function works inside the caller's session and transaction (the caller commits), so a
service can create a row and enqueue the job that works on it atomically.

Exactly-once rests on two rules:

- **Claiming** marks a batch of ready jobs ``running`` under a lease in one statement. On
  PostgreSQL the candidates are picked with ``FOR UPDATE SKIP LOCKED``, so concurrent workers take
  disjoint batches without waiting for each other; on SQLite the single ``UPDATE`` runs under the
  database's one write lock, which serialises claims just as well.
- **Every later change is a compare-and-set** on the lease: ``WHERE id = :id AND lease_owner =
  :token AND status = 'running'``. Each claim batch has its own token, so a worker that stalled
  past its lease (and whose job another worker took over) cannot write any more: its step's
  transaction is refused and rolled back.

Times (``run_after``, lease expiry) come from the workers' clocks, so hosts running workers keep
their clocks in sync (NTP); a skew shortens or lengthens leases by that much.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Row, case, delete, func, literal, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from sslclm.errors import ConflictError, InvalidInputError, NotFoundError, SslClmError
from sslclm.jobs.models import (
    ACTIVE_STATUSES,
    ACTIVE_WHERE,
    FINISHED_STATUSES,
    RUNNING_WHERE,
    Job,
    JobEvent,
    JobStatus,
)
from sslclm.jobs.sql import claim_statement, event_insert, held_update, insert_jobs, locked_ids
from sslclm.jobs.sql import insert_ignoring_conflict as insert_ignoring_conflict
from sslclm.jobs.steps import MAX_MESSAGE, Done, Next, Outcome, Wait

FIRST_STEP = "start"
# The hot path (a step's completion) also runs on a bare connection when the step opened no session.
Executor = Session | Connection
MAX_ERROR = 1000
_ACTIVE = tuple(status.value for status in ACTIVE_STATUSES)
_RUNNING = JobStatus.RUNNING.value
_FINISHED = tuple(status.value for status in FINISHED_STATUSES)


class LeaseLostError(SslClmError):
    """The job's lease was taken over by another worker; this worker's result is discarded."""

    http_status = 409
    code = "lease-lost"


@dataclass(slots=True)
class ClaimedJob:
    """A job a worker holds under ``lease_owner`` (the claim token)."""

    id: int
    kind: str
    step: str
    payload: dict[str, Any]
    state: dict[str, Any]
    attempts: int
    max_attempts: int | None
    target: str | None
    cancel_requested: bool
    lease_owner: str


def error_line(exc: BaseException) -> str:
    """One line naming the error, for ``last_error`` and the job's history."""
    if isinstance(exc, SslClmError):
        text = f"{exc.code}: {exc.message}"
    else:
        detail = str(exc).strip()
        text = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first[:MAX_ERROR]


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job to enqueue with :func:`enqueue_many`."""

    kind: str
    payload: Mapping[str, Any] | None = None
    dedupe_key: str | None = None
    priority: int = 0
    run_after: datetime | None = None
    max_attempts: int | None = None
    target: str | None = None


def _row(spec: JobSpec, now: datetime) -> dict[str, Any]:
    if not spec.kind or len(spec.kind) > 100:
        raise InvalidInputError("a job kind is 1 to 100 characters", field="kind")
    if spec.max_attempts is not None and spec.max_attempts < 1:
        raise InvalidInputError("max_attempts must be at least 1", field="max_attempts")
    return {
        "kind": spec.kind,
        "payload": dict(spec.payload or {}),
        "status": JobStatus.QUEUED.value,
        "step": FIRST_STEP,
        "state": {},
        "attempts": 0,
        "max_attempts": spec.max_attempts,
        "priority": spec.priority,
        "run_after": spec.run_after or now,
        "cancel_requested": False,
        "dedupe_key": spec.dedupe_key,
        "target": spec.target,
        "created_at": now,
        "updated_at": now,
    }


def active_job_for_key(session: Session, dedupe_key: str) -> Job | None:
    return session.execute(
        select(Job).where(Job.dedupe_key == dedupe_key, Job.status.in_(_ACTIVE))
    ).scalar_one_or_none()


def enqueue(
    session: Session,
    kind: str,
    payload: Mapping[str, Any] | None = None,
    *,
    now: datetime,
    dedupe_key: str | None = None,
    priority: int = 0,
    run_after: datetime | None = None,
    max_attempts: int | None = None,
    target: str | None = None,
) -> Job:
    """Adds a job in the caller's transaction and returns it.

    ``payload`` is JSON and is shown in the API: put ids in it, never secrets. With a
    ``dedupe_key``, while a job with that key is queued, running or waiting, enqueueing again
    returns that job instead of adding another. ``max_attempts`` None lets the task's retry
    strategy decide.
    """
    spec = JobSpec(kind, payload, dedupe_key, priority, run_after, max_attempts, target)
    values = _row(spec, now)
    if dedupe_key is None:
        job = Job(**values)
        session.add(job)
        session.flush()
        return job
    # A conflicting job may finish between our insert and our read: then insert again.
    for _ in range(5):
        new_id = insert_ignoring_conflict(
            session,
            Job,
            values,
            ("dedupe_key",),
            returning=Job.id,
            where=ACTIVE_WHERE,
        )
        found = session.get(Job, new_id) if new_id is not None else active_job_for_key(session, dedupe_key)
        if found is not None:
            return found
    raise ConflictError(f"could not enqueue job with key '{dedupe_key}'", field="dedupe_key")


def enqueue_many(session: Session, specs: Iterable[JobSpec], *, now: datetime) -> int:
    """Adds many jobs in one statement; jobs whose dedupe key is active are skipped.

    Returns how many were added. For planners that enqueue thousands of renewals at once.
    """
    return insert_jobs(session, [_row(spec, now) for spec in specs])


def claim(
    session: Session,
    *,
    owner: str,
    kinds: Sequence[str],
    limit: int,
    lease: timedelta,
    now: datetime,
) -> list[ClaimedJob]:
    """Leases up to ``limit`` ready jobs of ``kinds`` to ``owner``, highest priority and oldest first."""
    if limit < 1 or not kinds:
        return []
    params = {
        "now": now,
        "kinds": list(kinds),
        "limit": limit,
        "owner": owner,
        "expires": now + lease,
        "updated": now,
    }
    statement = claim_statement(session.get_bind().dialect.name)
    # RETURNING comes in no particular order: hand the batch out highest priority, oldest first.
    rows = sorted(session.execute(statement, params), key=lambda row: (-row.priority, row.id))
    return [
        ClaimedJob(
            id=row.id,
            kind=row.kind,
            step=row.step,
            payload=row.payload or {},
            state=row.state or {},
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            target=row.target,
            cancel_requested=row.cancel_requested,
            lease_owner=owner,
        )
        for row in rows
    ]


def heartbeat(session: Session, held: Mapping[int, str], *, lease: timedelta, now: datetime) -> set[int]:
    """Extends the leases of ``held`` (job id -> claim token); returns the ids still held."""
    if not held:
        return set()
    statement = (
        update(Job)
        .where(
            Job.id.in_(list(held)),
            Job.lease_owner.in_(sorted(set(held.values()))),
            Job.status == _RUNNING,
        )
        .values(lease_expires_at=now + lease)
        .returning(Job.id, Job.lease_owner)
        .execution_options(synchronize_session=False)
    )
    return {row.id for row in session.execute(statement) if held.get(row.id) == row.lease_owner}


def _held(job: ClaimedJob) -> ColumnElement[bool]:
    return (Job.id == job.id) & (Job.lease_owner == job.lease_owner) & (Job.status == _RUNNING)


def _update_held(session: Executor, job: ClaimedJob, values: Mapping[str, Any]) -> Row[Any] | None:
    statement = held_update(tuple(sorted(values)))
    return session.execute(statement, {**values, "_id": job.id, "_owner": job.lease_owner}).first()


def add_events(
    session: Executor, job_id: int, events: Iterable[tuple[str | None, str]], now: datetime
) -> None:
    add_events_many(session, ((job_id, step, message) for step, message in events), now)


def add_events_many(session: Executor, events: Iterable[tuple[int, str | None, str]], now: datetime) -> None:
    rows = [
        {"job_id": job_id, "occurred_at": now, "step": step, "message": message[:MAX_MESSAGE]}
        for job_id, step, message in events
    ]
    if rows:
        session.execute(event_insert(), rows)


def _cancel_held(session: Executor, job: ClaimedJob, step: str, now: datetime) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(status=JobStatus.CANCELLED.value, finished_at=now, run_after=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    add_events(session, job.id, [(step, "cancelled on request")], now)


@dataclass(frozen=True, slots=True)
class Transition:
    """Where a job stands after a step's outcome was persisted."""

    status: str
    step: str
    state: dict[str, Any]
    attempts: int


def finish_step(
    session: Executor,
    job: ClaimedJob,
    outcome: Outcome,
    *,
    events: Sequence[tuple[str | None, str]] = (),
    now: datetime,
) -> Transition:
    """Persists what a step returned, in the step's own transaction.

    Raises :class:`LeaseLostError` when the job is no longer held under this claim: the caller
    must roll back. ``job`` itself is left as it was until the caller has committed.
    """
    lines = list(events)
    values: dict[str, Any] = {"updated_at": now}
    next_step, state, attempts = job.step, job.state, job.attempts
    if outcome is None or isinstance(outcome, Done):
        values.update(
            status=JobStatus.SUCCEEDED.value,
            result=dict(outcome.result or {}) if outcome is not None else {},
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
            run_after=None,
            last_error=None,
        )
        if outcome is not None and outcome.message:
            lines.append((job.step, outcome.message))
    elif isinstance(outcome, Next):
        # The next step starts as its first try, inside the same lease.
        next_step, attempts = outcome.step, 1
        values.update(step=next_step, attempts=attempts, last_error=None)
        if outcome.message:
            lines.append((job.step, outcome.message))
    elif isinstance(outcome, Wait):
        next_step, attempts = outcome.step or job.step, 0
        wake = outcome.until or (now + outcome.delay if outcome.delay is not None else None)
        values.update(
            status=JobStatus.WAITING.value,
            step=next_step,
            attempts=attempts,
            run_after=wake,
            lease_owner=None,
            lease_expires_at=None,
            last_error=None,
        )
        until = f" until {wake.isoformat(timespec='seconds')}" if wake else " until resumed"
        lines.append((job.step, f"waiting{until}: {outcome.reason}"))
    else:
        raise InvalidInputError(
            f"step '{job.step}' of task '{job.kind}' returned {type(outcome).__name__}, "
            "not Next, Done, Wait or None"
        )
    if isinstance(outcome, (Next, Wait)) and outcome.state:
        state = {**job.state, **outcome.state}
        values["state"] = state
    updated = _update_held(session, job, values)
    if updated is None:
        raise LeaseLostError(f"job {job.id}: lease {job.lease_owner} was taken over")
    add_events(session, job.id, lines, now)
    status = str(values.get("status", _RUNNING))
    if updated.cancel_requested and status in (_RUNNING, JobStatus.WAITING.value):
        _cancel_held(session, job, next_step, now)
        status = JobStatus.CANCELLED.value
    return Transition(status, next_step, state, attempts)


def fail_step(
    session: Session,
    job: ClaimedJob,
    error: str,
    *,
    retry_in: timedelta | None,
    now: datetime,
    note: str = "",
) -> str:
    """Records a failed try: queued again after ``retry_in``, or failed for good when it is None."""
    if retry_in is not None:
        values: dict[str, Any] = {"status": JobStatus.QUEUED.value, "run_after": now + retry_in}
        line = f"attempt {job.attempts} failed: {error}; retrying in {retry_in.total_seconds():.0f}s"
    else:
        values = {"status": JobStatus.FAILED.value, "finished_at": now, "run_after": None}
        line = f"failed ({note}): {error}" if note else f"failed: {error}"
    values.update(lease_owner=None, lease_expires_at=None, last_error=error, updated_at=now)
    updated = _update_held(session, job, values)
    if updated is None:
        raise LeaseLostError(f"job {job.id}: lease {job.lease_owner} was taken over")
    add_events(session, job.id, [(job.step, line)], now)
    if updated.cancel_requested and retry_in is not None:
        _cancel_held(session, job, job.step, now)
        return JobStatus.CANCELLED.value
    return str(values["status"])


def release(session: Session, jobs: Sequence[ClaimedJob], *, now: datetime) -> int:
    """Hands held jobs back to the queue untouched (a worker shutting down); the try is not counted."""
    if not jobs:
        return 0
    statement = (
        update(Job)
        .where(
            Job.id.in_([job.id for job in jobs]),
            Job.lease_owner.in_(sorted({job.lease_owner for job in jobs})),
            Job.status == _RUNNING,
        )
        .values(
            status=JobStatus.QUEUED.value,
            lease_owner=None,
            lease_expires_at=None,
            attempts=case((Job.attempts > 0, Job.attempts - 1), else_=0),
            run_after=now,
            updated_at=now,
        )
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    )
    ids = list(session.execute(statement).scalars())
    add_events_many(session, [(job_id, None, "released by a worker shutting down") for job_id in ids], now)
    return len(ids)


def reap_expired(session: Session, *, now: datetime, limit: int = 500) -> list[int]:
    """Requeues jobs whose worker stopped renewing its lease (it died or hung).

    The interrupted try counts as an attempt: a job that kills every worker that runs it is
    failed once its attempts are used up, instead of taking the whole fleet down in turn.
    """
    candidates = (
        select(Job.id)
        .where(RUNNING_WHERE, Job.lease_expires_at < now)
        .order_by(Job.lease_expires_at)
        .limit(limit)
    )
    cancelled = Job.cancel_requested.is_(True)
    message = (
        literal("lease of ")
        + func.coalesce(Job.lease_owner, "?")
        + literal(" expired during step ")
        + Job.step
        + literal(" (worker stopped or stalled)")
    )
    statement = (
        update(Job)
        .where(locked_ids(session.get_bind().dialect.name, Job.id, candidates))
        .values(
            status=case((cancelled, JobStatus.CANCELLED.value), else_=JobStatus.QUEUED.value),
            finished_at=case((cancelled, now), else_=None),
            run_after=case((cancelled, None), else_=now),
            lease_owner=None,
            lease_expires_at=None,
            last_error=message,
            updated_at=now,
        )
        .returning(Job.id, Job.step, Job.last_error)
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(statement).all()
    add_events_many(session, [(row.id, row.step, row.last_error or "lease expired") for row in rows], now)
    return [row.id for row in rows]


def _locked_job(session: Session, job_id: int) -> Job:
    job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
    if job is None:
        raise NotFoundError(f"no job {job_id}", field="job_id")
    return job


def resume(
    session: Session,
    job_id: int,
    *,
    now: datetime,
    step: str | None = None,
    state: Mapping[str, Any] | None = None,
    message: str | None = None,
) -> Job:
    """Wakes a waiting job now (an approval arrived, a CA called back), optionally at ``step``."""
    job = _locked_job(session, job_id)
    if job.status != JobStatus.WAITING:
        raise ConflictError(f"job {job_id} is {job.status}, not waiting", field="job_id")
    job.status = JobStatus.QUEUED.value
    job.run_after = now
    job.updated_at = now
    if step is not None:
        job.step = step
    if state:
        job.state = {**(job.state or {}), **state}
    add_events(session, job.id, [(job.step, message or "resumed")], now)
    session.flush()
    return job


def request_cancel(session: Session, job_id: int, *, now: datetime) -> Job:
    """Cancels a queued or waiting job at once; a running one stops after its current step."""
    job = _locked_job(session, job_id)
    if job.status in (JobStatus.QUEUED, JobStatus.WAITING):
        job.status = JobStatus.CANCELLED.value
        job.finished_at = now
        job.run_after = None
        add_events(session, job.id, [(job.step, "cancelled")], now)
    elif job.status == JobStatus.RUNNING:
        if not job.cancel_requested:
            add_events(session, job.id, [(job.step, "cancellation requested")], now)
        job.cancel_requested = True
    else:
        raise ConflictError(f"job {job_id} already {job.status}", field="job_id")
    job.updated_at = now
    session.flush()
    return job


def requeue(session: Session, job_id: int, *, now: datetime) -> Job:
    """Runs a failed or cancelled job again from the step where it stopped, with fresh attempts."""
    job = _locked_job(session, job_id)
    if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
        raise ConflictError(
            f"job {job_id} is {job.status}; only failed or cancelled jobs can be retried", field="job_id"
        )
    if job.dedupe_key is not None:
        other = active_job_for_key(session, job.dedupe_key)
        if other is not None:
            raise ConflictError(
                f"job {other.id} with the same key '{job.dedupe_key}' is already {other.status}",
                field="job_id",
                job_id=other.id,
            )
    job.status = JobStatus.QUEUED.value
    job.attempts = 0
    job.run_after = now
    job.cancel_requested = False
    job.finished_at = None
    job.updated_at = now
    add_events(session, job.id, [(job.step, f"retry requested at step {job.step}")], now)
    session.flush()
    return job


def prune_finished(session: Session, *, finished_before: datetime, limit: int = 10_000) -> int:
    """Deletes up to ``limit`` jobs that finished before ``finished_before`` (events go with them)."""
    doomed = select(Job.id).where(Job.status.in_(_FINISHED), Job.finished_at < finished_before).limit(limit)
    ids = list(session.execute(doomed).scalars())
    if not ids:
        return 0
    session.execute(delete(JobEvent).where(JobEvent.job_id.in_(ids)))
    session.execute(delete(Job).where(Job.id.in_(ids)))
    return len(ids)
