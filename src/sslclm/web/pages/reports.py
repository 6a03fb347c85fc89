"""Reports as SVG charts, each with its CSV and JSON download from the reports API."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from sslclm.api.deps import PlatformDep, SessionDep
from sslclm.errors import SslClmError
from sslclm.reporting import service
from sslclm.web.charts import bar_chart
from sslclm.web.common import CertReader, error_message, render

router = APIRouter(include_in_schema=False)
BREAKDOWNS = ("issuer", "key_algorithm", "key_size", "signature_algorithm", "owner", "team", "source")
TOP = 12


@router.get("/reports")
def reports(request: Request, principal: CertReader, session: SessionDep, platform: PlatformDep) -> Response:
    by = request.query_params.get("by", "issuer")
    error = None
    if by not in BREAKDOWNS:
        error, by = f"cannot break down by '{by[:30]}'", "issuer"
    now = platform.clock()
    forecast = service.expiry_forecast(session, now=now, per="week")
    try:
        rows = service.breakdown(session, by, now=now, expiring_days=platform.settings.expiring_days)
    except SslClmError as exc:
        error, rows = error_message(exc), []
    compliance = service.compliance(session)
    charts = {
        "forecast": bar_chart(
            "Expiring per week, next 90 days", [(r["period"], r["total"]) for r in forecast]
        ),
        "breakdown": bar_chart(
            f"Certificates by {by.replace('_', ' ')} (top {TOP})",
            [(str(r["key"] if r["key"] is not None else "(none)")[:24], r["count"]) for r in rows[:TOP]],
        ),
        "compliance": bar_chart(
            "Open violations per check",
            [(f"{r['check']}"[:24], r["violations"]) for r in compliance[:TOP]],
        ),
    }
    return render(
        request,
        "reports.html",
        {"charts": charts, "by": by, "breakdowns": BREAKDOWNS, "compliance": compliance, "error": error},
        principal=principal,
        status_code=400 if error else 200,
    )
