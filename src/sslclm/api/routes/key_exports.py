"""Download a certificate together with its private key (PEM bundle, PKCS#12, JKS), audited.

A POST, so the password travels in the body and never lands in a URL, a proxy log or the history.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from sslclm.api.deps import AuditDep, PlatformDep, SessionDep, require
from sslclm.auth.permissions import Permission
from sslclm.inventory import service
from sslclm.inventory.key_export import MAX_PASSWORD_LENGTH, KeyExportFormat, export_with_key

router = APIRouter(prefix="/certificates", tags=["certificates"])


class KeyBundleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: KeyExportFormat = Field(description="pem (certificate, chain, key), pkcs12 or jks")
    password: str | None = Field(
        default=None,
        max_length=MAX_PASSWORD_LENGTH,
        description="Required for pkcs12 and jks; with pem it encrypts the key. Never stored or logged.",
    )
    alias: str | None = Field(
        default=None, max_length=64, description="Keystore alias and file name; default: the common name"
    )


@router.post(
    "/{ref}/export-key",
    dependencies=[Depends(require(Permission.KEY_EXPORT))],
    summary="Download the certificate with its private key as PEM, PKCS#12 or JKS (audited)",
    responses={404: {"description": "no such certificate, or the platform holds no key for it"}},
)
def export_certificate_with_key(
    ref: str, body: KeyBundleRequest, session: SessionDep, platform: PlatformDep, ctx: AuditDep
) -> Response:
    cert = service.get_certificate(session, ref)
    exported = export_with_key(
        session,
        ctx,
        cert,
        platform.envelope,
        export_format=body.format,
        password=body.password,
        alias=body.alias,
    )
    session.commit()
    return Response(
        exported.content,
        media_type=exported.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{exported.filename}"',
            "Cache-Control": "no-store",
        },
    )
