"""Discovery: the new-scan form, scans with progress, a scan's results and its diff, endpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from pydantic import ValidationError
from starlette.responses import Response

from sslclm.api.deps import PlatformDep, SessionDep
from sslclm.auth.permissions import Permission
from sslclm.discovery import service
from sslclm.discovery.diff import compare_scans
from sslclm.discovery.schemas import ScanOptionsIn, ScanTargetsIn
from sslclm.errors import InvalidInputError, SslClmError
from sslclm.web.common import (
    PAGE_SIZE,
    CertReader,
    WebPrincipal,
    action_refused,
    audit_context,
    error_message,
    redirect,
    render,
)
from sslclm.web.forms import split_lines, validation_message

router = APIRouter(include_in_schema=False)


def _scans_context(session: SessionDep, cursor_text: str) -> dict[str, object]:
    page = service.list_scans(
        session, limit=PAGE_SIZE, cursor=int(cursor_text) if cursor_text.isdigit() else None
    )
    return {
        "scans": page.items,
        "next_url": f"/ui/scans?cursor={page.next_cursor}" if page.next_cursor else None,
        "values": {},
        "error": None,
    }


@router.get("/scans")
def scans(request: Request, principal: CertReader, session: SessionDep) -> Response:
    context = _scans_context(session, request.query_params.get("cursor", ""))
    return render(request, "scans.html", context, principal=principal)


@router.post("/scans")
def start_scan(
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
    targets: Annotated[str, Form()] = "",
    ports: Annotated[str, Form()] = "443",
    sni: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
    extra_roots_pem: Annotated[str, Form()] = "",
) -> Response:
    values = {"targets": targets, "ports": ports, "sni": sni, "name": name}
    try:
        principal.require(Permission.CERT_WRITE)
        try:
            spec = ScanTargetsIn(
                targets=split_lines(targets), ports=ports.strip() or "443", sni=split_lines(sni)
            )
            options = ScanOptionsIn(extra_roots_pem=extra_roots_pem.strip() or None)
        except ValidationError as exc:
            raise InvalidInputError(validation_message(exc), field="targets") from None
        scan = service.create_scan(
            session,
            audit_context(request, principal),
            spec,
            options,
            now=platform.clock(),
            name=name.strip()[:255] or None,
        )
        session.commit()
    except SslClmError as exc:
        session.rollback()
        context = _scans_context(session, "")
        context.update(values=values, error=error_message(exc))
        return render(request, "scans.html", context, principal=principal, status_code=exc.http_status)
    return redirect(f"/ui/scans/{scan.id}", "scan")


@router.get("/scans/{scan_id}")
def scan_page(
    scan_id: int, request: Request, principal: CertReader, session: SessionDep, platform: PlatformDep
) -> Response:
    scan = service.get_scan(session, scan_id)
    cursor_text = request.query_params.get("cursor", "")
    endpoints, next_cursor = service.list_endpoints(
        session,
        service.EndpointFilter(scan_id=scan_id),
        now=platform.clock(),
        limit=PAGE_SIZE,
        cursor=int(cursor_text) if cursor_text.isdigit() else None,
    )
    diff = compare_scans(session, scan_id, limit=50) if scan.status not in ("queued", "running") else None
    return render(
        request,
        "scan.html",
        {
            "scan": scan,
            "endpoints": endpoints,
            "diff": diff,
            "next_url": f"/ui/scans/{scan_id}?cursor={next_cursor}" if next_cursor else None,
        },
        principal=principal,
    )


@router.post("/scans/{scan_id}/cancel")
def cancel(
    scan_id: int, request: Request, principal: WebPrincipal, session: SessionDep, platform: PlatformDep
) -> Response:
    try:
        principal.require(Permission.CERT_WRITE)
        service.cancel_scan(session, audit_context(request, principal), scan_id, now=platform.clock())
        session.commit()
    except SslClmError as exc:
        return action_refused(request, principal, session, exc, "Not done")
    return redirect(f"/ui/scans/{scan_id}", "cancelled")


@router.get("/endpoints")
def endpoints(
    request: Request, principal: CertReader, session: SessionDep, platform: PlatformDep
) -> Response:
    params = request.query_params
    cursor_text = params.get("cursor", "")
    host = params.get("host") or None
    items, next_cursor = service.list_endpoints(
        session,
        service.EndpointFilter(host=host),
        now=platform.clock(),
        limit=PAGE_SIZE,
        cursor=int(cursor_text) if cursor_text.isdigit() else None,
    )
    keep = f"&host={host}" if host else ""
    return render(
        request,
        "endpoints.html",
        {
            "endpoints": items,
            "host": host or "",
            "next_url": f"/ui/endpoints?cursor={next_cursor}{keep}" if next_cursor else None,
        },
        principal=principal,
    )
