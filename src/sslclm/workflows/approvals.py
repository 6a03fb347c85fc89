"""Second-person approval of issuance requests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.auth.principal import Principal
from sslclm.core.platform import Platform
from sslclm.errors import ConflictError, InvalidInputError, NotFoundError, PermissionDeniedError
from sslclm.jobs import queue
from sslclm.workflows.models import Approval, ManagedCertificate


def get_approval(session: Session, approval_id: int) -> Approval:
    approval = session.get(Approval, approval_id)
    if approval is None:
        raise NotFoundError(f"no approval {approval_id}", field="approval_id")
    return approval


def list_approvals(
    session: Session, *, status: str | None = "pending", limit: int = 100
) -> Sequence[Approval]:
    stmt = select(Approval).order_by(Approval.id.desc()).limit(limit)
    if status:
        stmt = stmt.where(Approval.status == status)
    return session.execute(stmt).scalars().all()


def _decidable(approval: Approval, principal: Principal) -> None:
    if approval.status != "pending":
        raise ConflictError(f"approval {approval.id} was already {approval.status}", field="approval_id")
    if approval.requested_by.split(" (token")[0] == principal.username:
        raise PermissionDeniedError("a request must be approved by someone other than its requester")


def approve(
    session: Session, ctx: AuditContext, platform: Platform, approval: Approval, principal: Principal
) -> Approval:
    _decidable(approval, principal)
    now = platform.clock()
    approval.status = "approved"
    approval.decided_by = principal.username
    approval.decided_at = now
    queue.resume(session, approval.job_id, now=now, message=f"approved by {principal.username}")
    record(session, ctx, "approval.approve", "approval", approval.id, {"job_id": approval.job_id})
    return approval


def reject(
    session: Session,
    ctx: AuditContext,
    platform: Platform,
    approval: Approval,
    principal: Principal,
    reason: str,
) -> Approval:
    if not reason.strip():
        raise InvalidInputError("say why the request is rejected", field="reason")
    _decidable(approval, principal)
    now = platform.clock()
    approval.status = "rejected"
    approval.decided_by = principal.username
    approval.decided_at = now
    approval.reason = reason.strip()[:2000]
    queue.request_cancel(session, approval.job_id, now=now)
    managed = session.get(ManagedCertificate, approval.managed_certificate_id)
    if managed is not None:
        managed.status = "active" if managed.current_certificate_id else "failed"
        managed.status_message = f"request rejected by {principal.username}: {approval.reason}"
        managed.updated_at = now
    record(
        session,
        ctx,
        "approval.reject",
        "approval",
        approval.id,
        {"job_id": approval.job_id, "reason": approval.reason},
    )
    return approval


def describe(approval: Approval) -> dict[str, Any]:
    return {
        "id": approval.id,
        "managed_certificate_id": approval.managed_certificate_id,
        "job_id": approval.job_id,
        "requested_by": approval.requested_by,
        "requested_at": approval.requested_at,
        "status": approval.status,
        "decided_by": approval.decided_by,
        "decided_at": approval.decided_at,
        "reason": approval.reason,
    }
