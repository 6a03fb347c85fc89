"""Policy sets, exemptions and violation listings: the service behind the API, the CLI and the web
console.

Every change re-evaluates what it may change by one rule (:func:`reevaluate`, :func:`delete_policy`,
:func:`create_exemption`, :func:`delete_exemption`): a policy set put or deleted with no set left
affects every certificate, a deleted set the certificates it flagged, an exemption those with a
violation it covers. Up to ``SYNC_EVALUATION_LIMIT`` certificates (for an exemption or a deleted
set: violations) are evaluated in the caller's transaction; more are left to a
``policies.reevaluate`` job, so no request walks a large inventory.
"""

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
from sslclm.jobs import queue
from sslclm.policies import engine, incremental
from sslclm.policies.checks import CHECKS, SEVERITY_RANK, Severity
from sslclm.policies.document import PolicyDocument, parse_document
from sslclm.policies.engine import release_exemption
from sslclm.policies.models import (
    SEVERE_RANK,
    PolicyExemption,
    PolicySet,
    PolicyViolation,
    severe_condition,
)
from sslclm.policies.tasks import REEVALUATE_TASK

# Past this many certificates a re-evaluation runs as a job, not in the request or command that
# caused it (a full pass costs about a minute per million certificates and holds a write lock).
SYNC_EVALUATION_LIMIT = 20_000
FULL_JOB_KEY = "policies:reevaluate-full"


def describe_checks() -> list[dict[str, Any]]:
    return [
        {
            "check": c.name,
            "severity": c.severity.value,
            "description": c.description,
            "time_dependent": c.time_dependent,
            "opt_in": c.opt_in,
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


def reevaluate(session: Session, now: datetime) -> dict[str, Any]:
    """Re-evaluates every certificate after the policy sets changed: a small inventory here, a
    large one in a job. Returns the evaluation's figures, or ``queued_job_id``."""
    # A full walk already under way began with the old sets: it sees this and starts over.
    incremental.set_clock(session, now, incremental.POLICIES_CLOCK)
    if session.execute(select(Certificate.id).offset(SYNC_EVALUATION_LIMIT).limit(1)).first() is None:
        return engine.reevaluate_all(session, now=now).as_dict()
    job = queue.enqueue(session, REEVALUATE_TASK, {"full": True}, now=now, dedupe_key=FULL_JOB_KEY)
    return {"queued_job_id": job.id}


def _evaluate_covered(
    session: Session, certificate_id: int | None, policy: str | None, check: str | None, now: datetime
) -> dict[str, Any]:
    """Re-evaluates the certificates with a violation an exemption on these covers (or covered)."""
    condition = incremental.covered_condition(certificate_id, policy, check)
    # Counted in violations: at most as many certificates.
    found = incremental.covered(session, condition, after_id=0, limit=SYNC_EVALUATION_LIMIT + 1)
    if len(found) <= SYNC_EVALUATION_LIMIT:
        return engine.evaluate_certificates(session, {cid for _, cid in found}, now=now).as_dict()
    covered = {"certificate_id": certificate_id, "policy": policy, "check": check}
    job = queue.enqueue(session, REEVALUATE_TASK, {"covered": covered}, now=now)
    return {"queued_job_id": job.id}


def delete_policy(session: Session, ctx: AuditContext, name: str, *, now: datetime) -> dict[str, Any]:
    """Deletes a policy set and its violations, then re-evaluates the certificates it flagged
    (their risk scores change), or everything when no set is left and the baseline applies."""
    row = get_policy(session, name)
    flagged = incremental.covered(
        session, PolicyViolation.policy == name, after_id=0, limit=SYNC_EVALUATION_LIMIT + 1
    )
    engine.drop_policy(session, name)
    session.delete(row)
    session.flush()
    record(session, ctx, "policy.delete", "policy", name)
    if len(flagged) > SYNC_EVALUATION_LIMIT or session.execute(select(PolicySet.id).limit(1)).first() is None:
        return reevaluate(session, now)
    return engine.evaluate_certificates(session, {cid for _, cid in flagged}, now=now).as_dict()


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
) -> tuple[PolicyExemption, dict[str, Any]]:
    """Grants an exemption; returns it and the re-evaluation of the certificates it covers."""
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
    return row, _evaluate_covered(session, row.certificate_id, row.policy, row.check, now)


def delete_exemption(
    session: Session, ctx: AuditContext, exemption_id: int, *, now: datetime
) -> dict[str, Any]:
    """Withdraws an exemption: what it covered is open again, and those certificates re-evaluated
    (another exemption may cover them; their risk scores change)."""
    row = session.get(PolicyExemption, exemption_id)
    if row is None:
        raise NotFoundError(f"no exemption {exemption_id}", field="exemption_id")
    covered = (row.certificate_id, row.policy, row.check)
    # Done here rather than by the foreign key's SET NULL, which would leave the counts behind.
    release_exemption(session, exemption_id, now=now)
    session.delete(row)
    session.flush()
    record(session, ctx, "policy.exemption.delete", "exemption", exemption_id)
    return _evaluate_covered(session, *covered, now)


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
        rank = SEVERITY_RANK[flt.severity]
        stmt = stmt.where(PolicyViolation.severity_rank >= rank)
        if rank >= SEVERE_RANK:
            stmt = stmt.where(severe_condition())
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
