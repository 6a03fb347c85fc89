"""Reports, each as JSON or CSV (``?format=csv``)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from starlette.responses import Response

from sslclm.api.deps import PlatformDep, SessionDep, require
from sslclm.api.routes.certificates import json_response
from sslclm.auth.permissions import Permission
from sslclm.reporting import service

router = APIRouter(prefix="/reports", tags=["reports"])
CanRead = Depends(require(Permission.CERT_READ))
Format = Literal["json", "csv"]


def _answer(rows: list[dict[str, Any]], format: Format, name: str) -> Response:
    if format == "csv":
        return Response(
            service.to_csv(rows),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )
    return json_response(rows)


@router.get("/expiry-forecast", dependencies=[CanRead], summary="Expiries per day or week, next 90 days")
def expiry_forecast(
    session: SessionDep, platform: PlatformDep, per: Literal["day", "week"] = "day", format: Format = "json"
) -> Response:
    return _answer(service.expiry_forecast(session, now=platform.clock(), per=per), format, "expiry-forecast")


@router.get("/breakdown", dependencies=[CanRead], summary="Certificates counted by a field")
def breakdown(
    session: SessionDep, platform: PlatformDep, by: str = "issuer", format: Format = "json"
) -> Response:
    rows = service.breakdown(session, by, now=platform.clock(), expiring_days=platform.settings.expiring_days)
    return _answer(rows, format, f"breakdown-{by}")


@router.get("/compliance", dependencies=[CanRead], summary="Violations per policy, check and severity")
def compliance(session: SessionDep, format: Format = "json") -> Response:
    return _answer(service.compliance(session), format, "compliance")


@router.get("/top-risks", dependencies=[CanRead], summary="Certificates with the highest risk score")
def top_risks(session: SessionDep, limit: int = 50, format: Format = "json") -> Response:
    return _answer(service.top_risks(session, limit=limit), format, "top-risks")


@router.get("/risk", dependencies=[CanRead], summary="Risk rolled up per owner, team or issuing CA")
def risk_rollup(session: SessionDep, by: str = "team", format: Format = "json") -> Response:
    return _answer(service.risk_rollup(session, by), format, f"risk-{by}")


@router.get(
    "/ca-concentration/{ca_id}", dependencies=[CanRead], summary="What chains to a CA and where it is served"
)
def ca_concentration(ca_id: int, session: SessionDep, format: Format = "json") -> Response:
    report = service.ca_concentration(session, ca_id)
    if format == "csv":
        return _answer(report["endpoints"], format, f"ca-{ca_id}-endpoints")
    return json_response(report)
