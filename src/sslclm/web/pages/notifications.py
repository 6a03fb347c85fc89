"""Notifications: channels (notifier connections, forms from each notifier's config schema, a test
send, removal), the rules that route events to them, the delivery log and the raised events (both
keyset-paged)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import Response

from sslclm.api.deps import PlatformDep, SessionDep
from sslclm.auth.permissions import Permission
from sslclm.auth.principal import Principal
from sslclm.errors import InvalidInputError, SslClmError
from sslclm.notifications import channels as channel_service
from sslclm.notifications import service
from sslclm.notifications.models import NotificationEvent, NotificationLog, NotificationRule
from sslclm.spi.capabilities import ConnectorKind
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
from sslclm.web.schema_form import config_from_form, form_fields
from sslclm.workflows import connections

router = APIRouter(include_in_schema=False)
LOG_STATUSES = ("pending", "sent", "failed", "held", "digested")
HOME = "/ui/notifications"


def _cursor(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _overview(
    request: Request,
    principal: Principal,
    session: Session,
    *,
    error: str | None = None,
    values: dict[str, Any] | None = None,
    notice: str | None = None,
    status_code: int = 200,
) -> Response:
    registry = connections.connector_registry()
    described = registry.describe(ConnectorKind.NOTIFIER)
    channels = list(connections.list_connections(session, ConnectorKind.NOTIFIER))
    names = {row.id: row.name for row in channels}
    rules = [
        {**service.rule_view(rule), "channel": names.get(rule.channel_id, str(rule.channel_id))}
        for rule in session.execute(select(NotificationRule).order_by(NotificationRule.name)).scalars()
    ]
    return render(
        request,
        "notifications.html",
        {
            "channels": [
                {"row": row, "config": connections.masked_config(row, registry)} for row in channels
            ],
            "types": described["types"],
            "failures": described["failures"],
            "rules": rules,
            "events": service.EVENTS,
            "error": error,
            "values": values or {"thresholds": ", ".join(str(d) for d in service.DEFAULT_THRESHOLDS)},
            # Only when given: otherwise the page shows the notice of the redirect that led here.
            **({"notice": notice} if notice else {}),
        },
        principal=principal,
        status_code=status_code,
    )


@router.get("/notifications")
def overview(request: Request, principal: CertReader, session: SessionDep) -> Response:
    return _overview(request, principal, session)


def _notifier_type(type_key: str) -> dict[str, Any]:
    for described in connections.connector_registry().describe(ConnectorKind.NOTIFIER)["types"]:
        if described["type"] == type_key:
            return dict(described)
    raise InvalidInputError(f"no notifier type '{type_key[:64]}' is installed", field="type")


def _channel_form(
    request: Request,
    principal: Principal,
    described: dict[str, Any],
    *,
    values: dict[str, str],
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "connector_form.html",
        {
            "kind": ConnectorKind.NOTIFIER.value,
            "described": described,
            "fields": form_fields(described["config_schema"]),
            "values": values,
            "error": error,
            "action": f"{HOME}/channels/new/{described['type']}",
        },
        principal=principal,
        status_code=status_code,
    )


@router.get("/notifications/channels/new/{type_key}")
def new_channel_form(type_key: str, request: Request, principal: WebPrincipal) -> Response:
    principal.require(Permission.NOTIFICATION_MANAGE)
    return _channel_form(request, principal, _notifier_type(type_key), values={})


@router.post("/notifications/channels/new/{type_key}")
async def create_channel(
    type_key: str, request: Request, principal: WebPrincipal, session: SessionDep, platform: PlatformDep
) -> Response:
    principal.require(Permission.NOTIFICATION_MANAGE)
    described = _notifier_type(type_key)
    schema = described["config_schema"]
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    try:
        connections.create_connection(
            session,
            audit_context(request, principal),
            platform,
            kind=ConnectorKind.NOTIFIER.value,
            name=form.get("name", "").strip(),
            type_key=type_key,
            config=config_from_form(schema, form),
        )
        session.commit()
    except SslClmError as exc:
        session.rollback()
        # Secrets (webhook URLs with tokens, SMTP passwords) are never echoed back into the page.
        secret_inputs = {f.input_name for f in form_fields(schema) if f.widget == "password"}
        values = {k: v for k, v in form.items() if k != "csrf_token" and k not in secret_inputs}
        return _channel_form(
            request,
            principal,
            described,
            values=values,
            error=error_message(exc),
            status_code=exc.http_status,
        )
    return redirect(HOME, "created")


@router.post("/notifications/channels/{channel_id}/test")
def test_channel(
    channel_id: int, request: Request, principal: WebPrincipal, session: SessionDep, platform: PlatformDep
) -> Response:
    principal.require(Permission.NOTIFICATION_MANAGE)
    channel = channel_service.get_channel(session, channel_id)
    ok, detail = channel_service.send_test(
        session, audit_context(request, principal), platform, channel, now=platform.clock()
    )
    session.commit()
    if ok:
        return _overview(request, principal, session, notice=f"Test sent through {channel.name}: {detail}")
    # The request itself worked: the page reports the failed delivery, with a 200.
    return _overview(request, principal, session, error=f"Test through {channel.name} failed: {detail}")


@router.post("/notifications/channels/{channel_id}/delete")
def delete_channel(
    channel_id: int, request: Request, principal: WebPrincipal, session: SessionDep, platform: PlatformDep
) -> Response:
    principal.require(Permission.NOTIFICATION_MANAGE)
    try:
        channel = channel_service.get_channel(session, channel_id)
        channel_service.delete_channel(
            session, audit_context(request, principal), platform, channel, now=platform.clock()
        )
        session.commit()
    except SslClmError as exc:
        session.rollback()
        return _overview(request, principal, session, error=error_message(exc), status_code=exc.http_status)
    return redirect(HOME, "deleted")


def _thresholds(text: str) -> list[int]:
    entries = split_lines(text)
    if not all(entry.isdigit() for entry in entries):
        raise InvalidInputError("thresholds: whole numbers of days, comma-separated", field="thresholds")
    return [int(entry) for entry in entries] or list(service.DEFAULT_THRESHOLDS)


@router.post("/notifications/rules")
def create_rule(
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
    name: Annotated[str, Form()] = "",
    event: Annotated[str, Form()] = "",
    channel: Annotated[str, Form()] = "",
    thresholds: Annotated[str, Form()] = "",
    owner: Annotated[str, Form()] = "",
    team: Annotated[str, Form()] = "",
    tag: Annotated[str, Form()] = "",
    digest: Annotated[str, Form()] = "",
) -> Response:
    principal.require(Permission.NOTIFICATION_MANAGE)
    values = {
        "name": name,
        "event": event,
        "channel": channel,
        "thresholds": thresholds,
        "owner": owner,
        "team": team,
        "tag": tag,
        "digest": digest,
    }
    try:
        try:
            data = service.RuleCreate(
                name=name.strip(),
                event=event,  # type: ignore[arg-type]  # pydantic checks it against the known kinds
                channel=channel,
                thresholds=_thresholds(thresholds),
                owner=owner.strip() or None,
                team=team.strip() or None,
                tag=tag.strip() or None,
                digest=digest == "1",
            )
        except ValidationError as exc:
            raise InvalidInputError(validation_message(exc)) from None
        service.create_rule(session, audit_context(request, principal), data, now=platform.clock())
        session.commit()
    except SslClmError as exc:
        session.rollback()
        return _overview(
            request, principal, session, error=error_message(exc), values=values, status_code=exc.http_status
        )
    return redirect(HOME, "created")


@router.post("/notifications/rules/{rule_id}/delete")
def delete_rule(rule_id: int, request: Request, principal: WebPrincipal, session: SessionDep) -> Response:
    principal.require(Permission.NOTIFICATION_MANAGE)
    try:
        service.delete_rule(session, audit_context(request, principal), rule_id)
        session.commit()
    except SslClmError as exc:
        session.rollback()
        return _overview(request, principal, session, error=error_message(exc), status_code=exc.http_status)
    return redirect(HOME, "deleted")


@router.get("/notifications/log")
def delivery_log(request: Request, principal: CertReader, session: SessionDep) -> Response:
    params = request.query_params
    status = params.get("status") or None
    error = None
    if status and status not in LOG_STATUSES:
        error, status = f"status: choose one of {', '.join(LOG_STATUSES)}", None
    query = select(NotificationLog).order_by(NotificationLog.id.desc()).limit(PAGE_SIZE + 1)
    if status:
        query = query.where(NotificationLog.status == status)
    cursor = _cursor(params.get("cursor", ""))
    if cursor is not None:
        query = query.where(NotificationLog.id < cursor)
    rows = list(session.execute(query).scalars())
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    keep = f"&status={status}" if status else ""
    return render(
        request,
        "notification_log.html",
        {
            "entries": [service.log_view(row) for row in rows],
            "statuses": LOG_STATUSES,
            "status": status or "",
            "error": error,
            "next_url": f"{HOME}/log?cursor={rows[-1].id}{keep}" if more else None,
        },
        principal=principal,
        status_code=400 if error else 200,
    )


@router.get("/notifications/events")
def events(request: Request, principal: CertReader, session: SessionDep) -> Response:
    params = request.query_params
    kind = params.get("kind") or None
    error = None
    if kind and kind not in service.EVENTS:
        error, kind = f"kind: choose one of {', '.join(service.EVENTS)}", None
    query = select(NotificationEvent).order_by(NotificationEvent.id.desc()).limit(PAGE_SIZE + 1)
    if kind:
        query = query.where(NotificationEvent.kind == kind)
    cursor = _cursor(params.get("cursor", ""))
    if cursor is not None:
        query = query.where(NotificationEvent.id < cursor)
    rows = list(session.execute(query).scalars())
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    keep = f"&kind={kind}" if kind else ""
    return render(
        request,
        "notification_events.html",
        {
            "events": [service.event_view(row) for row in rows],
            "kinds": service.EVENTS,
            "kind": kind or "",
            "error": error,
            "next_url": f"{HOME}/events?cursor={rows[-1].id}{keep}" if more else None,
        },
        principal=principal,
        status_code=400 if error else 200,
    )
