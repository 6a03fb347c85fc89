"""Certificate inventory routes: search, detail, import, metadata, archive, downloads and exports."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response, StreamingResponse

from sslclm.api.deps import AuditDep, PlatformDep, SessionDep, require
from sslclm.auth.permissions import Permission
from sslclm.core.platform import Platform
from sslclm.errors import InvalidInputError, SslClmError
from sslclm.inventory import query, service
from sslclm.inventory.export import stream_csv, stream_json
from sslclm.inventory.importer import import_bytes
from sslclm.pki import certificate_to_pem, chain_to_pem

router = APIRouter(prefix="/certificates", tags=["certificates"])
CanRead = Depends(require(Permission.CERT_READ))
CanWrite = Depends(require(Permission.CERT_WRITE))


class PayloadTooLargeError(SslClmError):
    """The upload is larger than the configured limit."""

    http_status = 413
    code = "payload-too-large"


class CertificateQuery(query.CertificateFilter):
    sort: str = Field(default="not_after", description="Field to sort by.")
    desc: bool = False
    limit: int = Field(default=50, ge=1, le=query.MAX_PAGE)
    cursor: str | None = Field(default=None, max_length=2048, description="next_cursor of the previous page.")

    def to_filter(self) -> query.CertificateFilter:
        return query.CertificateFilter(**self.model_dump(exclude={"sort", "desc", "limit", "cursor"}))


class ExportQuery(query.CertificateFilter):
    format: Literal["csv", "json"] = "csv"
    sort: str = "not_after"
    desc: bool = False


class StatsQuery(query.CertificateFilter):
    by: str = Field(default="issuer", description="issuer, status, key_algorithm, key_size, owner, team, ...")


def json_response(payload: Any, status_code: int = 200) -> Response:
    # orjson straight to bytes: the list route is the hottest path of the API.
    return Response(orjson.dumps(payload), status_code=status_code, media_type="application/json")


@router.get("", dependencies=[CanRead], summary="Search and list certificates (keyset-paginated)")
def list_certificates(
    params: Annotated[CertificateQuery, Query()], session: SessionDep, platform: PlatformDep
) -> Response:
    page = query.list_certificates(
        session,
        params.to_filter(),
        sort=params.sort,
        descending=params.desc,
        limit=params.limit,
        cursor=params.cursor,
        now=platform.clock(),
        expiring_days=platform.settings.expiring_days,
    )
    return json_response({"items": page.items, "next_cursor": page.next_cursor})


@router.get("/export", dependencies=[CanRead], summary="Stream every matching certificate as CSV or JSON")
def export_certificates(params: Annotated[ExportQuery, Query()], platform: PlatformDep) -> StreamingResponse:
    flt = query.CertificateFilter(**params.model_dump(exclude={"format", "sort", "desc"}))
    if params.sort not in query.SORT_COLUMNS:
        raise InvalidInputError(f"cannot sort by '{params.sort}'", field="sort")

    def rows() -> Iterator[dict[str, Any]]:
        with platform.sessions() as session:
            yield from query.iter_certificates(
                session,
                flt,
                sort=params.sort,
                descending=params.desc,
                now=platform.clock(),
                expiring_days=platform.settings.expiring_days,
            )

    if params.format == "csv":
        return StreamingResponse(
            stream_csv(rows()),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="certificates.csv"'},
        )
    return StreamingResponse(
        stream_json(rows()),
        media_type="application/json",
        headers={"Content-Disposition": 'attachment; filename="certificates.json"'},
    )


@router.get("/stats", dependencies=[CanRead], summary="Count matching certificates grouped by a field")
def certificate_stats(
    params: Annotated[StatsQuery, Query()], session: SessionDep, platform: PlatformDep
) -> Response:
    flt = query.CertificateFilter(**params.model_dump(exclude={"by"}))
    counts = query.count_by(
        session, params.by, flt, now=platform.clock(), expiring_days=platform.settings.expiring_days
    )
    return json_response({"by": params.by, "counts": counts})


async def _read_upload(upload: UploadFile, platform: Platform) -> bytes:
    limit = platform.settings.max_upload_bytes
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLargeError(
            f"{upload.filename or 'upload'} exceeds the {limit // (1024 * 1024)} MB upload limit",
            field="files",
        )
    return data


@router.post(
    "/import", dependencies=[CanWrite], summary="Import certificates from uploaded files (any format)"
)
async def import_certificates(
    request: Request,
    platform: PlatformDep,
    ctx: AuditDep,
    files: Annotated[list[UploadFile], File(description="PEM, DER, P7B, PFX/P12 or JKS files.")],
    password: Annotated[str | None, Form(description="Password for PKCS#12 or JKS files.")] = None,
) -> Response:
    totals: dict[str, Any] = {"files": 0, "imported": 0, "updated": 0, "keys_stored": 0, "rejected": []}
    for upload in files:
        data = await _read_upload(upload, platform)
        summary = import_bytes(platform, data, upload.filename or "upload", ctx, password=password or None)
        for name in ("files", "imported", "updated", "keys_stored"):
            totals[name] += getattr(summary, name)
        totals["rejected"].extend({"path": r.path, "reason": r.reason} for r in summary.rejected)
    accepted = totals["imported"] + totals["updated"]
    if not accepted and totals["rejected"]:
        first = totals["rejected"][0]
        raise InvalidInputError(
            f"{first['path']}: {first['reason']}", field="files", rejected=totals["rejected"]
        )
    return json_response(totals, status_code=201 if totals["imported"] else 200)


@router.get("/{ref}", dependencies=[CanRead], summary="One certificate with every extracted field")
def get_certificate(ref: str, session: SessionDep, platform: PlatformDep) -> Response:
    cert = service.get_certificate(session, ref)
    detail = service.certificate_detail(
        session, cert, now=platform.clock(), expiring_days=platform.settings.expiring_days
    )
    return json_response(detail)


@router.patch("/{ref}", dependencies=[CanWrite], summary="Change owner, team, environment, notes or tags")
def update_certificate(
    ref: str, patch: service.MetadataPatch, session: SessionDep, platform: PlatformDep, ctx: AuditDep
) -> Response:
    cert = service.get_certificate(session, ref)
    changes = service.update_metadata(session, ctx, cert, patch, now=platform.clock())
    session.commit()
    detail = service.certificate_detail(
        session, cert, now=platform.clock(), expiring_days=platform.settings.expiring_days
    )
    return json_response({"changed": sorted(changes), "certificate": detail})


@router.post("/{ref}/archive", dependencies=[CanWrite], summary="Hide a certificate from default listings")
def archive_certificate(ref: str, session: SessionDep, platform: PlatformDep, ctx: AuditDep) -> Response:
    cert = service.get_certificate(session, ref)
    service.set_archived(session, ctx, cert, True, now=platform.clock())
    session.commit()
    return json_response({"id": cert.id, "archived": True})


@router.post("/{ref}/unarchive", dependencies=[CanWrite], summary="Bring an archived certificate back")
def unarchive_certificate(ref: str, session: SessionDep, platform: PlatformDep, ctx: AuditDep) -> Response:
    cert = service.get_certificate(session, ref)
    service.set_archived(session, ctx, cert, False, now=platform.clock())
    session.commit()
    return json_response({"id": cert.id, "archived": False})


@router.get("/{ref}/history", dependencies=[CanRead], summary="Every metadata change, oldest first")
def certificate_history(ref: str, session: SessionDep) -> Response:
    cert = service.get_certificate(session, ref)
    return json_response(
        [
            {"id": c.id, "changed_at": c.changed_at, "actor": c.actor, "changes": c.changes}
            for c in service.history(session, cert.id)
        ]
    )


@router.get("/{ref}/download", dependencies=[CanRead], summary="Download as PEM, DER or PEM chain")
def download_certificate(
    ref: str, session: SessionDep, format: Literal["pem", "der", "chain"] = "pem"
) -> Response:
    cert = service.get_certificate(session, ref)
    name = (cert.common_name or cert.fingerprint_sha256[:16]).replace('"', "").replace("/", "_")[:64]
    if format == "der":
        body, media, ext = cert.der, "application/pkix-cert", "cer"
    elif format == "chain":
        body = chain_to_pem([c.der for c in service.chain_of(session, cert)])
        media, ext = "application/x-pem-file", "chain.pem"
    else:
        body, media, ext = certificate_to_pem(cert.der), "application/x-pem-file", "pem"
    return Response(
        body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}.{ext}"'}
    )


class KeyExportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str | None = Field(default=None, min_length=8, max_length=256, description="Encrypts the PEM.")


@router.post(
    "/{ref}/private-key",
    dependencies=[Depends(require(Permission.KEY_EXPORT))],
    summary="Export the certificate's private key (separate permission, audited)",
)
def export_private_key(
    ref: str, body: KeyExportRequest, session: SessionDep, platform: PlatformDep, ctx: AuditDep
) -> Response:
    cert = service.get_certificate(session, ref)
    pem = service.export_private_key(session, ctx, cert, platform.envelope, password=body.password)
    session.commit()
    return Response(pem, media_type="application/x-pem-file", headers={"Cache-Control": "no-store"})
