"""Notification rules and the delivery log; channels are notifier connections."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy import select
from starlette.responses import Response

from sslclm.api.deps import AuditDep, PlatformDep, SessionDep, require
from sslclm.api.routes.certificates import json_response
from sslclm.auth.permissions import Permission
from sslclm.notifications import service
from sslclm.notifications.digest import build_digests
from sslclm.notifications.models import NotificationEvent, NotificationLog, NotificationRule

router = APIRouter(prefix="/notifications", tags=["notifications"])
CanRead = Depends(require(Permission.CERT_READ))
CanManage = Depends(require(Permission.NOTIFICATION_MANAGE))


@router.get("/rules", dependencies=[CanRead], summary="Notification rules")
def list_rules(session: SessionDep) -> Response:
    rows = session.execute(select(NotificationRule).order_by(NotificationRule.id)).scalars()
    return json_response([service.rule_view(r) for r in rows])


@router.post("/rules", dependencies=[CanManage], status_code=201, summary="Add a notification rule")
def create_rule(
    body: service.RuleCreate, session: SessionDep, platform: PlatformDep, ctx: AuditDep
) -> Response:
    rule = service.create_rule(session, ctx, body, now=platform.clock())
    session.commit()
    return json_response(service.rule_view(rule), 201)


@router.delete("/rules/{rule_id}", dependencies=[CanManage], summary="Delete a notification rule")
def delete_rule(rule_id: int, session: SessionDep, ctx: AuditDep) -> Response:
    service.delete_rule(session, ctx, rule_id)
    session.commit()
    return json_response({"deleted": rule_id})


@router.get("/log", dependencies=[CanRead], summary="Sent, pending and failed notifications, newest first")
def notification_log(session: SessionDep, limit: int = 100, status: str | None = None) -> Response:
    stmt = select(NotificationLog).order_by(NotificationLog.id.desc()).limit(max(1, min(limit, 1000)))
    if status:
        stmt = stmt.where(NotificationLog.status == status)
    return json_response([service.log_view(e) for e in session.execute(stmt).scalars()])


@router.post("/sweep", dependencies=[CanManage], summary="Queue new events and deliver them now")
def sweep(session: SessionDep, platform: PlatformDep) -> Response:
    now = platform.clock()
    queued = service.queue_events(session, now=now)
    digests = build_digests(session, now=now)
    session.commit()
    return json_response({"queued": queued, "digests": digests, **service.deliver_pending(platform)})


@router.get(
    "/events", dependencies=[CanRead], summary="Raised events (failed jobs, drift, ...), newest first"
)
def list_events(session: SessionDep, limit: int = 100, kind: str | None = None) -> Response:
    stmt = select(NotificationEvent).order_by(NotificationEvent.id.desc()).limit(max(1, min(limit, 1000)))
    if kind:
        stmt = stmt.where(NotificationEvent.kind == kind)
    return json_response([service.event_view(e) for e in session.execute(stmt).scalars()])
