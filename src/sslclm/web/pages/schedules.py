"""Scan schedules: recurring scans by cron expression (UTC), listed, created and deleted.

Served at ``/ui/scan-schedules`` like the API's ``/api/v1/scan-schedules`` (under ``/ui/scans/``
the name would collide with a scan's id).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import Response

from sslclm.api.deps import PlatformDep, SessionDep
from sslclm.auth.permissions import Permission
from sslclm.auth.principal import Principal
from sslclm.discovery import schedules
from sslclm.discovery.models import ScanSchedule
from sslclm.discovery.schemas import ScheduleCreate
from sslclm.errors import InvalidInputError, SslClmError
from sslclm.web.common import (
    PAGE_SIZE,
    CertReader,
    WebPrincipal,
    audit_context,
    error_message,
    redirect,
    render,
)
from sslclm.web.forms import split_lines, validation_message

router = APIRouter(include_in_schema=False)
HOME = "/ui/scan-schedules"


def _page(
    request: Request,
    principal: Principal,
    session: Session,
    *,
    error: str | None = None,
    values: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    cursor_text = request.query_params.get("cursor", "")
    query = select(ScanSchedule).order_by(ScanSchedule.id).limit(PAGE_SIZE + 1)
    if cursor_text.isdigit():
        query = query.where(ScanSchedule.id > int(cursor_text))
    rows = list(session.execute(query).scalars())
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return render(
        request,
        "schedules.html",
        {
            "schedules": rows,
            "error": error,
            "values": values or {},
            "next_url": f"{HOME}?cursor={rows[-1].id}" if more else None,
        },
        principal=principal,
        status_code=status_code,
    )


@router.get("/scan-schedules")
def schedule_list(request: Request, principal: CertReader, session: SessionDep) -> Response:
    return _page(request, principal, session)


@router.post("/scan-schedules")
def create(
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
    name: Annotated[str, Form()] = "",
    cron: Annotated[str, Form()] = "",
    targets: Annotated[str, Form()] = "",
    ports: Annotated[str, Form()] = "443",
    sni: Annotated[str, Form()] = "",
    enabled: Annotated[str, Form()] = "",
) -> Response:
    principal.require(Permission.CERT_WRITE)
    values = {"name": name, "cron": cron, "targets": targets, "ports": ports, "sni": sni, "enabled": enabled}
    try:
        try:
            spec = ScheduleCreate(
                name=name.strip(),
                cron=cron.strip(),
                targets=split_lines(targets),
                ports=ports.strip() or "443",
                sni=split_lines(sni),
                enabled=enabled == "1",
            )
        except ValidationError as exc:
            raise InvalidInputError(validation_message(exc)) from None
        schedules.create_schedule(session, audit_context(request, principal), spec, now=platform.clock())
        session.commit()
    except SslClmError as exc:
        session.rollback()
        return _page(
            request, principal, session, error=error_message(exc), values=values, status_code=exc.http_status
        )
    return redirect(HOME, "created")


@router.post("/scan-schedules/{schedule_id}/delete")
def delete(
    schedule_id: int, request: Request, principal: WebPrincipal, session: SessionDep, platform: PlatformDep
) -> Response:
    principal.require(Permission.CERT_WRITE)
    try:
        schedules.delete_schedule(
            session, audit_context(request, principal), schedule_id, now=platform.clock()
        )
        session.commit()
    except SslClmError as exc:
        session.rollback()
        return _page(request, principal, session, error=error_message(exc), status_code=exc.http_status)
    return redirect(HOME, "deleted")
