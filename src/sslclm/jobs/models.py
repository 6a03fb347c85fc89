"""Tables of the durable job system: jobs, their progress events, and periodic ticks."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from sslclm.core.db import Base, UTCDateTime
from sslclm.inventory.models import BigId


class JobStatus(StrEnum):
    QUEUED = "queued"  # ready to run at run_after
    RUNNING = "running"  # leased by a worker until lease_expires_at
    WAITING = "waiting"  # parked: polled again at run_after, or resumed from outside when run_after is NULL
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.WAITING)
FINISHED_STATUSES = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
# Literal SQL for the partial indexes: the same text is valid on SQLite and PostgreSQL.
ACTIVE_WHERE = text("status IN ('queued', 'running', 'waiting')")
READY_WHERE = text("status IN ('queued', 'waiting')")
RUNNING_WHERE = text("status = 'running'")


class Job(Base):
    """One durable unit of work: a task kind, its input, and where its state machine stands."""

    __tablename__ = "jobs"
    __table_args__ = (
        # The reaper finds expired leases without scanning finished jobs.
        Index(
            "ix_jobs_lease_expiry",
            "lease_expires_at",
            sqlite_where=RUNNING_WHERE,
            postgresql_where=RUNNING_WHERE,
        ),
        # Only one active job per dedupe key; a finished job frees its key for the next run.
        Index(
            "uq_jobs_active_dedupe_key",
            "dedupe_key",
            unique=True,
            sqlite_where=ACTIVE_WHERE,
            postgresql_where=ACTIVE_WHERE,
        ),
        Index("ix_jobs_status_id", "status", "id"),
        Index("ix_jobs_kind_id", "kind", "id"),
        Index("ix_jobs_target_id", "target", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    step: Mapped[str] = mapped_column(String(100))
    # Data one step hands to the next (ids of rows it created, a CA's pending reference...).
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # tries of the current step
    max_attempts: Mapped[int | None] = mapped_column(Integer)  # None: the task's retry strategy decides
    priority: Mapped[int] = mapped_column(Integer, default=0)  # higher runs first
    run_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_owner: Mapped[str | None] = mapped_column(String(160))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    last_error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    dedupe_key: Mapped[str | None] = mapped_column(String(255))
    # What the job works on, e.g. "managed_certificate:42", so operators can list a thing's jobs.
    target: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# The claim query walks this index in its order (highest priority, then oldest) and stops after a batch.
Index(
    "ix_jobs_ready",
    Job.priority.desc(),
    Job.run_after,
    Job.id,
    sqlite_where=READY_WHERE,
    postgresql_where=READY_WHERE,
)


class JobEvent(Base):
    """A line in a job's history: progress a step reported, a retry, a takeover, a cancellation."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    step: Mapped[str | None] = mapped_column(String(100))
    message: Mapped[str] = mapped_column(Text)


class PeriodicTick(Base):
    """One due time of one schedule; the unique key lets only one scheduler process enqueue it."""

    __tablename__ = "periodic_ticks"
    __table_args__ = (UniqueConstraint("schedule", "due_at"), Index("ix_periodic_ticks_due_at", "due_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    schedule: Mapped[str] = mapped_column(String(100))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    job_id: Mapped[int | None] = mapped_column(BigId)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
