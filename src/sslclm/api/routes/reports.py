"""Reports, each as JSON or CSV (``?format=csv``); the summary also as PDF, the inventory as a CBOM."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from starlette.responses import Response

from sslclm.api.deps import PlatformDep, SessionDep, require
from sslclm.api.routes.certificates import json_response
from sslclm.auth.permissions import Permission
from sslclm.reporting import cbom, pdf, service, snapshots

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


def _stored(session: SessionDep, platform: PlatformDep, key: str, fresh: bool) -> tuple[Any, dict[str, str]]:
    """A heavy report from its stored result (see ``sslclm.reporting.snapshots``), and its age header."""
    data, as_of = snapshots.serve(
        session, key, now=platform.clock(), expiring_days=platform.settings.expiring_days, fresh=fresh
    )
    return data, {"X-Report-As-Of": as_of.isoformat()}


def _with_headers(response: Response, headers: dict[str, str]) -> Response:
    response.headers.update(headers)
    return response


@router.get("/expiry-forecast", dependencies=[CanRead], summary="Expiries per day or week, next 90 days")
def expiry_forecast(
    session: SessionDep,
    platform: PlatformDep,
    per: Literal["day", "week"] = "day",
    format: Format = "json",
    fresh: bool = False,
) -> Response:
    rows, headers = _stored(session, platform, f"forecast:{per}", fresh)
    return _with_headers(_answer(rows, format, "expiry-forecast"), headers)


@router.get("/breakdown", dependencies=[CanRead], summary="Certificates counted by a field")
def breakdown(
    session: SessionDep,
    platform: PlatformDep,
    by: str = "issuer",
    format: Format = "json",
    fresh: bool = False,
) -> Response:
    rows, headers = _stored(session, platform, f"breakdown:{by[:64]}", fresh)
    return _with_headers(_answer(rows, format, f"breakdown-{by}"), headers)


@router.get("/compliance", dependencies=[CanRead], summary="Violations per policy, check and severity")
def compliance(session: SessionDep, format: Format = "json") -> Response:
    return _answer(service.compliance(session), format, "compliance")


@router.get("/top-risks", dependencies=[CanRead], summary="Certificates with the highest risk score")
def top_risks(session: SessionDep, limit: int = 50, format: Format = "json") -> Response:
    return _answer(service.top_risks(session, limit=limit), format, "top-risks")


@router.get("/risk", dependencies=[CanRead], summary="Risk rolled up per owner, team or issuing CA")
def risk_rollup(
    session: SessionDep, platform: PlatformDep, by: str = "team", format: Format = "json", fresh: bool = False
) -> Response:
    rows, headers = _stored(session, platform, f"risk:{by[:64]}", fresh)
    return _with_headers(_answer(rows, format, f"risk-{by}"), headers)


@router.get(
    "/ca-concentration/{ca_id}", dependencies=[CanRead], summary="What chains to a CA and where it is served"
)
def ca_concentration(
    ca_id: int, session: SessionDep, platform: PlatformDep, format: Format = "json", fresh: bool = False
) -> Response:
    report, headers = _stored(session, platform, f"ca:{ca_id}", fresh)
    if format == "csv":
        return _with_headers(_answer(report["endpoints"], format, f"ca-{ca_id}-endpoints"), headers)
    return _with_headers(json_response(report), headers)


@router.get("/summary", dependencies=[CanRead], summary="The PDF summary's figures as JSON or CSV")
def summary(session: SessionDep, platform: PlatformDep, format: Format = "json") -> Response:
    figures = pdf.collect_summary(
        session, now=platform.clock(), expiring_days=platform.settings.expiring_days
    )
    if format == "csv":
        return _answer(pdf.summary_rows(figures), format, "summary")
    return json_response(figures)


@router.get(
    "/summary.pdf",
    dependencies=[CanRead],
    summary="A PDF summary: totals by status, expiry forecast, compliance by policy, top risks",
    response_class=Response,
)
def summary_pdf(session: SessionDep, platform: PlatformDep) -> Response:
    now = platform.clock()
    figures = pdf.collect_summary(session, now=now, expiring_days=platform.settings.expiring_days)
    return Response(
        pdf.render_pdf(figures),
        media_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="sslclm-summary-{now:%Y%m%d}.pdf"'},
    )


@router.get(
    "/cbom",
    dependencies=[CanRead],
    summary="CycloneDX 1.6 cryptographic bill of materials, one keyset page of certificates",
    response_class=Response,
)
def cryptographic_bom(
    session: SessionDep,
    platform: PlatformDep,
    limit: int = cbom.DEFAULT_CERTIFICATES,
    after_id: int = 0,
) -> Response:
    page = cbom.build_cbom(session, now=platform.clock(), after_id=after_id, limit=limit)
    headers = {"X-Certificates": str(page.certificates)}
    if page.next_after_id is not None:
        headers["X-Next-After-Id"] = str(page.next_after_id)
    return Response(page.text, media_type="application/vnd.cyclonedx+json; version=1.6", headers=headers)
