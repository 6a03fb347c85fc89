"""Network discovery: scans (create, follow, cancel, compare), endpoints and scan schedules.

Reading needs cert:read; starting or cancelling scans and managing schedules needs cert:write.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from starlette.responses import Response

from sslclm.api.deps import AuditDep, PlatformDep, SessionDep, require
from sslclm.api.routes.certificates import json_response
from sslclm.auth.permissions import Permission
from sslclm.discovery import schedules, service
from sslclm.discovery.diff import compare_scans
from sslclm.discovery.schemas import ScanCreate, ScanOut, ScheduleCreate, ScheduleOut, ScheduleUpdate
from sslclm.inventory.service import get_certificate

router = APIRouter(tags=["discovery"])
CanRead = Depends(require(Permission.CERT_READ))
CanWrite = Depends(require(Permission.CERT_WRITE))


class ScanPageOut(BaseModel):
    items: list[ScanOut]
    next_cursor: int | None


class ScanQuery(BaseModel):
    status: str | None = Field(default=None, max_length=16)
    schedule_id: int | None = None
    limit: int = Field(default=50, ge=1, le=service.MAX_PAGE)
    cursor: int | None = Field(default=None, ge=0)


class EndpointQuery(BaseModel):
    host: str | None = Field(default=None, max_length=255)
    port: int | None = Field(default=None, ge=1, le=65535)
    sni: str | None = Field(default=None, max_length=255)
    status: str | None = Field(default=None, pattern="^(ok|error)$", description="ok or error.")
    trusted: bool | None = None
    hostname_match: bool | None = None
    expiring: bool | None = Field(
        default=None, description="Serving a certificate that expires within the expiring window."
    )
    expiring_days: int | None = Field(default=None, ge=0, le=3650, description="Overrides the window.")
    certificate_id: int | None = None
    scan_id: int | None = None
    limit: int = Field(default=50, ge=1, le=service.MAX_PAGE)
    cursor: int | None = Field(default=None, ge=0)


@router.post(
    "/scans", status_code=201, response_model=ScanOut, dependencies=[CanWrite], summary="Start a scan"
)
def create_scan(body: ScanCreate, session: SessionDep, ctx: AuditDep, platform: PlatformDep) -> ScanOut:
    scan = service.create_scan(session, ctx, body, body.options, now=platform.clock(), name=body.name)
    session.commit()
    return ScanOut.of(scan)


@router.get("/scans", response_model=ScanPageOut, dependencies=[CanRead], summary="List scans, newest first")
def list_scans(params: Annotated[ScanQuery, Query()], session: SessionDep) -> ScanPageOut:
    page = service.list_scans(
        session,
        status=params.status,
        schedule_id=params.schedule_id,
        limit=params.limit,
        cursor=params.cursor,
    )
    return ScanPageOut(items=[ScanOut.of(scan) for scan in page.items], next_cursor=page.next_cursor)


@router.get(
    "/scans/{scan_id}", response_model=ScanOut, dependencies=[CanRead], summary="A scan and its progress"
)
def show_scan(scan_id: int, session: SessionDep) -> ScanOut:
    return ScanOut.of(service.get_scan(session, scan_id))


@router.post(
    "/scans/{scan_id}/cancel", response_model=ScanOut, dependencies=[CanWrite], summary="Cancel a scan"
)
def cancel_scan(scan_id: int, session: SessionDep, ctx: AuditDep, platform: PlatformDep) -> ScanOut:
    scan = service.cancel_scan(session, ctx, scan_id, now=platform.clock())
    session.commit()
    return ScanOut.of(scan)


@router.get(
    "/scans/{scan_id}/diff",
    dependencies=[CanRead],
    summary="New, changed and vanished endpoints and certificates since the previous scan",
)
def scan_diff(
    scan_id: int,
    session: SessionDep,
    previous: Annotated[int | None, Query(description="Compare with this scan instead.")] = None,
    limit: Annotated[int, Query(ge=0, le=1000)] = 100,
) -> Response:
    return json_response(compare_scans(session, scan_id, previous_id=previous, limit=limit))


@router.get("/endpoints", dependencies=[CanRead], summary="List endpoints (keyset-paginated)")
def list_endpoints(
    params: Annotated[EndpointQuery, Query()], session: SessionDep, platform: PlatformDep
) -> Response:
    days = params.expiring_days
    if days is None and params.expiring:
        days = platform.settings.expiring_days
    flt = service.EndpointFilter(
        host=params.host,
        port=params.port,
        sni=params.sni,
        status=params.status,
        trusted=params.trusted,
        hostname_match=params.hostname_match,
        expiring_days=days,
        certificate_id=params.certificate_id,
        scan_id=params.scan_id,
    )
    items, cursor = service.list_endpoints(
        session, flt, now=platform.clock(), limit=params.limit, cursor=params.cursor
    )
    return json_response({"items": items, "next_cursor": cursor})


@router.get("/endpoints/{endpoint_id}", dependencies=[CanRead], summary="An endpoint and its history")
def show_endpoint(
    endpoint_id: int, session: SessionDep, history: Annotated[int, Query(ge=1, le=service.MAX_HISTORY)] = 100
) -> Response:
    return json_response(service.endpoint_detail(session, endpoint_id, history=history))


@router.get(
    "/certificates/{ref}/endpoints",
    dependencies=[CanRead],
    summary="Every endpoint that serves a certificate",
)
def certificate_endpoints(
    ref: str,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 100,
    cursor: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    cert = get_certificate(session, ref)
    items, next_cursor = service.certificate_endpoints(session, cert.id, limit=limit, cursor=cursor)
    return json_response({"certificate_id": cert.id, "items": items, "next_cursor": next_cursor})


@router.get(
    "/scan-schedules", response_model=list[ScheduleOut], dependencies=[CanRead], summary="List scan schedules"
)
def list_schedules(session: SessionDep) -> list[ScheduleOut]:
    return [ScheduleOut.of(s) for s in schedules.list_schedules(session)]


@router.post(
    "/scan-schedules",
    status_code=201,
    response_model=ScheduleOut,
    dependencies=[CanWrite],
    summary="Schedule a recurring scan (cron, UTC)",
)
def create_schedule(
    body: ScheduleCreate, session: SessionDep, ctx: AuditDep, platform: PlatformDep
) -> ScheduleOut:
    schedule = schedules.create_schedule(session, ctx, body, now=platform.clock())
    session.commit()
    return ScheduleOut.of(schedule)


@router.get(
    "/scan-schedules/{schedule_id}",
    response_model=ScheduleOut,
    dependencies=[CanRead],
    summary="A scan schedule",
)
def show_schedule(schedule_id: int, session: SessionDep) -> ScheduleOut:
    return ScheduleOut.of(schedules.get_schedule(session, schedule_id))


@router.patch(
    "/scan-schedules/{schedule_id}",
    response_model=ScheduleOut,
    dependencies=[CanWrite],
    summary="Change a scan schedule",
)
def update_schedule(
    schedule_id: int, body: ScheduleUpdate, session: SessionDep, ctx: AuditDep, platform: PlatformDep
) -> ScheduleOut:
    schedule = schedules.update_schedule(session, ctx, schedule_id, body, now=platform.clock())
    session.commit()
    return ScheduleOut.of(schedule)


@router.delete(
    "/scan-schedules/{schedule_id}",
    status_code=204,
    dependencies=[CanWrite],
    summary="Delete a scan schedule",
)
def delete_schedule(schedule_id: int, session: SessionDep, ctx: AuditDep, platform: PlatformDep) -> Response:
    schedules.delete_schedule(session, ctx, schedule_id, now=platform.clock())
    session.commit()
    return Response(status_code=204)
