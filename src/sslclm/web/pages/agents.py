"""Agents: the list with liveness and capabilities, one agent's jobs, revocation, and the one-time
registration tokens (created here, secret shown once, revocable while unused)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from sqlalchemy import or_, select
from sqlalchemy.orm import Session
from starlette.responses import Response

from sslclm.agents import queue, service
from sslclm.agents.models import Agent, AgentJob, AgentStatus
from sslclm.api.deps import PlatformDep, SessionDep
from sslclm.auth.permissions import Permission
from sslclm.auth.principal import Principal
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
from sslclm.web.forms import split_lines
from sslclm.web.pages.agent_stores import hosted_stores

router = APIRouter(include_in_schema=False)
STATUSES = [status.value for status in AgentStatus]
MAX_TOKEN_HOURS = 30 * 24


def _cursor(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _agents_page(session: Session, status: str | None, cursor: int | None) -> tuple[list[Agent], int | None]:
    """One page of agents by id (keyset), so the list stays quick however many hosts register."""
    query = select(Agent).order_by(Agent.id).limit(PAGE_SIZE + 1)
    if status:
        query = query.where(Agent.status == status)
    if cursor is not None:
        query = query.where(Agent.id > cursor)
    rows = list(session.execute(query).scalars())
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    return rows, rows[-1].id if more else None


def _render_list(
    request: Request,
    principal: Principal,
    session: Session,
    platform: PlatformDep,
    *,
    error: str | None = None,
    secret: str | None = None,
    values: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    params = request.query_params
    status = params.get("status") or None
    if status and status not in STATUSES:
        error, status_code, status = f"status: choose one of {', '.join(STATUSES)}", 400, None
    agents, next_cursor = _agents_page(session, status, _cursor(params.get("cursor", "")))
    now = platform.clock()
    tokens: list[dict[str, Any]] = []
    if principal.can(Permission.CONNECTION_MANAGE):
        tokens = [{"row": t, "state": service.token_state(t, now)} for t in service.list_tokens(session)]
    keep = f"&status={status}" if status else ""
    return render(
        request,
        "agents.html",
        {
            "agents": [service.describe(a) for a in agents],
            "statuses": STATUSES,
            "status": status or "",
            "tokens": tokens,
            "error": error,
            "secret": secret,
            "values": values or {},
            "next_url": f"/ui/agents?cursor={next_cursor}{keep}" if next_cursor else None,
        },
        principal=principal,
        status_code=status_code,
    )


@router.get("/agents")
def agents(request: Request, principal: CertReader, session: SessionDep, platform: PlatformDep) -> Response:
    return _render_list(request, principal, session, platform)


@router.post("/agents/tokens")
def create_token(
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
    description: Annotated[str, Form()] = "",
    labels: Annotated[str, Form()] = "",
    expires_in_hours: Annotated[str, Form()] = "24",
) -> Response:
    principal.require(Permission.CONNECTION_MANAGE)
    values = {"description": description, "labels": labels, "expires_in_hours": expires_in_hours}
    try:
        hours_text = expires_in_hours.strip() or "24"
        if not hours_text.isdigit() or not 1 <= int(hours_text) <= MAX_TOKEN_HOURS:
            raise InvalidInputError(
                f"expires in: a whole number of hours from 1 to {MAX_TOKEN_HOURS}", field="expires_in_hours"
            )
        issued = service.create_token(
            session,
            audit_context(request, principal),
            labels=split_lines(labels),
            description=description.strip(),
            ttl=timedelta(hours=int(hours_text)),
            now=platform.clock(),
        )
        session.commit()
    except SslClmError as exc:
        session.rollback()
        return _render_list(
            request,
            principal,
            session,
            platform,
            error=error_message(exc),
            values=values,
            status_code=exc.http_status,
        )
    # The secret is on this response only (no-store); the database keeps its hash.
    return _render_list(request, principal, session, platform, secret=issued.secret, status_code=201)


@router.post("/agents/tokens/{token_id}/revoke")
def revoke_token(
    token_id: int, request: Request, principal: WebPrincipal, session: SessionDep, platform: PlatformDep
) -> Response:
    principal.require(Permission.CONNECTION_MANAGE)
    try:
        service.revoke_token(session, audit_context(request, principal), token_id, now=platform.clock())
        session.commit()
    except SslClmError as exc:
        session.rollback()
        return _render_list(
            request, principal, session, platform, error=error_message(exc), status_code=exc.http_status
        )
    return redirect("/ui/agents", "revoked")


@router.get("/agents/{ref}")
def agent_page(ref: str, request: Request, principal: CertReader, session: SessionDep) -> Response:
    agent = service.get_agent(session, ref)
    cursor = _cursor(request.query_params.get("cursor", ""))
    query = (
        select(AgentJob)
        .where(or_(AgentJob.agent_id == agent.id, AgentJob.claimed_by == agent.id))
        .order_by(AgentJob.id.desc())
        .limit(PAGE_SIZE + 1)
    )
    if cursor is not None:
        query = query.where(AgentJob.id < cursor)
    jobs = list(session.execute(query).scalars())
    more = len(jobs) > PAGE_SIZE
    jobs = jobs[:PAGE_SIZE]
    stores, more_stores = hosted_stores(session, agent)
    return render(
        request,
        "agent.html",
        {
            "agent": service.describe(agent),
            "stores": stores,
            "more_stores": more_stores,
            "jobs": [queue.describe_job(job) for job in jobs],
            "next_url": f"/ui/agents/{agent.id}?cursor={jobs[-1].id}" if more else None,
        },
        principal=principal,
    )


@router.post("/agents/{ref}/revoke")
def revoke_agent(
    ref: str, request: Request, principal: WebPrincipal, session: SessionDep, platform: PlatformDep
) -> Response:
    principal.require(Permission.CONNECTION_MANAGE)
    agent = service.revoke_agent(session, audit_context(request, principal), ref, now=platform.clock())
    session.commit()
    return redirect(f"/ui/agents/{agent.id}", "revoked")
