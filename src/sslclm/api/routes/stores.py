"""Certificate stores (connections of kind cert-store), bindings of managed certificates to them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from sslclm.api.deps import AuditDep, PlatformDep, SessionDep, require
from sslclm.api.routes.certificates import json_response
from sslclm.api.routes.workflows import ConnectionInput, _connection
from sslclm.auth.permissions import Permission
from sslclm.deployments import service
from sslclm.spi.capabilities import ConnectorKind
from sslclm.workflows import connections

router = APIRouter(tags=["deployment"])
CanRead = Depends(require(Permission.CERT_READ))
CanDeploy = Depends(require(Permission.CERT_ISSUE))
CanConfigure = Depends(require(Permission.CONNECTION_MANAGE))


@router.get("/stores", dependencies=[CanRead], summary="Certificate stores")
def list_stores(session: SessionDep) -> Response:
    rows = connections.list_connections(session, ConnectorKind.CERT_STORE)
    return json_response([_connection(row) for row in rows])


@router.post("/stores", dependencies=[CanConfigure], status_code=201, summary="Add a certificate store")
def create_store(
    body: ConnectionInput, session: SessionDep, platform: PlatformDep, ctx: AuditDep
) -> Response:
    row = connections.create_connection(
        session,
        ctx,
        platform,
        kind=ConnectorKind.CERT_STORE.value,
        name=body.name,
        type_key=body.type,
        config=body.config,
    )
    session.commit()
    return json_response(_connection(row), status_code=201)


@router.get("/stores/{ref}", dependencies=[CanRead], summary="One store (secrets masked)")
def get_store(ref: str, session: SessionDep) -> Response:
    return json_response(_connection(service.store_connection(session, ref)))


@router.post("/stores/{ref}/check", dependencies=[CanConfigure], summary="Test the store's access")
def check_store(ref: str, session: SessionDep, platform: PlatformDep, ctx: AuditDep) -> Response:
    row = service.store_connection(session, ref)
    result = connections.check_connection(session, ctx, platform, row)
    session.commit()
    return json_response({"ok": result.ok, "message": result.message, "details": dict(result.details)})


@router.post(
    "/stores/{ref}/scan",
    dependencies=[Depends(require(Permission.CERT_WRITE))],
    status_code=202,
    summary="Read what the store holds into the inventory",
)
def scan_store(ref: str, session: SessionDep, platform: PlatformDep, ctx: AuditDep) -> Response:
    row, job = service.request_scan(session, ctx, platform, ref)
    session.commit()
    return json_response({"job_id": job.id, "store_id": row.id}, status_code=202)


class VerifyInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    host: str = Field(max_length=255)
    port: int = Field(ge=1, le=65535)
    sni: str | None = Field(None, max_length=255)


class BindingBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    managed_certificate: str = Field(max_length=255, description="Id or name of the managed certificate")
    store: str = Field(max_length=150, description="Id or name of the store")
    alias: str = Field(max_length=128)
    options: dict[str, Any] = Field(default_factory=dict)
    verify: VerifyInput | None = None


@router.get("/bindings", dependencies=[CanRead], summary="Store bindings")
def list_bindings(
    session: SessionDep, managed_certificate_id: int | None = None, store_id: int | None = None
) -> Response:
    rows = service.list_bindings(session, managed_id=managed_certificate_id, store_id=store_id)
    return json_response([service.describe_binding(b, name) for b, name in rows])


@router.post(
    "/bindings", dependencies=[CanDeploy], status_code=201, summary="Bind a managed certificate to a store"
)
def create_binding(body: BindingBody, session: SessionDep, platform: PlatformDep, ctx: AuditDep) -> Response:
    data = service.BindingInput(
        managed=body.managed_certificate,
        store=body.store,
        alias=body.alias,
        options=body.options,
        verify_host=body.verify.host if body.verify else None,
        verify_port=body.verify.port if body.verify else None,
        verify_sni=body.verify.sni if body.verify else None,
    )
    binding, job = service.create_binding(session, ctx, platform, data)
    session.commit()
    return json_response(
        {**service.describe_binding(binding), "job_id": job.id if job else None}, status_code=201
    )


@router.get("/bindings/{binding_id}", dependencies=[CanRead], summary="One binding and its deployments")
def get_binding(binding_id: int, session: SessionDep) -> Response:
    binding = service.get_binding(session, binding_id)
    deployments = [service.describe_deployment(d) for d in service.history(session, binding_id)]
    return json_response({**service.describe_binding(binding), "deployments": deployments})


@router.post(
    "/bindings/{binding_id}/redeploy", dependencies=[CanDeploy], status_code=202, summary="Deploy again"
)
def redeploy(binding_id: int, session: SessionDep, platform: PlatformDep, ctx: AuditDep) -> Response:
    job = service.redeploy(session, ctx, binding_id, now=platform.clock())
    session.commit()
    return json_response({"job_id": job.id, "binding_id": binding_id}, status_code=202)


@router.post(
    "/bindings/{binding_id}/undeploy",
    dependencies=[CanDeploy],
    status_code=202,
    summary="Remove from the store",
)
def undeploy(binding_id: int, session: SessionDep, platform: PlatformDep, ctx: AuditDep) -> Response:
    job = service.undeploy(session, ctx, binding_id, now=platform.clock())
    session.commit()
    return json_response({"job_id": job.id, "binding_id": binding_id}, status_code=202)
