"""Certificate stores hosted on agents: where a store runs, and validating it on its host."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from sslclm.agents import hosting, validation
from sslclm.api.deps import AuditDep, PlatformDep, SessionDep, require
from sslclm.api.routes.certificates import json_response
from sslclm.auth.permissions import Permission
from sslclm.deployments.service import store_connection

router = APIRouter(tags=["deployment"])
CanRead = Depends(require(Permission.CERT_READ))
CanConfigure = Depends(require(Permission.CONNECTION_MANAGE))
CanScan = Depends(require(Permission.CERT_WRITE))


class HostInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: str | None = Field(None, max_length=100, description="Name or id of the agent that runs the store")
    label: str | None = Field(None, max_length=64, description="Or: any agent carrying this label runs it")


@router.get("/stores/{ref}/host", dependencies=[CanRead], summary="Where the store runs: server or agent")
def get_host(ref: str, session: SessionDep) -> Response:
    return json_response(hosting.describe_host(session, store_connection(session, ref)))


@router.put(
    "/stores/{ref}/host",
    dependencies=[CanConfigure],
    summary="Host the store on an agent (or a label); neither: the server runs it",
)
def put_host(
    ref: str, body: HostInput, session: SessionDep, platform: PlatformDep, ctx: AuditDep
) -> Response:
    row = hosting.host_store(session, ctx, platform, ref, agent=body.agent, label=body.label)
    answer = hosting.describe_host(session, row)
    session.commit()
    return json_response(answer)


@router.post(
    "/stores/{ref}/validate",
    dependencies=[CanScan],
    status_code=202,
    summary="Read a hosted store on its agent: drift of its bindings, its entries into the inventory",
)
def validate_store(ref: str, session: SessionDep, platform: PlatformDep, ctx: AuditDep) -> Response:
    jobs = validation.validate_store(session, ctx, platform, ref)
    session.commit()
    return json_response({"agent_job_ids": [job.id for job in jobs]}, status_code=202)
