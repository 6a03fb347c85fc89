"""Jobs: list and inspect (cert:read), retry and cancel (cert:write).

Jobs are created by the workflows and the scheduler, never directly through this API.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from sslclm.api.deps import AuditDep, PlatformDep, SessionDep, get_principal, require
from sslclm.auth.permissions import Permission
from sslclm.auth.principal import Principal
from sslclm.jobs import service
from sslclm.jobs.schemas import JobDetailOut, JobOut, JobPageOut, JobQuery

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(get_principal)])

JobReader = Annotated[Principal, Depends(require(Permission.CERT_READ))]
JobOperator = Annotated[Principal, Depends(require(Permission.CERT_WRITE))]


@router.get("", response_model=JobPageOut, summary="List jobs, newest first (keyset-paginated)")
def list_jobs(query: Annotated[JobQuery, Query()], _: JobReader, session: SessionDep) -> JobPageOut:
    flt = service.JobFilter(
        status=query.status.value if query.status else None,
        kind=query.kind,
        target=query.target,
        dedupe_key=query.dedupe_key,
    )
    page = service.list_jobs(session, flt, limit=query.limit, cursor=query.cursor)
    return JobPageOut(items=[JobOut.of(job) for job in page.items], next_cursor=page.next_cursor)


@router.get("/{job_id}", response_model=JobDetailOut, summary="One job with its input, state and history")
def show_job(job_id: int, _: JobReader, session: SessionDep) -> JobDetailOut:
    job = service.get_job(session, job_id)
    return JobDetailOut.detail(job, service.job_events(session, job_id))


@router.post("/{job_id}/retry", response_model=JobOut, summary="Run a failed or cancelled job again")
def retry_job(
    job_id: int, _: JobOperator, session: SessionDep, ctx: AuditDep, platform: PlatformDep
) -> JobOut:
    job = service.retry_job(session, ctx, job_id, now=platform.clock())
    session.commit()
    return JobOut.of(job)


@router.post("/{job_id}/cancel", response_model=JobOut, summary="Cancel a job (a running one after its step)")
def cancel_job(
    job_id: int, _: JobOperator, session: SessionDep, ctx: AuditDep, platform: PlatformDep
) -> JobOut:
    job = service.cancel_job(session, ctx, job_id, now=platform.clock())
    session.commit()
    return JobOut.of(job)
