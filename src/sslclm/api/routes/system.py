"""System routes: the internal CA certificate (public, to bootstrap trust) and platform facts."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from starlette.responses import Response

from sslclm import __version__
from sslclm.api.deps import CurrentPrincipal, PlatformDep, SessionDep
from sslclm.audit.models import AuditEvent
from sslclm.auth.models import ApiToken, User
from sslclm.core.tls import internal_ca_pem
from sslclm.inventory.models import Certificate

router = APIRouter(prefix="/system", tags=["system"])
# A client must be able to fetch the CA before it can verify the server it fetches it from.
PUBLIC_PATHS = frozenset({"/api/v1/system/ca.pem"})


class SystemCounts(BaseModel):
    users: int
    active_api_tokens: int
    certificates: int
    audit_events: int


class SystemInfo(BaseModel):
    version: str
    database_dialect: str = Field(description="sqlite or postgresql.")
    embedded_worker: bool
    embedded_scheduler: bool
    counts: SystemCounts


@router.get(
    "/ca.pem",
    response_class=Response,
    responses={200: {"content": {"application/x-pem-file": {}}, "description": "The internal CA, PEM."}},
    summary="The internal CA certificate that signs this server's TLS certificate",
)
def ca_pem(platform: PlatformDep) -> Response:
    return Response(
        internal_ca_pem(platform),
        media_type="application/x-pem-file",
        headers={"Content-Disposition": 'attachment; filename="sslclm-ca.pem"'},
    )


@router.get("/info", response_model=SystemInfo, summary="Version, database and object counts")
def info(platform: PlatformDep, session: SessionDep, principal: CurrentPrincipal) -> SystemInfo:
    def count(query_from: type[User] | type[ApiToken] | type[Certificate] | type[AuditEvent]) -> int:
        return session.execute(select(func.count()).select_from(query_from)).scalar_one()

    active_tokens = session.execute(
        select(func.count()).select_from(ApiToken).where(ApiToken.revoked_at.is_(None))
    ).scalar_one()
    return SystemInfo(
        version=__version__,
        database_dialect=platform.engine.dialect.name,
        embedded_worker=platform.settings.embedded_worker,
        embedded_scheduler=platform.settings.embedded_scheduler,
        counts=SystemCounts(
            users=count(User),
            active_api_tokens=active_tokens,
            certificates=count(Certificate),
            audit_events=count(AuditEvent),
        ),
    )
