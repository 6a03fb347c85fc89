"""Bodies and query parameters of the job routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sslclm.jobs.models import Job, JobEvent, JobStatus
from sslclm.jobs.service import MAX_PAGE


class JobQuery(BaseModel):
    """Filters and keyset pagination; unknown parameters are refused so a typo never widens a search."""

    model_config = ConfigDict(extra="forbid")

    status: JobStatus | None = None
    kind: str | None = Field(default=None, max_length=100)
    target: str | None = Field(default=None, max_length=255)
    dedupe_key: str | None = Field(default=None, max_length=255)
    cursor: int | None = Field(default=None, ge=1, description="next_cursor of the previous page.")
    limit: int = Field(default=50, ge=1, le=MAX_PAGE)


class JobOut(BaseModel):
    id: int
    kind: str
    status: str
    step: str
    attempts: int
    max_attempts: int | None = Field(description="None: the task's retry strategy decides.")
    priority: int
    run_after: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    cancel_requested: bool
    last_error: str | None
    dedupe_key: str | None
    target: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            step=job.step,
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            priority=job.priority,
            run_after=job.run_after,
            lease_owner=job.lease_owner,
            lease_expires_at=job.lease_expires_at,
            cancel_requested=job.cancel_requested,
            last_error=job.last_error,
            dedupe_key=job.dedupe_key,
            target=job.target,
            created_at=job.created_at,
            updated_at=job.updated_at,
            finished_at=job.finished_at,
        )


class JobEventOut(BaseModel):
    id: int
    occurred_at: datetime
    step: str | None
    message: str

    @classmethod
    def of(cls, event: JobEvent) -> JobEventOut:
        return cls(id=event.id, occurred_at=event.occurred_at, step=event.step, message=event.message)


class JobDetailOut(JobOut):
    payload: dict[str, Any]
    state: dict[str, Any]
    result: dict[str, Any] | None
    events: list[JobEventOut]

    @classmethod
    def detail(cls, job: Job, events: list[JobEvent]) -> JobDetailOut:
        return cls(
            **JobOut.of(job).model_dump(),
            payload=job.payload or {},
            state=job.state or {},
            result=job.result,
            events=[JobEventOut.of(event) for event in events],
        )


class JobPageOut(BaseModel):
    items: list[JobOut]
    next_cursor: int | None
