"""Stores hosted on agents: where a store runs, hosting it on an agent or a label (or back on the
server), and validating a hosted store on its agent, through the same services as the API."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from sqlalchemy import false, or_, select
from sqlalchemy.orm import Session
from starlette.responses import Response

from sslclm.agents import hosting, validation
from sslclm.agents.models import Agent, AgentStatus
from sslclm.api.deps import PlatformDep, SessionDep
from sslclm.auth.permissions import Permission
from sslclm.auth.principal import Principal
from sslclm.deployments.service import store_connection
from sslclm.errors import ConflictError, InvalidInputError, SslClmError
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
from sslclm.workflows.models import Connection

router = APIRouter(include_in_schema=False)
# The agent select stays a usable size; a name beyond it can still be typed through the API or CLI.
MAX_CHOICES = 200
SCAN_CHUNK = 500
MAX_AGENT_REF = 100


def runs_on(session: Session, connection: Connection) -> str:
    """Where the store runs, for a list: a store whose agent record is gone must not break the page."""
    try:
        return str(hosting.describe_host(session, connection)["runs_on"])
    except ConflictError:
        return f"agent {connection.agent_id} (no longer registered)"


def eligible_agents(session: Session, type_key: str) -> list[str]:
    """Names of the agents, not revoked, that declare ``type_key``: read by id in chunks, never all."""
    names: list[str] = []
    after = 0
    while len(names) < MAX_CHOICES:
        rows = session.execute(
            select(Agent.id, Agent.name, Agent.capabilities)
            .where(Agent.status != AgentStatus.REVOKED.value, Agent.id > after)
            .order_by(Agent.id)
            .limit(SCAN_CHUNK)
        ).all()
        names += [row.name for row in rows if type_key in ((row.capabilities or {}).get("connectors") or [])]
        if len(rows) < SCAN_CHUNK:
            break
        after = rows[-1].id
    return sorted(names[:MAX_CHOICES])


def hosted_stores(session: Session, agent: Agent) -> tuple[list[dict[str, Any]], bool]:
    """The stores ``agent`` runs, by id or through one of its labels (one page of them, and whether more)."""
    labels = list(agent.labels or [])
    rows = list(
        session.execute(
            select(Connection)
            .where(
                Connection.kind == ConnectorKind.CERT_STORE.value,
                or_(
                    Connection.agent_id == agent.id,
                    Connection.agent_label.in_(labels) if labels else false(),
                ),
            )
            .order_by(Connection.name)
            .limit(PAGE_SIZE + 1)
        ).scalars()
    )
    stores = [
        {
            "id": row.id,
            "name": row.name,
            "type": row.type_key,
            "via": "this agent" if row.agent_id == agent.id else f"label '{row.agent_label}'",
        }
        for row in rows[:PAGE_SIZE]
    ]
    return stores, len(rows) > PAGE_SIZE


def _render(
    request: Request,
    principal: Principal,
    session: Session,
    connection_id: int,
    *,
    error: str | None = None,
    values: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    store = store_connection(session, connection_id)
    manage = principal.can(Permission.CONNECTION_MANAGE)
    return render(
        request,
        "store_host.html",
        {
            "store": store,
            "runs_on": runs_on(session, store),
            "hosted": store.hosted_on_agent,
            "manage": manage,
            "agents": eligible_agents(session, store.type_key) if manage else [],
            "max_choices": MAX_CHOICES,
            "error": error,
            "values": values or {},
        },
        principal=principal,
        status_code=status_code,
    )


@router.get("/connectors/{connection_id}/host")
def host_page(connection_id: int, request: Request, principal: CertReader, session: SessionDep) -> Response:
    return _render(request, principal, session, connection_id)


@router.post("/connectors/{connection_id}/host")
def host(
    connection_id: int,
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
    agent: Annotated[str, Form()] = "",
    label: Annotated[str, Form()] = "",
) -> Response:
    principal.require(Permission.CONNECTION_MANAGE)
    values = {"agent": agent, "label": label}
    try:
        if len(agent) > MAX_AGENT_REF:
            raise InvalidInputError(f"an agent name is at most {MAX_AGENT_REF} characters", field="agent")
        # Both fields empty is the "run it on the server" choice, as a PUT with neither is in the API.
        hosting.host_store(
            session,
            audit_context(request, principal),
            platform,
            connection_id,
            agent=agent.strip() or None,
            label=label.strip() or None,
        )
        session.commit()
    except SslClmError as exc:
        session.rollback()
        return _render(
            request,
            principal,
            session,
            connection_id,
            error=error_message(exc),
            values=values,
            status_code=exc.http_status,
        )
    return redirect(f"/ui/connectors/{connection_id}/host", "updated")


@router.post("/connectors/{connection_id}/validate")
def validate(
    connection_id: int, request: Request, principal: WebPrincipal, session: SessionDep, platform: PlatformDep
) -> Response:
    principal.require(Permission.CERT_WRITE)
    try:
        validation.validate_store(session, audit_context(request, principal), platform, connection_id)
        session.commit()
    except SslClmError as exc:
        session.rollback()
        return _render(
            request, principal, session, connection_id, error=error_message(exc), status_code=exc.http_status
        )
    return redirect(f"/ui/connectors/{connection_id}/host", "validate")
