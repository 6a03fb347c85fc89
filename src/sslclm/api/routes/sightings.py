"""Where certificates were seen."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from starlette.responses import Response

from sslclm.api.deps import SessionDep, require
from sslclm.api.routes.certificates import json_response
from sslclm.auth.permissions import Permission
from sslclm.inventory import service
from sslclm.inventory.sightings import SightingFilter, list_sightings

router = APIRouter(tags=["sightings"], dependencies=[Depends(require(Permission.CERT_READ))])


@router.get("/sightings", summary="List sightings, newest first")
def sightings(params: Annotated[SightingFilter, Query()], session: SessionDep) -> Response:
    return json_response(list_sightings(session, params))


@router.get("/certificates/{ref}/sightings", summary="Where one certificate was seen")
def certificate_sightings(
    ref: str,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[int | None, Query(ge=0)] = None,
) -> Response:
    cert = service.get_certificate(session, ref)
    flt = SightingFilter(certificate_id=cert.id, limit=limit, cursor=cursor)
    return json_response(list_sightings(session, flt))
