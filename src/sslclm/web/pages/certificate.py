"""One certificate: every field, chain, where it is seen, lineage, violations, audit trail, actions.

Import lives here too: it ends on the inventory. Everything shown comes from the certificate itself
and is untrusted; Jinja's autoescape renders it as text.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request, UploadFile
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.responses import Response

from sslclm.api.deps import PlatformDep, SessionDep
from sslclm.audit.models import AuditEvent
from sslclm.auth.permissions import Permission
from sslclm.deployments import service as deployments
from sslclm.discovery.service import certificate_endpoints
from sslclm.errors import InvalidInputError, SslClmError
from sslclm.inventory import service
from sslclm.inventory.importer import import_bytes
from sslclm.inventory.key_export import KeyExportFormat, export_with_key
from sslclm.inventory.sightings import SightingFilter, list_sightings
from sslclm.policies.service import ViolationFilter, list_violations
from sslclm.spi.capabilities import ConnectorKind
from sslclm.spi.types import RevocationReason
from sslclm.web.common import (
    SECURITY_HEADERS,
    CertReader,
    WebPrincipal,
    audit_context,
    error_message,
    redirect,
    render,
)
from sslclm.workflows import connections
from sslclm.workflows import managed as managed_service
from sslclm.workflows.models import Issuance, ManagedCertificate

router = APIRouter(include_in_schema=False)
TRAIL = 50


def _managed_of(session: Session, cert_id: int) -> ManagedCertificate | None:
    managed_id = session.execute(
        select(Issuance.managed_certificate_id)
        .where(Issuance.certificate_id == cert_id)
        .order_by(Issuance.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    return session.get(ManagedCertificate, managed_id) if managed_id is not None else None


def _audit_trail(session: Session, cert_id: int) -> list[AuditEvent]:
    return list(
        session.execute(
            select(AuditEvent)
            .where(AuditEvent.target_type == "certificate", AuditEvent.target_id == str(cert_id))
            .order_by(AuditEvent.id.desc())
            .limit(TRAIL)
        ).scalars()
    )


def certificate_context(session: Session, platform: Any, ref: str) -> dict[str, Any]:
    cert = service.get_certificate(session, ref)
    detail = service.certificate_detail(
        session, cert, now=platform.clock(), expiring_days=platform.settings.expiring_days
    )
    managed = _managed_of(session, cert.id)
    violations, _ = list_violations(
        session, ViolationFilter(certificate_id=cert.id, include_exempted=True), limit=100
    )
    endpoints, _ = certificate_endpoints(session, cert.id, limit=50)
    issued_here = (
        managed is not None
        or session.execute(select(Issuance.id).where(Issuance.certificate_id == cert.id).limit(1)).first()
        is not None
    )
    return {
        "cert": detail,
        "chain": service.chain_of(session, cert),
        "sightings": list_sightings(session, SightingFilter(certificate_id=cert.id, limit=50))["items"],
        "endpoints": endpoints,
        "managed": managed,
        "lineage": managed_service.lineage(session, managed.id) if managed else [],
        "violations": violations,
        "history": service.history(session, cert.id),
        "trail": _audit_trail(session, cert.id),
        "issued_here": issued_here,
        "reasons": [r.value for r in RevocationReason],
        "key_formats": [f.value for f in KeyExportFormat],
        "bindings": (
            [
                deployments.describe_binding(b, name)
                for b, name in deployments.list_bindings(session, managed_id=managed.id)
            ]
            if managed
            else []
        ),
        "stores": [row.name for row in connections.list_connections(session, ConnectorKind.CERT_STORE)]
        if managed
        else [],
    }


@router.get("/certificates/import")
def import_form(request: Request, principal: WebPrincipal) -> Response:
    principal.require(Permission.CERT_WRITE)
    return render(request, "import.html", {"error": None, "summary": None}, principal=principal)


@router.post("/certificates/import")
async def import_submit(
    request: Request,
    principal: WebPrincipal,
    platform: PlatformDep,
    files: Annotated[list[UploadFile] | None, Form()] = None,
    password: Annotated[str, Form()] = "",
) -> Response:
    principal.require(Permission.CERT_WRITE)
    ctx = audit_context(request, principal)
    limit = platform.settings.max_upload_bytes
    totals: dict[str, Any] = {"imported": 0, "updated": 0, "keys_stored": 0, "rejected": []}
    error = None
    chosen = [f for f in files or [] if f.filename]
    if not chosen:
        error = "Choose at least one file to import."
    for upload in chosen:
        data = await upload.read(limit + 1)
        if len(data) > limit:
            error = f"{upload.filename} exceeds the {limit // (1024 * 1024)} MB upload limit."
            break
        summary = import_bytes(platform, data, upload.filename or "upload", ctx, password=password or None)
        for name in ("imported", "updated", "keys_stored"):
            totals[name] += getattr(summary, name)
        totals["rejected"].extend(summary.rejected)
    status = 400 if error or (totals["rejected"] and not totals["imported"] + totals["updated"]) else 200
    return render(
        request,
        "import.html",
        {"error": error, "summary": None if error else totals},
        principal=principal,
        status_code=status,
    )


@router.get("/certificates/{ref}")
def certificate_page(
    ref: str, request: Request, principal: CertReader, session: SessionDep, platform: PlatformDep
) -> Response:
    context = certificate_context(session, platform, ref)
    context["error"] = None
    return render(request, "certificate.html", context, principal=principal)


@router.post("/certificates/{ref}/revoke")
def revoke(
    ref: str,
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
    reason: Annotated[str, Form()] = RevocationReason.UNSPECIFIED.value,
) -> Response:
    try:
        principal.require(Permission.CERT_ISSUE)
        try:
            chosen = RevocationReason(reason)
        except ValueError:
            raise InvalidInputError(f"unknown revocation reason '{reason[:40]}'", field="reason") from None
        cert = service.get_certificate(session, ref)
        job = managed_service.request_revocation(
            session, audit_context(request, principal), platform, cert, chosen
        )
        session.commit()
    except SslClmError as exc:
        session.rollback()
        return _action_failed(request, principal, session, platform, ref, exc)
    return redirect(f"/ui/jobs/{job.id}", "revoke")


@router.post("/certificates/{ref}/export-key")
def export_key(
    ref: str,
    request: Request,
    principal: WebPrincipal,
    session: SessionDep,
    platform: PlatformDep,
    export_format: Annotated[str, Form(alias="format")] = "pkcs12",
    password: Annotated[str, Form()] = "",
) -> Response:
    try:
        principal.require(Permission.KEY_EXPORT)
        try:
            chosen = KeyExportFormat(export_format)
        except ValueError:
            raise InvalidInputError(f"unknown format '{export_format[:20]}'", field="format") from None
        cert = service.get_certificate(session, ref)
        exported = export_with_key(
            session,
            audit_context(request, principal),
            cert,
            platform.envelope,
            export_format=chosen,
            password=password or None,
        )
        session.commit()
    except SslClmError as exc:
        session.rollback()
        return _action_failed(request, principal, session, platform, ref, exc)
    return Response(
        exported.content,
        media_type=exported.media_type,
        headers={
            **SECURITY_HEADERS,
            "Content-Disposition": f'attachment; filename="{exported.filename}"',
        },
    )


def _action_failed(
    request: Request, principal: Any, session: Session, platform: Any, ref: str, exc: SslClmError
) -> Response:
    """The certificate page again, with the reason the action was refused at the top."""
    try:
        context = certificate_context(session, platform, ref)
    except SslClmError:
        return render(
            request,
            "error.html",
            {"title": "Not done", "message": error_message(exc)},
            principal=principal,
            status_code=exc.http_status,
        )
    context["error"] = error_message(exc)
    return render(request, "certificate.html", context, principal=principal, status_code=exc.http_status)
