"""``sslclm report``: the reporting service's reports as a table, CSV or JSON; the PDF summary; the CBOM."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from sslclm.cli.common import opened_platform
from sslclm.cli.reporting_output import (
    FormatOption,
    OutputFileOption,
    RowFormat,
    emit_rows,
    to_json,
    write_output,
)
from sslclm.inventory.service import get_certificate
from sslclm.reporting import cbom, pdf, service

report_app = typer.Typer(
    help="Reports over the inventory: expiry, breakdowns, compliance, risk, PDF, CBOM.", no_args_is_help=True
)
ByOption = Annotated[str, typer.Option("--by", help="The field to group by.")]


def register(app: typer.Typer) -> None:
    app.add_typer(report_app, name="report")


@report_app.command("expiry")
def expiry(
    fmt: FormatOption = RowFormat.TABLE,
    output: OutputFileOption = None,
    per: Annotated[str, typer.Option("--per", help="day or week.")] = "day",
) -> None:
    """Certificates expiring per day or week over the next 90 days, managed and unmanaged."""
    if per not in ("day", "week"):
        raise typer.BadParameter(f"'{per}' is not day or week", param_hint="--per")
    period: Literal["day", "week"] = "week" if per == "week" else "day"
    with opened_platform() as platform, platform.sessions() as session:
        rows = service.expiry_forecast(session, now=platform.clock(), per=period)
    emit_rows(rows, fmt, output, empty="nothing expires in the next 90 days")


@report_app.command("breakdown")
def breakdown(
    by: ByOption = "issuer", fmt: FormatOption = RowFormat.TABLE, output: OutputFileOption = None
) -> None:
    """Certificates counted by issuer, key algorithm, owner, team, source, environment, status ..."""
    with opened_platform() as platform, platform.sessions() as session:
        rows = service.breakdown(
            session, by, now=platform.clock(), expiring_days=platform.settings.expiring_days
        )
    emit_rows(rows, fmt, output, empty="no certificates")


@report_app.command("compliance")
def compliance(fmt: FormatOption = RowFormat.TABLE, output: OutputFileOption = None) -> None:
    """Open violations per policy, check and severity, exempted ones counted apart."""
    with opened_platform() as platform, platform.sessions() as session:
        rows = service.compliance(session)
    emit_rows(rows, fmt, output, empty="no violations")


@report_app.command("top-risks")
def top_risks(
    fmt: FormatOption = RowFormat.TABLE,
    output: OutputFileOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 20,
) -> None:
    """Certificates with the highest risk score."""
    with opened_platform() as platform, platform.sessions() as session:
        rows = service.top_risks(session, limit=limit)
    emit_rows(rows, fmt, output, empty="no scored certificates (run 'sslclm policy evaluate')")


@report_app.command("risk")
def risk(by: ByOption = "team", fmt: FormatOption = RowFormat.TABLE, output: OutputFileOption = None) -> None:
    """Risk summed, averaged and maximised per owner, team or issuer."""
    with opened_platform() as platform, platform.sessions() as session:
        rows = service.risk_rollup(session, by)
    emit_rows(rows, fmt, output, empty="no scored certificates")


@report_app.command("ca-concentration")
def ca_concentration(
    certificate: Annotated[
        str, typer.Argument(help="The CA certificate: id or SHA-256 fingerprint (prefix).")
    ],
    fmt: FormatOption = RowFormat.TABLE,
    output: OutputFileOption = None,
) -> None:
    """How many certificates chain to a CA and where they are served (what to replace if it is distrusted)."""
    with opened_platform() as platform, platform.sessions() as session:
        report = service.ca_concentration(session, get_certificate(session, certificate).id)
    if fmt is RowFormat.JSON:
        write_output(to_json(report), output)
        return
    if fmt is RowFormat.TABLE:
        typer.echo(f"{report['ca']['subject']}: {report['certificates']} certificate(s) chain to it")
    emit_rows(report["endpoints"], fmt, output, empty="served on no known endpoint")


@report_app.command("summary")
def summary(fmt: FormatOption = RowFormat.TABLE, output: OutputFileOption = None) -> None:
    """The figures of the PDF summary (totals, expiry per week, compliance per policy, top risks)."""
    with opened_platform() as platform, platform.sessions() as session:
        figures = pdf.collect_summary(
            session, now=platform.clock(), expiring_days=platform.settings.expiring_days
        )
    if fmt is RowFormat.JSON:
        write_output(to_json(figures), output)
    else:
        emit_rows(pdf.summary_rows(figures), fmt, output)


@report_app.command("pdf")
def pdf_summary(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="The PDF file to write.", dir_okay=False)
    ] = Path("sslclm-summary.pdf"),
) -> None:
    """Writes the PDF summary: totals by status, expiry forecast, compliance by policy, top risks."""
    with opened_platform() as platform, platform.sessions() as session:
        figures = pdf.collect_summary(
            session, now=platform.clock(), expiring_days=platform.settings.expiring_days
        )
    write_output(pdf.render_pdf(figures), output)


@report_app.command("cbom")
def cryptographic_bom(
    output: OutputFileOption = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=cbom.MAX_CERTIFICATES, help="Certificates in this document.")
    ] = cbom.DEFAULT_CERTIFICATES,
    after_id: Annotated[
        int, typer.Option("--after-id", min=0, help="Start after this certificate id (the next page).")
    ] = 0,
) -> None:
    """A CycloneDX 1.6 cryptographic bill of materials (JSON), validated against the schema."""
    with opened_platform() as platform, platform.sessions() as session:
        page = cbom.build_cbom(session, now=platform.clock(), after_id=after_id, limit=limit)
    write_output(page.text.encode() + b"\n", output)
    if page.next_after_id is not None:
        print(f"more certificates: --after-id {page.next_after_id}", file=sys.stderr)
