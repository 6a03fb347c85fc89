"""What operators do with jobs, for the API and the CLI: list, show, retry, cancel.

Retry and cancel are audited in the same transaction as the change; the caller commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.errors import InvalidInputError, NotFoundError
from sslclm.jobs import queue
from sslclm.jobs.models import Job, JobEvent, JobStatus

MAX_PAGE = 500
MAX_EVENTS = 1000
STATUSES = ", ".join(status.value for status in JobStatus)


@dataclass(frozen=True, slots=True)
class JobFilter:
    status: str | None = None
    kind: str | None = None
    target: str | None = None
    dedupe_key: str | None = None


@dataclass(frozen=True, slots=True)
class JobPage:
    items: list[Job]
    next_cursor: int | None


def parse_status(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return JobStatus(value.strip().lower()).value
    except ValueError:
        raise InvalidInputError(f"unknown status '{value}'; use one of {STATUSES}", field="status") from None


def list_jobs(session: Session, flt: JobFilter, *, limit: int = 50, cursor: int | None = None) -> JobPage:
    """Newest first, keyset-paginated on the id (``cursor`` is the previous page's ``next_cursor``)."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}", field="limit")
    statement = select(Job)
    status = parse_status(flt.status)
    if status is not None:
        statement = statement.where(Job.status == status)
    if flt.kind is not None:
        statement = statement.where(Job.kind == flt.kind)
    if flt.target is not None:
        statement = statement.where(Job.target == flt.target)
    if flt.dedupe_key is not None:
        statement = statement.where(Job.dedupe_key == flt.dedupe_key)
    if cursor is not None:
        statement = statement.where(Job.id < cursor)
    rows = list(session.execute(statement.order_by(Job.id.desc()).limit(limit + 1)).scalars())
    items = rows[:limit]
    return JobPage(items, items[-1].id if len(rows) > limit else None)


def get_job(session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id}", field="job_id")
    return job


def job_events(session: Session, job_id: int, *, limit: int = MAX_EVENTS) -> list[JobEvent]:
    """The job's history, oldest first (the latest ``limit`` lines)."""
    rows = session.execute(
        select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id.desc()).limit(limit)
    ).scalars()
    return list(reversed(list(rows)))


def retry_job(session: Session, ctx: AuditContext, job_id: int, *, now: datetime) -> Job:
    """Queues a failed or cancelled job again at the step where it stopped, with fresh attempts."""
    before = get_job(session, job_id)
    previous = before.status
    job = queue.requeue(session, job_id, now=now)
    record(
        session,
        ctx,
        "job.retry",
        "job",
        job.id,
        {"kind": job.kind, "step": job.step, "previous_status": previous},
        occurred_at=now,
    )
    return job


def cancel_job(session: Session, ctx: AuditContext, job_id: int, *, now: datetime) -> Job:
    """Cancels a queued or waiting job; a running one stops after its current step."""
    get_job(session, job_id)
    job = queue.request_cancel(session, job_id, now=now)
    record(
        session,
        ctx,
        "job.cancel",
        "job",
        job.id,
        {"kind": job.kind, "step": job.step, "status": job.status},
        occurred_at=now,
    )
    return job
