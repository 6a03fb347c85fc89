"""Jobs: the list with a status filter, one job's steps, events and errors, retry and cancel."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from sslclm.api.deps import PlatformDep, SessionDep
from sslclm.auth.permissions import Permission
from sslclm.errors import SslClmError
from sslclm.jobs import service
from sslclm.jobs.models import JobStatus
from sslclm.web.common import (
    PAGE_SIZE,
    CertReader,
    WebPrincipal,
    audit_context,
    error_message,
    redirect,
    render,
)

router = APIRouter(include_in_schema=False)


@router.get("/jobs")
def jobs_list(request: Request, principal: CertReader, session: SessionDep) -> Response:
    params = request.query_params
    status = params.get("status") or None
    kind = params.get("kind") or None
    cursor_text = params.get("cursor", "")
    error = None
    items = []
    next_cursor = None
    try:
        page = service.list_jobs(
            session,
            service.JobFilter(status=status, kind=kind),
            limit=PAGE_SIZE,
            cursor=int(cursor_text) if cursor_text.isdigit() else None,
        )
        items, next_cursor = page.items, page.next_cursor
    except SslClmError as exc:
        error = error_message(exc)
    keep = "".join(f"&{k}={v}" for k, v in (("status", status), ("kind", kind)) if v)
    return render(
        request,
        "jobs.html",
        {
            "jobs": items,
            "status": status,
            "kind": kind or "",
            "statuses": [s.value for s in JobStatus],
            "next_url": f"/ui/jobs?cursor={next_cursor}{keep}" if next_cursor else None,
            "error": error,
        },
        principal=principal,
        status_code=400 if error else 200,
    )


@router.get("/jobs/{job_id}")
def job_page(job_id: int, request: Request, principal: CertReader, session: SessionDep) -> Response:
    job = service.get_job(session, job_id)
    events = service.job_events(session, job_id)
    return render(request, "job.html", {"job": job, "events": events, "error": None}, principal=principal)


@router.post("/jobs/{job_id}/{operation}")
def job_operation(
    job_id: int,
    operation: str,
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
) -> Response:
    principal.require(Permission.CERT_WRITE)
    try:
        ctx = audit_context(request, principal)
        if operation == "retry":
            service.retry_job(session, ctx, job_id, now=platform.clock())
        elif operation == "cancel":
            service.cancel_job(session, ctx, job_id, now=platform.clock())
        else:
            return render(
                request,
                "error.html",
                {"title": "Not found", "message": f"no job operation '{operation[:20]}'"},
                principal=principal,
                status_code=404,
            )
        session.commit()
    except SslClmError as exc:
        session.rollback()
        job = service.get_job(session, job_id)
        context = {"job": job, "events": service.job_events(session, job_id), "error": error_message(exc)}
        return render(request, "job.html", context, principal=principal, status_code=exc.http_status)
    return redirect(f"/ui/jobs/{job_id}", "retried" if operation == "retry" else "cancelled")
