"""The audit log with filters (keyset-paged, newest first) and the hash-chain verification."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Request
from sqlalchemy import or_, select
from starlette.responses import Response

from sslclm.api.deps import SessionDep
from sslclm.audit.models import AuditEvent
from sslclm.audit.service import verify_chain
from sslclm.auth.permissions import Permission
from sslclm.core.clock import as_utc
from sslclm.web.common import PAGE_SIZE, WebPrincipal, render

router = APIRouter(include_in_schema=False)
FILTERS = ("actor", "action", "target_type", "target_id", "since", "until")


def _day(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return as_utc(datetime.fromisoformat(text))
    except ValueError:
        return None


@router.get("/audit")
def audit_log(request: Request, principal: WebPrincipal, session: SessionDep) -> Response:
    principal.require(Permission.AUDIT_READ)
    params = request.query_params
    values = {name: params.get(name, "").strip() for name in FILTERS if params.get(name, "").strip()}
    # The same filters as GET /api/v1/audit/events; written here because that route keeps them inline.
    stmt = select(AuditEvent)
    if actor := values.get("actor"):
        escaped = actor.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(
            or_(AuditEvent.actor == actor, AuditEvent.actor.like(f"{escaped} (token %", escape="\\"))
        )
    for column, name in (
        (AuditEvent.action, "action"),
        (AuditEvent.target_type, "target_type"),
        (AuditEvent.target_id, "target_id"),
    ):
        if name in values:
            stmt = stmt.where(column == values[name])
    error = None
    for name, op in (("since", "ge"), ("until", "lt")):
        if name in values:
            when = _day(values[name])
            if when is None:
                error = f"{name}: use a date like 2026-01-31"
            else:
                stmt = stmt.where(
                    AuditEvent.occurred_at >= when if op == "ge" else AuditEvent.occurred_at < when
                )
    cursor_text = params.get("cursor", "")
    if cursor_text.isdigit():
        stmt = stmt.where(AuditEvent.id < int(cursor_text))
    rows = list(session.execute(stmt.order_by(AuditEvent.id.desc()).limit(PAGE_SIZE + 1)).scalars())
    events = rows[:PAGE_SIZE]
    keep = "".join(f"&{k}={v}" for k, v in values.items())
    next_url = f"/ui/audit?cursor={events[-1].id}{keep}" if len(rows) > PAGE_SIZE else None
    verified = verify_chain(session) if params.get("verify") == "1" else None
    return render(
        request,
        "audit.html",
        {"events": events, "values": values, "next_url": next_url, "verified": verified, "error": error},
        principal=principal,
        status_code=400 if error else 200,
    )
