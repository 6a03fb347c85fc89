"""The dashboard: where the inventory stands, what expires soon, what the platform is doing."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from starlette.responses import Response

from sslclm.api.deps import PlatformDep, SessionDep
from sslclm.web.charts import bar_chart
from sslclm.web.common import CertReader, render
from sslclm.web.dashboard_data import WINDOWS, load_dashboard

router = APIRouter(include_in_schema=False)


@router.get("/")
def dashboard(
    request: Request, principal: CertReader, session: SessionDep, platform: PlatformDep
) -> Response:
    now = platform.clock()
    data = load_dashboard(session, now=now)
    day = now.date()
    expiry_rows = [("Expired", data.expired)] + [(f"Within {d} days", data.expiring[d]) for d in WINDOWS]
    expiry_links = ["/ui/certificates?status=expired"] + [
        f"/ui/certificates?expires_after={day}&expires_before={day + timedelta(days=d)}" for d in WINDOWS
    ]
    expiry = bar_chart(
        "Expiry",
        expiry_rows,
        css_classes=["bar bad", "bar bad", "bar warn", "bar"],
        links=expiry_links,
    )
    severity = bar_chart(
        "Open policy violations by severity",
        data.violations_by_severity,
        css_classes=[f"bar sev-{name}" for name, _ in data.violations_by_severity],
    )
    return render(
        request,
        "dashboard.html",
        {"data": data, "expiry": expiry, "severity": severity, "windows": WINDOWS},
        principal=principal,
    )
