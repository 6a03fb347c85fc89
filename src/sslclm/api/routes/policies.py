"""Policy sets (YAML or JSON), violations, exemptions, evaluation and the enrollment pre-check."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.responses import Response

from sslclm.api.deps import AuditDep, PlatformDep, SessionDep, require
from sslclm.api.routes.certificates import json_response
from sslclm.auth.permissions import Permission
from sslclm.errors import InvalidInputError
from sslclm.policies import enrollment, service
from sslclm.policies.models import PolicyExemption
from sslclm.reporting.service import to_csv

router = APIRouter(prefix="/policies", tags=["policies"])
CanRead = Depends(require(Permission.CERT_READ))
CanManage = Depends(require(Permission.POLICY_MANAGE))
MAX_DOCUMENT = 256 * 1024


@router.get("/checks", dependencies=[CanRead], summary="The built-in checks and their parameters")
def list_checks() -> Response:
    return json_response(service.describe_checks())


@router.get("", dependencies=[CanRead], summary="Policy sets in evaluation order")
def list_policies(session: SessionDep) -> Response:
    return json_response([service.policy_view(p) for p in service.list_policies(session)])


@router.put(
    "",
    dependencies=[CanManage],
    summary="Create or replace a policy set from a YAML or JSON document (the body)",
)
async def put_policy(request: Request, session: SessionDep, platform: PlatformDep, ctx: AuditDep) -> Response:
    raw = await request.body()
    if len(raw) > MAX_DOCUMENT:
        raise InvalidInputError("the policy document is larger than 256 KiB", field="document")
    now = platform.clock()
    row, created = service.put_policy(session, ctx, raw.decode("utf-8", "replace"), now=now)
    # A small inventory is evaluated in this request, a large one by a job (service.reevaluate).
    evaluation = service.reevaluate(session, now)
    session.commit()
    return json_response({**service.policy_view(row), "evaluation": evaluation}, 201 if created else 200)


class ViolationQuery(service.ViolationFilter):
    limit: int = Field(default=100, ge=1, le=1000)
    after_id: int | None = Field(default=None, description="next_after_id of the previous page.")


class ViolationExport(service.ViolationFilter):
    format: Literal["csv", "json"] = "csv"


@router.get("/violations", dependencies=[CanRead], summary="Open violations, newest first (keyset by id)")
def list_violations(session: SessionDep, params: Annotated[ViolationQuery, Query()]) -> Response:
    flt = service.ViolationFilter(**params.model_dump(exclude={"limit", "after_id"}))
    items, next_id = service.list_violations(session, flt, limit=params.limit, after_id=params.after_id)
    return json_response({"items": items, "next_after_id": next_id})


@router.get("/violations/export", dependencies=[CanRead], summary="Every matching violation as CSV or JSON")
def export_violations(session: SessionDep, params: Annotated[ViolationExport, Query()]) -> Response:
    rows = list(
        service.iter_violations(session, service.ViolationFilter(**params.model_dump(exclude={"format"})))
    )
    if params.format == "json":
        return json_response(rows)
    return Response(to_csv(rows), media_type="text/csv")


@router.post("/evaluate", dependencies=[CanManage], summary="Re-evaluate the whole inventory now")
def evaluate(session: SessionDep, platform: PlatformDep) -> Response:
    evaluation = service.reevaluate(session, platform.clock())
    session.commit()
    return json_response(evaluation)


class EnrollmentCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    names: list[str] = Field(min_length=1, max_length=100)
    key_type: str = Field(default="EC-P256", max_length=16)
    validity_days: int = Field(ge=1, le=3650)
    profile: str | None = None
    owner: str | None = None
    team: str | None = None
    environment: str | None = None
    tags: list[str] = Field(default_factory=list)


@router.post(
    "/check-enrollment",
    dependencies=[Depends(require(Permission.CERT_ISSUE))],
    summary="What policy says about an enrollment request",
)
def check_enrollment(body: EnrollmentCheck, session: SessionDep, platform: PlatformDep) -> Response:
    found = enrollment.check_enrollment(session, now=platform.clock(), **body.model_dump())
    items: list[dict[str, Any]] = [
        {
            "check": v.check,
            "severity": v.severity.value,
            "reason": v.reason,
            "blocking": v.severity in enrollment.BLOCKING,
        }
        for v in found
    ]
    return json_response({"allowed": not any(i["blocking"] for i in items), "violations": items})


@router.get("/exemptions", dependencies=[CanRead], summary="Exemptions")
def list_exemptions(session: SessionDep) -> Response:
    rows = session.execute(select(PolicyExemption).order_by(PolicyExemption.id)).scalars()
    return json_response([service.exemption_view(r) for r in rows])


@router.post("/exemptions", dependencies=[CanManage], status_code=201, summary="Grant an exemption")
def create_exemption(
    body: service.ExemptionCreate, session: SessionDep, platform: PlatformDep, ctx: AuditDep
) -> Response:
    row, evaluation = service.create_exemption(session, ctx, body, now=platform.clock())
    session.commit()
    return json_response({**service.exemption_view(row), "evaluation": evaluation}, 201)


@router.delete("/exemptions/{exemption_id}", dependencies=[CanManage], summary="Withdraw an exemption")
def delete_exemption(
    exemption_id: int, session: SessionDep, platform: PlatformDep, ctx: AuditDep
) -> Response:
    evaluation = service.delete_exemption(session, ctx, exemption_id, now=platform.clock())
    session.commit()
    return json_response({"deleted": exemption_id, "evaluation": evaluation})


@router.get("/{name}", dependencies=[CanRead], summary="One policy set")
def get_policy(name: str, session: SessionDep, format: Literal["json", "yaml"] = "json") -> Response:
    row = service.get_policy(session, name)
    if format == "yaml":
        return Response(row.source, media_type="application/yaml")
    return json_response(service.policy_view(row))


@router.delete("/{name}", dependencies=[CanManage], summary="Delete a policy set and its violations")
def delete_policy(name: str, session: SessionDep, platform: PlatformDep, ctx: AuditDep) -> Response:
    evaluation = service.delete_policy(session, ctx, name, now=platform.clock())
    session.commit()
    return json_response({"deleted": name, "evaluation": evaluation})
