"""The certificate page's changes: inventory metadata (owner, team, environment, notes, tags) and,
for a managed certificate, its store bindings (bind to a store, redeploy, undeploy).

Errors re-render the certificate page with the message, so the operator stays where they were.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from pydantic import ValidationError
from starlette.responses import Response

from sslclm.api.deps import PlatformDep, SessionDep
from sslclm.auth.permissions import Permission
from sslclm.auth.principal import Principal
from sslclm.deployments import service as deployments
from sslclm.errors import InvalidInputError, NotFoundError, SslClmError
from sslclm.inventory import service
from sslclm.web.common import WebPrincipal, audit_context, error_message, redirect, render
from sslclm.web.forms import split_lines, validation_message
from sslclm.web.pages.certificate import certificate_context

router = APIRouter(include_in_schema=False)


def _page_with_error(
    request: Request,
    principal: Principal,
    session: SessionDep,
    platform: PlatformDep,
    ref: str,
    exc: SslClmError,
) -> Response:
    session.rollback()
    context = certificate_context(session, platform, ref)
    context["error"] = error_message(exc)
    return render(request, "certificate.html", context, principal=principal, status_code=exc.http_status)


@router.post("/certificates/{ref}/metadata")
def update_metadata(
    ref: str,
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
    owner: Annotated[str, Form()] = "",
    team: Annotated[str, Form()] = "",
    environment: Annotated[str, Form()] = "",
    notes: Annotated[str, Form()] = "",
    tags: Annotated[str, Form()] = "",
) -> Response:
    principal.require(Permission.CERT_WRITE)
    cert = service.get_certificate(session, ref)
    try:
        try:
            # Every field is on the form, so an emptied one clears the value.
            patch = service.MetadataPatch(
                owner=owner.strip() or None,
                team=team.strip() or None,
                environment=environment.strip() or None,
                notes=notes.strip() or None,
                tags=split_lines(tags),
            )
        except ValidationError as exc:
            raise InvalidInputError(validation_message(exc)) from None
        service.update_metadata(session, audit_context(request, principal), cert, patch, now=platform.clock())
        session.commit()
    except SslClmError as exc:
        return _page_with_error(request, principal, session, platform, ref, exc)
    return redirect(f"/ui/certificates/{cert.id}", "updated")


@router.post("/certificates/{ref}/bindings")
def bind_to_store(
    ref: str,
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
    store: Annotated[str, Form()] = "",
    alias: Annotated[str, Form()] = "",
    verify_host: Annotated[str, Form()] = "",
    verify_port: Annotated[str, Form()] = "",
) -> Response:
    principal.require(Permission.CERT_ISSUE)
    context = certificate_context(session, platform, ref)
    cert_id = context["cert"]["id"]
    try:
        managed = context["managed"]
        if managed is None:
            raise InvalidInputError("only a managed certificate can be bound to a store", field="store")
        if verify_port.strip() and not verify_port.strip().isdigit():
            raise InvalidInputError("verify port: a number from 1 to 65535", field="verify.port")
        host = verify_host.strip() or None
        data = deployments.BindingInput(
            managed=managed.id,
            store=store,
            alias=alias.strip(),
            options={},
            verify_host=host,
            verify_port=int(verify_port) if host and verify_port.strip() else None,
        )
        deployments.create_binding(session, audit_context(request, principal), platform, data)
        session.commit()
    except SslClmError as exc:
        return _page_with_error(request, principal, session, platform, ref, exc)
    return redirect(f"/ui/certificates/{cert_id}", "created")


@router.post("/certificates/{ref}/bindings/{binding_id}/{operation}")
def binding_operation(
    ref: str,
    binding_id: int,
    operation: str,
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
) -> Response:
    principal.require(Permission.CERT_ISSUE)
    context = certificate_context(session, platform, ref)
    try:
        managed = context["managed"]
        binding = deployments.get_binding(session, binding_id)
        # The page only acts on the bindings it shows: those of this certificate's managed certificate.
        if managed is None or binding.managed_certificate_id != managed.id:
            raise NotFoundError(f"no binding {binding_id} for this certificate", field="binding")
        ctx = audit_context(request, principal)
        if operation == "redeploy":
            job = deployments.redeploy(session, ctx, binding_id, now=platform.clock())
        elif operation == "undeploy":
            job = deployments.undeploy(session, ctx, binding_id, now=platform.clock())
        else:
            raise NotFoundError(f"unknown operation '{operation[:20]}'", field="operation")
        session.commit()
    except SslClmError as exc:
        return _page_with_error(request, principal, session, platform, ref, exc)
    return redirect(f"/ui/jobs/{job.id}", "deploy" if operation == "redeploy" else "undeploy")
