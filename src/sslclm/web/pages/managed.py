"""Managed certificates, the enrollment form (driven by the profiles) and the approvals inbox."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.responses import Response

from sslclm.api.deps import PlatformDep, SessionDep
from sslclm.auth.permissions import Permission
from sslclm.errors import InvalidInputError, SslClmError
from sslclm.policies.enrollment import BLOCKING, PURPOSE_EKUS, check_enrollment
from sslclm.web.common import (
    PAGE_SIZE,
    CertReader,
    WebPrincipal,
    action_refused,
    audit_context,
    error_message,
    redirect,
    render,
)
from sslclm.web.forms import split_lines, validation_message
from sslclm.workflows import approvals, managed, profiles
from sslclm.workflows.models import ManagedCertificate

router = APIRouter(include_in_schema=False)
MANAGED_STATUSES = ("new", "issuing", "awaiting-approval", "active", "failed", "revoked", "disabled")


@router.get("/managed")
def managed_list(request: Request, principal: CertReader, session: SessionDep) -> Response:
    status = request.query_params.get("status") or None
    cursor_text = request.query_params.get("cursor", "")
    after = int(cursor_text) if cursor_text.isdigit() else None
    rows = managed.list_managed(session, status=status, limit=PAGE_SIZE + 1, after_id=after)
    more = len(rows) > PAGE_SIZE
    rows = list(rows[:PAGE_SIZE])
    next_url = None
    if more and rows:
        next_url = f"/ui/managed?cursor={rows[-1].id}" + (f"&status={status}" if status else "")
    return render(
        request,
        "managed_list.html",
        {"rows": rows, "status": status, "statuses": MANAGED_STATUSES, "next_url": next_url},
        principal=principal,
    )


def _enroll_context(session: Session, values: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "profiles": [profiles.describe(p) for p in profiles.list_profiles(session)],
        "values": values,
        "error": None,
        "objections": [],
        "checked": False,
        **extra,
    }


@router.get("/managed/new")
def enroll_form(request: Request, principal: WebPrincipal, session: SessionDep) -> Response:
    principal.require(Permission.CERT_ISSUE)
    return render(request, "enroll.html", _enroll_context(session, {}), principal=principal)


def _objections(session: Session, data: managed.ManagedInput, platform: Any) -> list[dict[str, Any]]:
    """Every policy objection to the request, blocking or not, without writing anything."""
    profile = profiles.get_profile(session, data.profile)
    names = [*data.dns_names, *data.ip_addresses] or ([data.common_name] if data.common_name else [])
    found = check_enrollment(
        session,
        names=names,
        key_type=profile.key_type,
        validity_days=profile.validity_days,
        now=platform.clock(),
        profile=profile.name,
        owner=data.owner,
        team=data.team,
        tags=data.tags,
        extended_key_usage=PURPOSE_EKUS.get(profile.purpose, ("serverAuth",)),
    )
    return [
        {
            "check": v.check,
            "severity": v.severity.value,
            "reason": v.reason,
            "blocking": v.severity in BLOCKING,
        }
        for v in found
    ]


@router.post("/managed/new")
def enroll_submit(
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
    profile: Annotated[str, Form()] = "",
    common_name: Annotated[str, Form()] = "",
    dns_names: Annotated[str, Form()] = "",
    ip_addresses: Annotated[str, Form()] = "",
    name: Annotated[str, Form()] = "",
    owner: Annotated[str, Form()] = "",
    team: Annotated[str, Form()] = "",
    tags: Annotated[str, Form()] = "",
    key_policy: Annotated[str, Form()] = "rotate",
    intent: Annotated[str, Form()] = "enroll",
) -> Response:
    principal.require(Permission.CERT_ISSUE)
    values = {
        "profile": profile, "common_name": common_name, "dns_names": dns_names, "ip_addresses": ip_addresses,
        "name": name, "owner": owner, "team": team, "tags": tags, "key_policy": key_policy,
    }  # fmt: skip
    try:
        if not profile:
            raise InvalidInputError("choose a profile", field="profile")
        try:
            data = managed.ManagedInput(
                profile=profile,
                common_name=common_name.strip() or None,
                dns_names=split_lines(dns_names),
                ip_addresses=split_lines(ip_addresses),
                name=name.strip() or None,
                owner=owner.strip() or None,
                team=team.strip() or None,
                tags=split_lines(tags),
                key_policy=key_policy,
            )
        except ValidationError as exc:
            raise InvalidInputError(validation_message(exc), field="form") from None
        if intent == "check":
            objections = _objections(session, data, platform)
            return render(
                request,
                "enroll.html",
                _enroll_context(session, values, objections=objections, checked=True),
                principal=principal,
            )
        row, job = managed.create_managed(session, audit_context(request, principal), platform, data)
        session.commit()
    except SslClmError as exc:
        session.rollback()
        reasons = exc.data.get("reasons", []) if exc.data else []
        context = _enroll_context(
            session,
            values,
            error=error_message(exc),
            objections=[{**r, "blocking": True} for r in reasons],
        )
        return render(request, "enroll.html", context, principal=principal, status_code=exc.http_status)
    return redirect(f"/ui/jobs/{job.id}" if job else f"/ui/managed/{row.id}", "enrolled")


@router.get("/managed/{ref}")
def managed_page(ref: str, request: Request, principal: CertReader, session: SessionDep) -> Response:
    row = managed.get_managed(session, ref)
    profile = profiles.describe(profiles.get_profile(session, row.profile_id))
    return render(
        request,
        "managed.html",
        {"m": row, "profile": profile, "lineage": managed.lineage(session, row.id)},
        principal=principal,
    )


@router.post("/managed/{ref}/renew")
def renew(
    ref: str, request: Request, principal: WebPrincipal, session: SessionDep, platform: PlatformDep
) -> Response:
    try:
        principal.require(Permission.CERT_ISSUE)
        row: ManagedCertificate = managed.get_managed(session, ref)
        job = managed.request_issuance(
            session, audit_context(request, principal), platform, row, reason="renew"
        )
        session.commit()
    except SslClmError as exc:
        return action_refused(request, principal, session, exc)
    return redirect(f"/ui/jobs/{job.id}", "renew")


@router.get("/approvals")
def approvals_inbox(request: Request, principal: CertReader, session: SessionDep) -> Response:
    status = request.query_params.get("status", "pending")
    if status not in ("pending", "approved", "rejected", "all"):
        status = "pending"
    rows = approvals.list_approvals(session, status=None if status == "all" else status)
    return render(
        request,
        "approvals.html",
        {"rows": [approvals.describe(a) for a in rows], "status": status},
        principal=principal,
    )


@router.post("/approvals/{approval_id}/{decision}")
def decide(
    approval_id: int,
    decision: str,
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
    reason: Annotated[str, Form()] = "",
) -> Response:
    try:
        principal.require(Permission.APPROVE)
        ctx = audit_context(request, principal)
        approval = approvals.get_approval(session, approval_id)
        if decision == "approve":
            approvals.approve(session, ctx, platform, approval, principal)
        elif decision == "reject":
            approvals.reject(session, ctx, platform, approval, principal, reason.strip()[:2000])
        else:
            raise InvalidInputError("decide with approve or reject", field="decision")
        session.commit()
    except SslClmError as exc:
        return action_refused(request, principal, session, exc)
    return redirect("/ui/approvals", "approved" if decision == "approve" else "rejected")
