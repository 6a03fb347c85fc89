"""Reports as SVG charts, each with its CSV and JSON download from the reports API.

The forecast and the breakdowns group the whole inventory; like the API, the page serves them from
the stored report snapshots (``sslclm.reporting.snapshots``) that the background task refreshes,
and says how old they are.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from sslclm.api.deps import PlatformDep, SessionDep
from sslclm.errors import SslClmError
from sslclm.reporting import service, snapshots
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
    expiring_days = platform.settings.expiring_days
    forecast, forecast_as_of = snapshots.serve(session, "forecast:week", now=now, expiring_days=expiring_days)
    breakdown_as_of = None
    try:
        rows, breakdown_as_of = snapshots.serve(
            session, f"breakdown:{by}", now=now, expiring_days=expiring_days
        )
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
        {
            "charts": charts,
            "by": by,
            "breakdowns": BREAKDOWNS,
            "compliance": compliance,
            "error": error,
            "forecast_as_of": forecast_as_of,
            "breakdown_as_of": breakdown_as_of,
        },
        principal=principal,
        status_code=400 if error else 200,
    )
