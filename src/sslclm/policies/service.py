"""Policy sets, exemptions and violation listings: the service behind the API and the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.core.clock import as_utc
from sslclm.errors import ConflictError, InvalidInputError, NotFoundError
from sslclm.inventory.models import Certificate
from sslclm.policies import engine
from sslclm.policies.checks import CHECKS, SEVERITY_RANK, Severity
from sslclm.policies.document import PolicyDocument, parse_document
from sslclm.policies.models import PolicyExemption, PolicySet, PolicyViolation


def describe_checks() -> list[dict[str, Any]]:
    return [
        {
            "check": c.name,
            "severity": c.severity.value,
            "description": c.description,
            "time_dependent": c.time_dependent,
            "params_schema": c.params.model_json_schema(),
        }
        for c in CHECKS.values()
    ]


def policy_view(row: PolicySet) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "position": row.position,
        "scope": {"kind": row.scope_kind, "value": row.scope_value},
        "enabled": row.enabled,
        "document": row.document,
        "source": row.source,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def get_policy(session: Session, name: str) -> PolicySet:
    row = session.execute(select(PolicySet).where(PolicySet.name == name)).scalar_one_or_none()
    if row is None:
        raise NotFoundError(f"no policy set named '{name}'", field="name")
    return row


def list_policies(session: Session) -> list[PolicySet]:
    return list(session.execute(select(PolicySet).order_by(PolicySet.position, PolicySet.id)).scalars())


def put_policy(
    session: Session, ctx: AuditContext, text: str, *, now: datetime, position: int | None = None
) -> tuple[PolicySet, bool]:
    """Creates or replaces the policy set named in the document; returns it and whether it is new."""
    document = parse_document(text)
    row = session.execute(select(PolicySet).where(PolicySet.name == document.name)).scalar_one_or_none()
    created = row is None
    if row is None:
        last = session.execute(select(func.max(PolicySet.position))).scalar()
        row = PolicySet(
            name=document.name,
            position=position if position is not None else (last or 0) + 1,
            created_by=ctx.actor,
            created_at=now,
        )
        session.add(row)
    elif position is not None:
        row.position = position
    _apply(row, document, text, now)
    session.flush()
    record(
        session,
        ctx,
        "policy.create" if created else "policy.update",
        "policy",
        row.name,
        {"scope": row.scope_kind, "checks": [c.check for c in document.checks], "enabled": row.enabled},
    )
    return row, created


def _apply(row: PolicySet, document: PolicyDocument, text: str, now: datetime) -> None:
    row.scope_kind = document.scope.kind
    row.scope_value = document.scope.value
    row.enabled = document.enabled
    row.document = document.model_dump(mode="json")
    row.source = text
    row.updated_at = now


def delete_policy(session: Session, ctx: AuditContext, name: str) -> None:
    row = get_policy(session, name)
    engine.drop_policy(session, name)
    session.delete(row)
    record(session, ctx, "policy.delete", "policy", name)


class ExemptionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    certificate_id: int | None = Field(default=None, description="None: every certificate.")
    policy: str | None = Field(default=None, max_length=100)
    check: str | None = Field(default=None, max_length=64)
    justification: str = Field(min_length=10, max_length=4000)
    approver: str = Field(min_length=1, max_length=255)
    expires_at: datetime


def create_exemption(
    session: Session, ctx: AuditContext, data: ExemptionCreate, *, now: datetime
) -> PolicyExemption:
    if data.check is not None and data.check not in CHECKS:
        raise InvalidInputError(f"unknown check '{data.check}'", field="check")
    if as_utc(data.expires_at) <= now:
        raise InvalidInputError("expires_at must be in the future", field="expires_at")
    if data.certificate_id is None and data.check is None and data.policy is None:
        raise InvalidInputError(
            "an exemption names a certificate, a policy or a check", field="certificate_id"
        )
    if data.certificate_id is not None and session.get(Certificate, data.certificate_id) is None:
        raise NotFoundError(f"no certificate {data.certificate_id}", field="certificate_id")
    if data.approver == ctx.actor:
        raise ConflictError("the approver must be someone other than the requester", field="approver")
    row = PolicyExemption(**data.model_dump(), created_by=ctx.actor, created_at=now)
    session.add(row)
    session.flush()
    record(
        session,
        ctx,
        "policy.exemption.create",
        "exemption",
        row.id,
        {
            "certificate_id": row.certificate_id,
            "policy": row.policy,
            "check": row.check,
            "approver": row.approver,
        },
    )
    _refresh_for(session, data.certificate_id, now)
    return row


def _refresh_for(session: Session, certificate_id: int | None, now: datetime) -> None:
    if certificate_id is not None:
        engine.evaluate_certificates(session, [certificate_id], now=now)
    else:
        engine.reevaluate_all(session, now=now)


def delete_exemption(session: Session, ctx: AuditContext, exemption_id: int, *, now: datetime) -> None:
    row = session.get(PolicyExemption, exemption_id)
    if row is None:
        raise NotFoundError(f"no exemption {exemption_id}", field="exemption_id")
    certificate_id = row.certificate_id
    session.delete(row)
    session.flush()
    record(session, ctx, "policy.exemption.delete", "exemption", exemption_id)
    _refresh_for(session, certificate_id, now)


def exemption_view(row: PolicyExemption) -> dict[str, Any]:
    return {
        "id": row.id,
        "certificate_id": row.certificate_id,
        "policy": row.policy,
        "check": row.check,
        "justification": row.justification,
        "approver": row.approver,
        "expires_at": row.expires_at,
        "created_by": row.created_by,
        "created_at": row.created_at,
    }


class ViolationFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    severity: Severity | None = Field(default=None, description="This severity or worse.")
    check: str | None = Field(default=None, max_length=64)
    policy: str | None = Field(default=None, max_length=100)
    certificate_id: int | None = None
    owner: str | None = Field(default=None, max_length=255)
    team: str | None = Field(default=None, max_length=255)
    include_exempted: bool = False


VIOLATION_COLUMNS = (
    PolicyViolation.id,
    PolicyViolation.certificate_id,
    Certificate.common_name,
    Certificate.owner,
    Certificate.team,
    Certificate.not_after,
    PolicyViolation.policy,
    PolicyViolation.check,
    PolicyViolation.severity,
    PolicyViolation.reason,
    PolicyViolation.exemption_id,
    PolicyViolation.first_seen,
    PolicyViolation.updated_at,
)


def violations_select(flt: ViolationFilter) -> Select[Any]:
    columns: tuple[Any, ...] = VIOLATION_COLUMNS
    stmt: Select[Any] = select(*columns).join(Certificate, Certificate.id == PolicyViolation.certificate_id)
    if flt.severity is not None:
        stmt = stmt.where(PolicyViolation.severity_rank >= SEVERITY_RANK[flt.severity])
    if not flt.include_exempted:
        stmt = stmt.where(PolicyViolation.exemption_id.is_(None))
    for column, value in (
        (PolicyViolation.check, flt.check),
        (PolicyViolation.policy, flt.policy),
        (PolicyViolation.certificate_id, flt.certificate_id),
        (Certificate.owner, flt.owner),
        (Certificate.team, flt.team),
    ):
        if value is not None:
            stmt = stmt.where(column == value)
    return stmt


def list_violations(
    session: Session, flt: ViolationFilter, *, limit: int = 100, after_id: int | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """Newest first, keyset-paginated by id; returns the page and the cursor for the next one."""
    if not 1 <= limit <= 1000:
        raise InvalidInputError("limit must be between 1 and 1000", field="limit")
    stmt = violations_select(flt)
    if after_id is not None:
        stmt = stmt.where(PolicyViolation.id < after_id)
    rows = session.execute(stmt.order_by(PolicyViolation.id.desc()).limit(limit + 1)).all()
    items = [dict(row._mapping) for row in rows[:limit]]
    return items, (items[-1]["id"] if len(rows) > limit else None)


def iter_violations(session: Session, flt: ViolationFilter, batch: int = 1000) -> Iterator[dict[str, Any]]:
    after: int | None = None
    while True:
        items, after = list_violations(session, flt, limit=batch, after_id=after)
        yield from items
        if after is None:
            return
