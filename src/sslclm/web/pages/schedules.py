"""Scan schedules: recurring scans by cron expression (UTC), listed, created, edited and deleted.

Served at ``/ui/scan-schedules`` like the API's ``/api/v1/scan-schedules`` (under ``/ui/scans/``
the name would collide with a scan's id).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import Response

from sslclm.api.deps import PlatformDep, SessionDep
from sslclm.auth.permissions import Permission
from sslclm.auth.principal import Principal
from sslclm.discovery import schedules
from sslclm.discovery.models import ScanSchedule
from sslclm.discovery.schemas import ScanTargetsIn, ScheduleCreate, ScheduleUpdate
from sslclm.errors import InvalidInputError, SslClmError
from sslclm.web.common import (
    PAGE_SIZE,
    CertReader,
    CertWriter,
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


class ScheduleForm:
    """The schedule form's fields as submitted (echoed back when refused) and as the API takes them."""

    def __init__(
        self,
        name: Annotated[str, Form()] = "",
        cron: Annotated[str, Form()] = "",
        targets: Annotated[str, Form()] = "",
        ports: Annotated[str, Form()] = "443",
        sni: Annotated[str, Form()] = "",
        enabled: Annotated[str, Form()] = "",
    ) -> None:
        self.values = {
            "name": name,
            "cron": cron,
            "targets": targets,
            "ports": ports,
            "sni": sni,
            "enabled": enabled,
        }
        self.name, self.cron, self.enabled = name.strip(), cron.strip(), enabled == "1"
        self.targets, self.ports, self.sni = split_lines(targets), ports.strip() or "443", split_lines(sni)


ScheduleFormDep = Annotated[ScheduleForm, Depends()]


@router.get("/scan-schedules")
def schedule_list(request: Request, principal: CertReader, session: SessionDep) -> Response:
    return _page(request, principal, session)


@router.post("/scan-schedules")
def create(
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
    form: ScheduleFormDep,
) -> Response:
    principal.require(Permission.CERT_WRITE)
    try:
        try:
            spec = ScheduleCreate(
                name=form.name,
                cron=form.cron,
                enabled=form.enabled,
                targets=form.targets,
                ports=form.ports,
                sni=form.sni,
            )
        except ValidationError as exc:
            raise InvalidInputError(validation_message(exc)) from None
        schedules.create_schedule(session, audit_context(request, principal), spec, now=platform.clock())
        session.commit()
    except SslClmError as exc:
        session.rollback()
        return _page(
            request,
            principal,
            session,
            error=error_message(exc),
            values=form.values,
            status_code=exc.http_status,
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


def _edit_page(
    request: Request,
    principal: Principal,
    schedule: ScanSchedule,
    *,
    values: dict[str, str] | None = None,
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    targets = schedule.targets
    current = {
        "name": schedule.name,
        "cron": schedule.cron,
        "targets": "\n".join(targets.get("targets") or []),
        "ports": str(targets.get("ports", "443")),
        "sni": "\n".join(targets.get("sni") or []),
        "enabled": "1" if schedule.enabled else "",
    }
    return render(
        request,
        "schedule_edit.html",
        {"schedule": schedule, "values": values or current, "error": error},
        principal=principal,
        status_code=status_code,
    )


@router.get("/scan-schedules/{schedule_id}")
def edit_form(schedule_id: int, request: Request, principal: CertWriter, session: SessionDep) -> Response:
    return _edit_page(request, principal, schedules.get_schedule(session, schedule_id))


@router.post("/scan-schedules/{schedule_id}")
def update(
    schedule_id: int,
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
    form: ScheduleFormDep,
) -> Response:
    principal.require(Permission.CERT_WRITE)
    schedule = schedules.get_schedule(session, schedule_id)
    try:
        try:
            # Exclusions and the protocol have no field here: they keep what the schedule has.
            kept = {k: v for k, v in schedule.targets.items() if k in ("exclude", "protocol") and v}
            change = ScheduleUpdate(
                name=form.name,
                cron=form.cron,
                enabled=form.enabled,
                targets=ScanTargetsIn(targets=form.targets, ports=form.ports, sni=form.sni, **kept),
            )
        except ValidationError as exc:
            raise InvalidInputError(validation_message(exc)) from None
        schedules.update_schedule(
            session, audit_context(request, principal), schedule_id, change, now=platform.clock()
        )
        session.commit()
    except SslClmError as exc:
        session.rollback()
        schedule = schedules.get_schedule(session, schedule_id)
        return _edit_page(
            request,
            principal,
            schedule,
            values=form.values,
            error=error_message(exc),
            status_code=exc.http_status,
        )
    return redirect(HOME, "updated")
