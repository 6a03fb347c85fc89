"""Issuance and renewal: connector types, CA connections, profiles, managed certificates, approvals."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from sslclm.api.deps import AuditDep, CurrentPrincipal, PlatformDep, SessionDep, require
from sslclm.api.routes.certificates import json_response
from sslclm.auth.permissions import Permission
from sslclm.errors import InvalidInputError, NotFoundError
from sslclm.inventory import service as inventory
from sslclm.spi.capabilities import ConnectorKind
from sslclm.spi.types import RevocationReason
from sslclm.workflows import approvals, connections, managed, planner, profiles

router = APIRouter(tags=["issuance"])
# Served outside /api/v1, where ACME servers look for http-01 answers (RFC 8555 8.3).
challenge_router = APIRouter(tags=["acme"])
CanRead = Depends(require(Permission.CERT_READ))
CanIssue = Depends(require(Permission.CERT_ISSUE))
CanConfigure = Depends(require(Permission.CONNECTION_MANAGE))
CanApprove = Depends(require(Permission.APPROVE))


def _connection(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "kind": row.kind,
        "name": row.name,
        "type": row.type_key,
        "config": connections.masked_config(row),
        "enabled": row.enabled,
        "last_check_at": row.last_check_at,
        "last_check_ok": row.last_check_ok,
        "last_check_message": row.last_check_message,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


@router.get(
    "/connector-types", dependencies=[CanRead], summary="Installed connector types and their config schemas"
)
def connector_types(kind: ConnectorKind | None = None) -> Response:
    return json_response(connections.connector_registry().describe(kind))


class ConnectionInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=150)
    type: str = Field(max_length=64, description="Connector type key, e.g. local or acme.")
    config: dict[str, Any] = Field(default_factory=dict)


class ConnectionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any]


@router.get("/ca-connections", dependencies=[CanRead], summary="CA connections")
def list_ca_connections(session: SessionDep) -> Response:
    rows = connections.list_connections(session, ConnectorKind.CA_GATEWAY)
    return json_response([_connection(row) for row in rows])


@router.post("/ca-connections", dependencies=[CanConfigure], status_code=201, summary="Add a CA connection")
def create_ca_connection(
    body: ConnectionInput, request: Request, session: SessionDep, platform: PlatformDep, ctx: AuditDep
) -> Response:
    row = connections.create_connection(
        session,
        ctx,
        platform,
        kind=ConnectorKind.CA_GATEWAY.value,
        name=body.name,
        type_key=body.type,
        config=body.config,
    )
    # The built-in CA publishes its CRL here; certificates carry this URL as their CRL distribution point.
    connections.ensure_crl_url(
        session, ctx, platform, row, platform.settings.public_url or str(request.base_url)
    )
    session.commit()
    return json_response(_connection(row), status_code=201)


@router.get(
    "/ca-connections/{connection_id}/crl",
    summary="The built-in CA's CRL (public, as relying parties fetch it)",
)
def certificate_revocation_list(connection_id: int, session: SessionDep, platform: PlatformDep) -> Response:
    row = connections.get_connection(session, connection_id, ConnectorKind.CA_GATEWAY)
    gateway = connections.build_ca_gateway(platform, row)
    crl_der = getattr(gateway, "crl_der", None)
    if crl_der is None:
        raise NotFoundError("this CA connection does not publish a CRL here", field="connection_id")
    return Response(crl_der(), media_type="application/pkix-crl", headers={"Cache-Control": "max-age=300"})


@router.get("/ca-connections/{ref}", dependencies=[CanRead], summary="One CA connection (secrets masked)")
def get_ca_connection(ref: str, session: SessionDep) -> Response:
    return json_response(_connection(connections.get_connection(session, ref, ConnectorKind.CA_GATEWAY)))


@router.patch("/ca-connections/{ref}", dependencies=[CanConfigure], summary="Change a CA connection's config")
def update_ca_connection(
    ref: str, body: ConnectionUpdate, session: SessionDep, platform: PlatformDep, ctx: AuditDep
) -> Response:
    row = connections.get_connection(session, ref, ConnectorKind.CA_GATEWAY)
    connections.update_connection(session, ctx, platform, row, body.config)
    session.commit()
    return json_response(_connection(row))


@router.post(
    "/ca-connections/{ref}/check", dependencies=[CanConfigure], summary="Test credentials and reachability"
)
def check_ca_connection(ref: str, session: SessionDep, platform: PlatformDep, ctx: AuditDep) -> Response:
    row = connections.get_connection(session, ref, ConnectorKind.CA_GATEWAY)
    result = connections.check_connection(session, ctx, platform, row)
    session.commit()
    return json_response({"ok": result.ok, "message": result.message, "details": dict(result.details)})


@router.get("/profiles", dependencies=[CanRead], summary="Enrollment profiles")
def list_profiles(session: SessionDep) -> Response:
    return json_response([profiles.describe(p) for p in profiles.list_profiles(session)])


@router.post(
    "/profiles", dependencies=[CanConfigure], status_code=201, summary="Create an enrollment profile"
)
def create_profile(
    body: profiles.ProfileInput, session: SessionDep, platform: PlatformDep, ctx: AuditDep
) -> Response:
    profile = profiles.create_profile(session, ctx, platform, body)
    session.commit()
    return json_response(profiles.describe(profile), status_code=201)


@router.get("/profiles/{ref}", dependencies=[CanRead], summary="One profile")
def get_profile(ref: str, session: SessionDep) -> Response:
    return json_response(profiles.describe(profiles.get_profile(session, ref)))


@router.get("/managed-certificates", dependencies=[CanRead], summary="Managed certificates, by id")
def list_managed(
    session: SessionDep,
    status: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    rows = managed.list_managed(session, status=status, limit=limit + 1, after_id=cursor)
    more = len(rows) > limit
    rows = rows[:limit]
    return json_response(
        {"items": [managed.describe(m) for m in rows], "next_cursor": rows[-1].id if more and rows else None}
    )


class EnrollInput(managed.ManagedInput):
    enroll: bool = Field(default=True, description="Enqueue the first issuance now.")


@router.post("/managed-certificates", dependencies=[CanIssue], status_code=202, summary="Declare and enroll")
def create_managed(body: EnrollInput, session: SessionDep, platform: PlatformDep, ctx: AuditDep) -> Response:
    data = managed.ManagedInput(**body.model_dump(exclude={"enroll"}))
    row, job = managed.create_managed(session, ctx, platform, data, enroll=body.enroll)
    session.commit()
    return json_response({**managed.describe(row), "job_id": job.id if job else None}, status_code=202)


@router.get(
    "/managed-certificates/{ref}", dependencies=[CanRead], summary="One managed certificate and its lineage"
)
def get_managed(ref: str, session: SessionDep) -> Response:
    row = managed.get_managed(session, ref)
    return json_response({**managed.describe(row), "issuances": managed.lineage(session, row.id)})


@router.post(
    "/managed-certificates/{ref}/renew", dependencies=[CanIssue], status_code=202, summary="Renew now"
)
def renew_managed(ref: str, session: SessionDep, platform: PlatformDep, ctx: AuditDep) -> Response:
    row = managed.get_managed(session, ref)
    job = managed.request_issuance(session, ctx, platform, row, reason="renew")
    session.commit()
    return json_response({"job_id": job.id, "managed_certificate_id": row.id}, status_code=202)


class RevokeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: RevocationReason = RevocationReason.UNSPECIFIED
    stop_renewal: bool = True


@router.post(
    "/managed-certificates/{ref}/revoke",
    dependencies=[CanIssue],
    status_code=202,
    summary="Revoke the current certificate",
)
def revoke_managed(
    ref: str, body: RevokeInput, session: SessionDep, platform: PlatformDep, ctx: AuditDep
) -> Response:
    row = managed.get_managed(session, ref)
    if row.current_certificate_id is None:
        raise InvalidInputError(
            "this managed certificate has no certificate yet", field="managed_certificate"
        )
    cert = inventory.get_certificate(session, row.current_certificate_id)
    job = managed.request_revocation(
        session, ctx, platform, cert, body.reason, stop_renewal=body.stop_renewal
    )
    session.commit()
    return json_response({"job_id": job.id, "certificate_id": cert.id}, status_code=202)


@router.post(
    "/certificates/{ref}/revoke",
    dependencies=[CanIssue],
    status_code=202,
    summary="Revoke a certificate the platform issued",
)
def revoke_certificate(
    ref: str, body: RevokeInput, session: SessionDep, platform: PlatformDep, ctx: AuditDep
) -> Response:
    cert = inventory.get_certificate(session, ref)
    job = managed.request_revocation(
        session, ctx, platform, cert, body.reason, stop_renewal=body.stop_renewal
    )
    session.commit()
    return json_response({"job_id": job.id, "certificate_id": cert.id}, status_code=202)


class AdoptInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: str
    name: str | None = Field(default=None, max_length=255)


@router.post(
    "/certificates/{ref}/adopt",
    dependencies=[CanIssue],
    status_code=201,
    summary="Take a discovered certificate into management",
)
def adopt_certificate(
    ref: str, body: AdoptInput, session: SessionDep, platform: PlatformDep, ctx: AuditDep
) -> Response:
    cert = inventory.get_certificate(session, ref)
    row = managed.adopt(session, ctx, platform, cert, profile_ref=body.profile, name=body.name)
    session.commit()
    return json_response(managed.describe(row), status_code=201)


@router.get(
    "/approvals", dependencies=[CanRead], summary="Issuance requests waiting for (or given) a decision"
)
def list_approvals(
    session: SessionDep, status: Annotated[str | None, Query(max_length=16)] = "pending"
) -> Response:
    return json_response([approvals.describe(a) for a in approvals.list_approvals(session, status=status)])


class DecisionInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=2000)


@router.post(
    "/approvals/{approval_id}/approve", dependencies=[CanApprove], summary="Approve another person's request"
)
def approve(
    approval_id: int, session: SessionDep, platform: PlatformDep, ctx: AuditDep, principal: CurrentPrincipal
) -> Response:
    row = approvals.approve(session, ctx, platform, approvals.get_approval(session, approval_id), principal)
    session.commit()
    return json_response(approvals.describe(row))


@router.post(
    "/approvals/{approval_id}/reject", dependencies=[CanApprove], summary="Reject a request, with a reason"
)
def reject(
    approval_id: int,
    body: DecisionInput,
    session: SessionDep,
    platform: PlatformDep,
    ctx: AuditDep,
    principal: CurrentPrincipal,
) -> Response:
    row = approvals.reject(
        session, ctx, platform, approvals.get_approval(session, approval_id), principal, body.reason or ""
    )
    session.commit()
    return json_response(approvals.describe(row))


@router.get("/renewals/forecast", dependencies=[CanRead], summary="Planned renewals per day")
def renewals_forecast(
    session: SessionDep, platform: PlatformDep, days: Annotated[int, Query(ge=1, le=366)] = 90
) -> Response:
    return json_response(planner.forecast(session, now=platform.clock(), days=days))


@challenge_router.get(
    "/.well-known/acme-challenge/{token}",
    summary="ACME http-01 responder (public: the ACME server fetches it without credentials)",
    response_class=Response,
)
def acme_http01(token: str, session: SessionDep, platform: PlatformDep) -> Response:
    answer = connections.http01_answer(session, platform, token)
    if answer is None:
        return Response(b"no such challenge\n", status_code=404, media_type="text/plain")
    return Response(answer, media_type="application/octet-stream")
