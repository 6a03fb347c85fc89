"""Agents and their registration tokens; work dispatched to an agent (the agents' own endpoints are on
the agent listener, see ``sslclm.agents.listener``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from sslclm.agents import queue, service
from sslclm.agents.tasks import ENROLL_TASK
from sslclm.api.deps import AuditDep, PlatformDep, SessionDep, require
from sslclm.api.routes.certificates import json_response
from sslclm.audit.service import record
from sslclm.auth.permissions import Permission
from sslclm.jobs.queue import enqueue
from sslclm.protocol import DISCOVER_FILESYSTEM
from sslclm.workflows.recording import load_target

router = APIRouter(tags=["agents"])
CanRead = Depends(require(Permission.CERT_READ))
CanManage = Depends(require(Permission.CONNECTION_MANAGE))
CanDiscover = Depends(require(Permission.CERT_WRITE))
CanIssue = Depends(require(Permission.CERT_ISSUE))


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    labels: list[str] = Field(default_factory=list, max_length=50)
    description: str = Field(default="", max_length=200)
    expires_in_seconds: int = Field(default=86_400, ge=1, le=30 * 86_400)


class DiscoverIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(default_factory=list, max_length=1000)
    include: list[str] | None = None
    exclude: list[str] = Field(default_factory=list)
    max_depth: int = Field(default=64, ge=0, le=1000)


class EnrollIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    managed_certificate_id: int = Field(ge=1)
    store: str = Field(max_length=100, description="A pem-files store named in the agent's configuration")
    alias: str = Field(max_length=128)


@router.get("/agents", dependencies=[CanRead], summary="Registered agents")
def list_agents(session: SessionDep, status: str | None = None, label: str | None = None) -> Response:
    return json_response(
        [service.describe(a) for a in service.list_agents(session, status=status, label=label)]
    )


@router.get("/agents/{ref}", dependencies=[CanRead], summary="One agent")
def get_agent(ref: str, session: SessionDep) -> Response:
    return json_response(service.describe(service.get_agent(session, ref)))


@router.post("/agents/{ref}/revoke", dependencies=[CanManage], summary="Revoke an agent")
def revoke_agent(ref: str, session: SessionDep, platform: PlatformDep, ctx: AuditDep) -> Response:
    agent = service.revoke_agent(session, ctx, ref, now=platform.clock())
    session.commit()
    return json_response(service.describe(agent))


@router.get("/agents/{ref}/jobs", dependencies=[CanRead], summary="An agent's jobs")
def list_agent_jobs(ref: str, session: SessionDep) -> Response:
    agent = service.get_agent(session, ref)
    return json_response([queue.describe_job(job) for job in queue.list_jobs(session, agent_id=agent.id)])


@router.post(
    "/agents/{ref}/discover",
    dependencies=[CanDiscover],
    status_code=202,
    summary="Discover certificates in files on the agent's host",
)
def discover(
    ref: str, body: DiscoverIn, session: SessionDep, platform: PlatformDep, ctx: AuditDep
) -> Response:
    agent = service.get_agent(session, ref)
    job = queue.dispatch(
        session, ctx, kind=DISCOVER_FILESYSTEM, payload=body.model_dump(), agent=agent, now=platform.clock()
    )
    session.commit()
    return json_response(queue.describe_job(job), status_code=202)


@router.post(
    "/agents/{ref}/enroll",
    dependencies=[CanIssue],
    status_code=202,
    summary="Issue a managed certificate with a key made on the agent, and install it in its PEM store",
)
def enroll(ref: str, body: EnrollIn, session: SessionDep, platform: PlatformDep, ctx: AuditDep) -> Response:
    agent = service.get_agent(session, ref)
    target = load_target(session, body.managed_certificate_id)
    payload: dict[str, Any] = {
        "managed_id": target.managed_id,
        "agent_id": agent.id,
        "store": body.store,
        "alias": body.alias,
        "requested_by": ctx.actor,
    }
    job = enqueue(
        session,
        ENROLL_TASK,
        payload,
        now=platform.clock(),
        dedupe_key=f"agent-enroll:{agent.id}:{body.store}:{body.alias}",
        target=f"managed_certificate:{target.managed_id}",
    )
    record(session, ctx, "agent.enroll-requested", "agent", agent.id, {"job_id": job.id, **payload})
    session.commit()
    return json_response({"job_id": job.id, "agent_id": agent.id}, status_code=202)


@router.get("/agent-tokens", dependencies=[CanManage], summary="Registration tokens")
def list_tokens(session: SessionDep, platform: PlatformDep, include_finished: bool = False) -> Response:
    now = platform.clock()
    return json_response(
        [
            _token(t, service.token_state(t, now))
            for t in service.list_tokens(session, include_finished=include_finished)
        ]
    )


@router.post(
    "/agent-tokens", dependencies=[CanManage], status_code=201, summary="Create a registration token"
)
def create_token(body: TokenIn, session: SessionDep, platform: PlatformDep, ctx: AuditDep) -> Response:
    issued = service.create_token(
        session,
        ctx,
        labels=body.labels,
        description=body.description,
        ttl=timedelta(seconds=body.expires_in_seconds),
        now=platform.clock(),
    )
    session.commit()
    return json_response({**_token(issued.row, "active"), "token": issued.secret}, status_code=201)


@router.post(
    "/agent-tokens/{token_id}/revoke", dependencies=[CanManage], summary="Revoke a registration token"
)
def revoke_token(token_id: int, session: SessionDep, platform: PlatformDep, ctx: AuditDep) -> Response:
    token = service.revoke_token(session, ctx, token_id, now=platform.clock())
    session.commit()
    return json_response(_token(token, service.token_state(token, platform.clock())))


def _token(token: Any, state: str) -> dict[str, Any]:
    return {
        "id": token.id,
        "state": state,
        "labels": list(token.labels or []),
        "description": token.description,
        "created_by": token.created_by,
        "expires_at": token.expires_at,
        "used_at": token.used_at,
        "used_by_agent_id": token.used_by_agent_id,
    }
