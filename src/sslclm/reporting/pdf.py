"""The PDF summary: totals by status, the expiry forecast, compliance by policy and the top risks.

The figures come from :func:`collect_summary` (a handful of aggregate queries through
:mod:`sslclm.reporting.service`), so the same numbers are served as JSON and CSV too. The PDF is
drawn with fpdf2 in its core Helvetica font, which only knows Latin-1: other characters in names
are replaced rather than failing the report.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any

from fpdf import FPDF
from sqlalchemy.orm import Session

from sslclm.inventory.query import CertificateFilter, count_by
from sslclm.reporting import service

TOP_RISKS = 15
SEVERITIES = ("critical", "high", "medium", "low", "info")


def collect_summary(session: Session, *, now: datetime, expiring_days: int) -> dict[str, Any]:
    """The figures of the summary report, each section a list of flat rows."""
    by_status = count_by(session, "status", CertificateFilter(), now=now, expiring_days=expiring_days)
    per_policy: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys((*SEVERITIES, "exempted"), 0))
    for row in service.compliance(session):
        counts = per_policy[row["policy"]]
        counts[row["severity"]] = counts.get(row["severity"], 0) + row["violations"]
        counts["exempted"] += row["exempted"]
    compliance = [
        {"policy": policy, **counts, "total": sum(counts[s] for s in SEVERITIES if s in counts)}
        for policy, counts in sorted(per_policy.items())
    ]
    risks = [
        {
            "certificate_id": r["certificate_id"],
            "common_name": r["common_name"],
            "owner": r["owner"],
            "score": r["score"],
            "violations": r["violations"],
            "not_after": r["not_after"],
        }
        for r in service.top_risks(session, limit=TOP_RISKS)
    ]
    return {
        "generated_at": now,
        "totals": {
            "certificates": sum(r["count"] for r in by_status),
            "by_status": [{"status": r["key"], "count": r["count"]} for r in by_status],
        },
        "expiry_forecast": service.expiry_forecast(session, now=now, per="week"),
        "compliance": compliance,
        "top_risks": risks,
    }


def summary_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary flattened to (section, key, value) rows, for CSV."""
    rows: list[dict[str, Any]] = [
        {"section": "total", "key": "certificates", "value": summary["totals"]["certificates"]}
    ]
    rows += [
        {"section": "status", "key": r["status"], "value": r["count"]} for r in summary["totals"]["by_status"]
    ]
    rows += [
        {"section": "expiry-week", "key": r["period"], "value": r["total"]}
        for r in summary["expiry_forecast"]
    ]
    rows += [
        {"section": "compliance", "key": r["policy"], "value": r["total"]} for r in summary["compliance"]
    ]
    rows += [
        {"section": "top-risk", "key": r["common_name"] or r["certificate_id"], "value": r["score"]}
        for r in summary["top_risks"]
    ]
    return rows


def _latin1(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return f"{value:%Y-%m-%d}"
    return str(value).encode("latin-1", "replace").decode("latin-1")


class _Report(FPDF):
    def __init__(self, generated_at: datetime) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.generated_at = generated_at
        self.set_auto_page_break(auto=True, margin=15)
        self.set_title("SSL-CLM certificate summary")
        self.set_creator("sslclm")

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Helvetica", size=8)
        self.cell(
            0,
            8,
            f"SSL-CLM summary, {self.generated_at:%Y-%m-%d %H:%M} UTC - page {self.page_no()}",
            align="C",
        )

    def heading(self, text: str) -> None:
        self.ln(4)
        self.set_font("Helvetica", style="B", size=13)
        self.cell(0, 8, text, new_x="LMARGIN", new_y="NEXT")
        self.set_font("Helvetica", size=9)

    def grid(self, headings: list[str], rows: list[list[Any]], widths: tuple[int, ...] | None = None) -> None:
        if not rows:
            self.cell(0, 6, "None.", new_x="LMARGIN", new_y="NEXT")
            return
        with self.table(col_widths=widths, text_align="LEFT", line_height=5.5) as table:
            header = table.row()
            for text in headings:
                header.cell(text)
            for values in rows:
                row = table.row()
                for value in values:
                    row.cell(_latin1(value))


def render_pdf(summary: dict[str, Any]) -> bytes:
    """The summary as a PDF document of one to a few pages."""
    pdf = _Report(summary["generated_at"])
    pdf.add_page()
    pdf.set_font("Helvetica", style="B", size=18)
    pdf.cell(0, 10, "Certificate inventory summary", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    pdf.cell(0, 6, f"Generated {summary['generated_at']:%Y-%m-%d %H:%M} UTC", new_x="LMARGIN", new_y="NEXT")

    totals = summary["totals"]
    pdf.heading(f"Certificates by status (total {totals['certificates']})")
    pdf.grid(["Status", "Certificates"], [[r["status"], r["count"]] for r in totals["by_status"]])

    pdf.heading("Expiry forecast, next 90 days (per week)")
    pdf.grid(
        ["Week of", "Managed", "Unmanaged", "Total"],
        [[r["period"], r["managed"], r["unmanaged"], r["total"]] for r in summary["expiry_forecast"]],
    )

    pdf.heading("Compliance by policy (open violations)")
    pdf.grid(
        ["Policy", *(s.capitalize() for s in SEVERITIES), "Exempted", "Total"],
        [
            [r["policy"], *(r.get(s, 0) for s in SEVERITIES), r["exempted"], r["total"]]
            for r in summary["compliance"]
        ],
    )

    pdf.heading(f"Top {TOP_RISKS} risks")
    pdf.grid(
        ["Certificate", "Owner", "Score", "Violations", "Expires"],
        [
            [r["common_name"], r["owner"], r["score"], r["violations"], r["not_after"]]
            for r in summary["top_risks"]
        ],
        widths=(70, 40, 20, 25, 25),
    )
    return bytes(pdf.output())
