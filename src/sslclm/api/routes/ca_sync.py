"""Starting a CA sync: what a CA account issued is imported into the inventory."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.responses import Response

from sslclm.api.deps import AuditDep, PlatformDep, SessionDep, require
from sslclm.api.routes.certificates import json_response
from sslclm.auth.permissions import Permission
from sslclm.spi.capabilities import ConnectorKind
from sslclm.workflows import ca_sync, connections

router = APIRouter(tags=["issuance"])


@router.post(
    "/ca-connections/{ref}/sync",
    dependencies=[Depends(require(Permission.CERT_WRITE))],
    status_code=202,
    summary="Import every certificate this CA connection has issued",
)
def sync_ca_connection(ref: str, session: SessionDep, platform: PlatformDep, ctx: AuditDep) -> Response:
    row = connections.get_connection(session, ref, ConnectorKind.CA_GATEWAY)
    job = ca_sync.request_sync(session, ctx, platform, row)
    session.commit()
    return json_response({"job_id": job.id, "connection_id": row.id}, status_code=202)
