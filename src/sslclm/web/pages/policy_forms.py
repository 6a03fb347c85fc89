"""Forms that create configuration: enrollment profiles, policy sets (a YAML document whose errors
are shown inline with their line and field) and policy exemptions."""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.responses import Response

from sslclm.api.deps import PlatformDep, SessionDep
from sslclm.auth.permissions import Permission
from sslclm.auth.principal import Principal
from sslclm.errors import InvalidInputError, SslClmError
from sslclm.pki import KEY_TYPES
from sslclm.policies import service
from sslclm.policies.checks import CHECKS
from sslclm.spi.capabilities import ConnectorKind
from sslclm.web.common import (
    CertReader,
    WebPrincipal,
    action_refused,
    audit_context,
    error_message,
    redirect,
    render,
)
from sslclm.web.forms import split_lines, validation_message
from sslclm.workflows import connections, profiles
from sslclm.workflows.planner import DEFAULT_FRACTION, MODES

router = APIRouter(include_in_schema=False)
MAX_DOCUMENT = 256 * 1024
EXAMPLE_POLICY = """name: web-servers
description: What every public web server certificate must meet.
scope:
  kind: team
  value: web
checks:
  - check: key-algorithm
  - check: expiry
    severity: high
"""


# --- profiles --------------------------------------------------------------------------------------


def _profiles_page(
    request: Request,
    principal: Principal,
    session: Session,
    *,
    error: str | None = None,
    values: dict[str, str] | None = None,
    status_code: int = 200,
) -> Response:
    return render(
        request,
        "profiles.html",
        {
            "profiles": [profiles.describe(p) for p in profiles.list_profiles(session)],
            "ca_connections": [
                c.name for c in connections.list_connections(session, ConnectorKind.CA_GATEWAY)
            ],
            "key_types": KEY_TYPES,
            "purposes": profiles.PURPOSES,
            "modes": MODES,
            "error": error,
            "values": values or {"renewal_value": f"{DEFAULT_FRACTION:.4f}", "validity_days": "90"},
        },
        principal=principal,
        status_code=status_code,
    )


@router.get("/profiles")
def profile_list(request: Request, principal: CertReader, session: SessionDep) -> Response:
    return _profiles_page(request, principal, session)


def _number(text: str, field: str, kind: type[int] | type[float]) -> Any:
    try:
        return kind(text.strip())
    except ValueError:
        raise InvalidInputError(f"{field.replace('_', ' ')} must be a number", field=field) from None


@router.post("/profiles")
def create_profile(
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
    name: Annotated[str, Form()] = "",
    description: Annotated[str, Form()] = "",
    ca_connection: Annotated[str, Form()] = "",
    key_type: Annotated[str, Form()] = "EC-P256",
    validity_days: Annotated[str, Form()] = "90",
    allowed_names: Annotated[str, Form()] = "",
    purpose: Annotated[str, Form()] = "server",
    approval_required: Annotated[str, Form()] = "",
    renewal_mode: Annotated[str, Form()] = "fraction",
    renewal_value: Annotated[str, Form()] = "",
) -> Response:
    principal.require(Permission.CONNECTION_MANAGE)
    values = {
        "name": name,
        "description": description,
        "ca_connection": ca_connection,
        "key_type": key_type,
        "validity_days": validity_days,
        "allowed_names": allowed_names,
        "purpose": purpose,
        "approval_required": approval_required,
        "renewal_mode": renewal_mode,
        "renewal_value": renewal_value,
    }
    try:
        try:
            data = profiles.ProfileInput(
                name=name.strip(),
                description=description.strip() or None,
                ca_connection=ca_connection,
                key_type=key_type,
                validity_days=_number(validity_days, "validity_days", int),
                allowed_names=split_lines(allowed_names),
                purpose=purpose,
                approval_required=approval_required == "1",
                renewal_mode=renewal_mode,
                renewal_value=_number(renewal_value or str(DEFAULT_FRACTION), "renewal_value", float),
            )
        except ValidationError as exc:
            raise InvalidInputError(validation_message(exc)) from None
        profiles.create_profile(session, audit_context(request, principal), platform, data)
        session.commit()
    except SslClmError as exc:
        session.rollback()
        return _profiles_page(
            request, principal, session, error=error_message(exc), values=values, status_code=exc.http_status
        )
    return redirect("/ui/profiles", "created")


# --- policy sets -----------------------------------------------------------------------------------


def _policy_form(
    request: Request,
    principal: Principal,
    *,
    document: str,
    error: SslClmError | None = None,
) -> Response:
    problems: list[dict[str, Any]] = []
    if error is not None:
        problems = list(error.data.get("errors") or [])
    return render(
        request,
        "policy_form.html",
        {
            "document": document,
            "error": error_message(error) if error else None,
            "problems": problems[1:],
            "checks": sorted(CHECKS),
        },
        principal=principal,
        status_code=error.http_status if error else 200,
    )


@router.get("/policies/new")
def new_policy(request: Request, principal: WebPrincipal) -> Response:
    principal.require(Permission.POLICY_MANAGE)
    return _policy_form(request, principal, document=EXAMPLE_POLICY)


def _reevaluate(session: Session, now: datetime) -> None:
    # The API's and the CLI's rule: inline when small, a job when large.
    service.reevaluate(session, now)


@router.post("/policies/new")
def create_policy(
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
    document: Annotated[str, Form()] = "",
) -> Response:
    principal.require(Permission.POLICY_MANAGE)
    try:
        if len(document.encode()) > MAX_DOCUMENT:
            raise InvalidInputError("the policy document is larger than 256 KiB", field="document")
        if not document.strip():
            raise InvalidInputError("write the policy document (YAML)", field="document", line=1)
        now = platform.clock()
        service.put_policy(session, audit_context(request, principal), document, now=now)
        _reevaluate(session, now)
        session.commit()
    except SslClmError as exc:
        session.rollback()
        return _policy_form(request, principal, document=document, error=exc)
    return redirect("/ui/policies", "updated")


# --- exemptions ------------------------------------------------------------------------------------


@router.post("/policies/exemptions")
def create_exemption(
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
    certificate_id: Annotated[str, Form()] = "",
    policy: Annotated[str, Form()] = "",
    check: Annotated[str, Form()] = "",
    justification: Annotated[str, Form()] = "",
    approver: Annotated[str, Form()] = "",
    expires_on: Annotated[str, Form()] = "",
) -> Response:
    principal.require(Permission.POLICY_MANAGE)
    try:
        try:
            day = datetime.strptime(expires_on.strip(), "%Y-%m-%d").date()
        except ValueError:
            raise InvalidInputError("expires on: a date as YYYY-MM-DD", field="expires_on") from None
        if certificate_id.strip() and not certificate_id.strip().isdigit():
            raise InvalidInputError("certificate: a certificate id (a number)", field="certificate_id")
        try:
            data = service.ExemptionCreate(
                certificate_id=int(certificate_id) if certificate_id.strip() else None,
                policy=policy.strip() or None,
                check=check.strip() or None,
                justification=justification.strip(),
                approver=approver.strip(),
                expires_at=datetime.combine(day, time(23, 59, 59), tzinfo=UTC),
            )
        except ValidationError as exc:
            raise InvalidInputError(validation_message(exc)) from None
        service.create_exemption(session, audit_context(request, principal), data, now=platform.clock())
        session.commit()
    except SslClmError as exc:
        return action_refused(request, principal, session, exc, "Exemption not granted")
    return redirect("/ui/policies", "created")


@router.post("/policies/exemptions/{exemption_id}/delete")
def delete_exemption(
    exemption_id: int, request: Request, principal: WebPrincipal, session: SessionDep, platform: PlatformDep
) -> Response:
    principal.require(Permission.POLICY_MANAGE)
    try:
        service.delete_exemption(
            session, audit_context(request, principal), exemption_id, now=platform.clock()
        )
        session.commit()
    except SslClmError as exc:
        return action_refused(request, principal, session, exc, "Exemption not withdrawn")
    return redirect("/ui/policies", "deleted")


@router.post("/policies/{name}/delete")
def delete_policy(
    name: str, request: Request, principal: WebPrincipal, session: SessionDep, platform: PlatformDep
) -> Response:
    principal.require(Permission.POLICY_MANAGE)
    try:
        # Re-evaluates what the set flagged (everything if none is left), by the API's rule.
        service.delete_policy(session, audit_context(request, principal), name, now=platform.clock())
        session.commit()
    except SslClmError as exc:
        return action_refused(request, principal, session, exc, "Policy not deleted")
    return redirect("/ui/policies", "deleted")
