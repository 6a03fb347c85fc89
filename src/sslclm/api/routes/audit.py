"""Reading and verifying the audit log (audit:read). Nothing here changes it: it is append-only."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy import or_, select

from sslclm.api.deps import SessionDep, get_principal, require
from sslclm.audit.models import AuditEvent
from sslclm.audit.schemas import AuditEventOut, AuditPage, AuditQuery, VerifyOut
from sslclm.audit.service import verify_chain
from sslclm.auth.permissions import Permission
from sslclm.auth.principal import Principal
from sslclm.core.clock import as_utc

router = APIRouter(prefix="/audit", tags=["audit"], dependencies=[Depends(get_principal)])

AuditReader = Annotated[Principal, Depends(require(Permission.AUDIT_READ))]


@router.get("/events", response_model=AuditPage)
def list_events(query: Annotated[AuditQuery, Query()], _: AuditReader, session: SessionDep) -> AuditPage:
    """Newest first. Keyset pagination on the event id, so deep pages cost the same as the first."""
    statement = select(AuditEvent)
    if query.actor is not None:
        # The log names a token's actions "alice (token 7)": asking for alice finds those too.
        escaped = query.actor.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        statement = statement.where(
            or_(AuditEvent.actor == query.actor, AuditEvent.actor.like(f"{escaped} (token %", escape="\\"))
        )
    for column, value in (
        (AuditEvent.action, query.action),
        (AuditEvent.target_type, query.target_type),
        (AuditEvent.target_id, query.target_id),
    ):
        if value is not None:
            statement = statement.where(column == value)
    if query.since is not None:
        statement = statement.where(AuditEvent.occurred_at >= as_utc(query.since))
    if query.until is not None:
        statement = statement.where(AuditEvent.occurred_at < as_utc(query.until))
    if query.cursor is not None:
        statement = statement.where(AuditEvent.id < query.cursor)
    rows = session.execute(statement.order_by(AuditEvent.id.desc()).limit(query.limit + 1)).scalars().all()
    items = [AuditEventOut.of(event) for event in rows[: query.limit]]
    return AuditPage(items=items, next_cursor=items[-1].id if len(rows) > query.limit else None)


@router.get("/verify", response_model=VerifyOut)
def verify(_: AuditReader, session: SessionDep) -> VerifyOut:
    """Recomputes every link of the hash chain and names the first event that does not fit."""
    return VerifyOut.of(verify_chain(session))
