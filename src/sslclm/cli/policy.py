"""``sslclm policy``: policy sets from YAML/JSON files, evaluation, violations and exemptions."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from sqlalchemy import select

from sslclm.cli.common import cli_context, opened_platform, unit_of_work
from sslclm.cli.reporting_output import FormatOption, OutputFileOption, RowFormat, emit_rows, to_json
from sslclm.core.clock import as_utc
from sslclm.errors import InvalidInputError
from sslclm.policies import service
from sslclm.policies.checks import Severity
from sslclm.policies.models import PolicyExemption

policy_app = typer.Typer(
    help="Policy sets, compliance of the inventory, violations and exemptions.", no_args_is_help=True
)
exempt_app = typer.Typer(
    help="Exemptions: accepted violations, with justification, approver and expiry.", no_args_is_help=True
)
policy_app.add_typer(exempt_app, name="exempt")

MAX_DOCUMENT = 256 * 1024
NameArgument = Annotated[str, typer.Argument(help="The policy set's name.")]
VIOLATION_COLUMNS = (
    "id",
    "certificate_id",
    "common_name",
    "policy",
    "check",
    "severity",
    "reason",
    "not_after",
)


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")


def _summary(row: Any) -> dict[str, Any]:
    view = service.policy_view(row)
    return {
        "name": view["name"],
        "position": view["position"],
        "scope": view["scope"]["kind"] + (f":{view['scope']['value']}" if view["scope"]["value"] else ""),
        "enabled": view["enabled"],
        "checks": ", ".join(c["check"] for c in view["document"].get("checks", [])),
        "updated_at": view["updated_at"],
    }


@policy_app.command("list")
def list_policies(fmt: FormatOption = RowFormat.TABLE, output: OutputFileOption = None) -> None:
    """Policy sets in evaluation order."""
    with opened_platform() as platform, platform.sessions() as session:
        rows = [_summary(p) for p in service.list_policies(session)]
    emit_rows(rows, fmt, output, empty="no policy sets (the built-in baseline applies)")


@policy_app.command("checks")
def list_checks(fmt: FormatOption = RowFormat.TABLE, output: OutputFileOption = None) -> None:
    """The built-in checks a policy set can use, with their default severity and parameters."""
    rows = []
    for check in service.describe_checks():
        properties = check["params_schema"].get("properties", {})
        rows.append(
            {
                "check": check["check"],
                "severity": check["severity"],
                "parameters": ", ".join(
                    f"{name}={json.dumps(spec['default'])}" if "default" in spec else name
                    for name, spec in properties.items()
                ),
                "description": check["description"],
            }
        )
    emit_rows(rows, fmt, output, empty="no checks")


@policy_app.command("show")
def show_policy(
    name: NameArgument,
    as_json: Annotated[
        bool, typer.Option("--json", help="The stored view as JSON instead of the source document.")
    ] = False,
) -> None:
    """One policy set: its source document (YAML or JSON, as applied), or its stored view."""
    with opened_platform() as platform, platform.sessions() as session:
        row = service.get_policy(session, name)
        text = to_json(service.policy_view(row)).decode() if as_json else row.source
    typer.echo(text.rstrip("\n"))


@policy_app.command("apply")
def apply_policy(
    file: Annotated[
        Path, typer.Argument(help="A YAML or JSON policy document ('-' for standard input).", allow_dash=True)
    ],
    position: Annotated[
        int | None, typer.Option("--position", min=0, help="Evaluation order (default: last).")
    ] = None,
) -> None:
    """Creates or replaces the policy set the document names, then re-evaluates the inventory
    (a large one in a job, as through the API)."""
    if str(file) == "-":
        text = typer.get_text_stream("stdin").read()
    else:
        if file.stat().st_size > MAX_DOCUMENT:
            raise InvalidInputError(f"{file}: the policy document is larger than 256 KiB", field="document")
        text = file.read_text(encoding="utf-8")
    with opened_platform() as platform, platform.sessions() as session:
        now = platform.clock()
        try:
            row, created = service.put_policy(session, cli_context(), text, now=now, position=position)
        except InvalidInputError as exc:
            # The message already names the line and field; say which file too.
            raise InvalidInputError(f"{file}: {exc.message}", field=exc.field) from None
        evaluation = service.reevaluate(session, now)
        name = row.name
        session.commit()
    typer.echo(f"{'created' if created else 'updated'} policy set '{name}'; {_evaluated(evaluation)}")


def _evaluated(evaluation: dict[str, Any]) -> str:
    if "queued_job_id" in evaluation:
        return f"re-evaluation queued as job {evaluation['queued_job_id']}"
    return f"evaluated {evaluation['certificates']} certificate(s), {evaluation['violations']} violation(s)"


@policy_app.command("delete")
def delete_policy(name: NameArgument) -> None:
    """Deletes a policy set and the violations it found."""
    with opened_platform() as platform, platform.sessions() as session:
        evaluation = service.delete_policy(session, cli_context(), name, now=platform.clock())
        session.commit()
    typer.echo(f"deleted policy set '{name}'; {_evaluated(evaluation)}")


@policy_app.command("evaluate")
def evaluate(fmt: FormatOption = RowFormat.TABLE) -> None:
    """Re-evaluates every live certificate against the policy sets now (a large inventory in a job,
    as through the API: run a worker)."""
    with opened_platform() as platform, platform.sessions() as session:
        evaluation = service.reevaluate(session, platform.clock())
        session.commit()
    emit_rows([evaluation], fmt)


@policy_app.command("violations")
def violations(
    fmt: FormatOption = RowFormat.TABLE,
    output: OutputFileOption = None,
    severity: Annotated[Severity | None, typer.Option("--severity", help="This severity or worse.")] = None,
    check: Annotated[str | None, typer.Option("--check", help="Only this check.")] = None,
    policy: Annotated[str | None, typer.Option("--policy", help="Only this policy set.")] = None,
    certificate: Annotated[
        int | None, typer.Option("--certificate", min=1, help="Only this certificate id.")
    ] = None,
    owner: Annotated[str | None, typer.Option("--owner")] = None,
    team: Annotated[str | None, typer.Option("--team")] = None,
    include_exempted: Annotated[
        bool, typer.Option("--include-exempted", help="Exempted violations too.")
    ] = False,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=1000, help="Rows in a table (csv/json: all).")
    ] = 100,
) -> None:
    """Open violations, newest first; csv and json export every match, read in keyset batches."""
    flt = service.ViolationFilter(
        severity=severity,
        check=check,
        policy=policy,
        certificate_id=certificate,
        owner=owner,
        team=team,
        include_exempted=include_exempted,
    )
    with opened_platform() as platform, platform.sessions() as session:
        if fmt is RowFormat.TABLE:
            rows, more = service.list_violations(session, flt, limit=limit)
        else:
            rows, more = list(service.iter_violations(session, flt)), None
    emit_rows(rows, fmt, output, columns=VIOLATION_COLUMNS, empty="no violations")
    if more is not None:
        typer.echo(f"more than {limit}: raise --limit or export with --format csv", err=True)


@exempt_app.command("add")
def add_exemption(
    justification: Annotated[
        str, typer.Option("--justification", help="Why the violation is accepted (10+ chars).")
    ],
    approver: Annotated[str, typer.Option("--approver", help="Who approved it (not you).")],
    expires: Annotated[
        datetime, typer.Option("--expires", help="When the exemption ends (UTC), e.g. 2027-01-31.")
    ],
    certificate: Annotated[
        int | None, typer.Option("--certificate", min=1, help="One certificate's id.")
    ] = None,
    policy: Annotated[str | None, typer.Option("--policy", help="One policy set.")] = None,
    check: Annotated[str | None, typer.Option("--check", help="One check.")] = None,
) -> None:
    """Grants an exemption for a certificate, a policy set or a check (or a combination)."""
    data = service.ExemptionCreate(
        certificate_id=certificate,
        policy=policy,
        check=check,
        justification=justification,
        approver=approver,
        expires_at=as_utc(expires),
    )
    with opened_platform() as platform, platform.sessions() as session:
        row, evaluation = service.create_exemption(session, cli_context(), data, now=platform.clock())
        exemption_id = row.id
        session.commit()
    until = f"{as_utc(expires):%Y-%m-%d %H:%M} UTC"
    typer.echo(f"exemption {exemption_id} granted until {until}; {_evaluated(evaluation)}")


@exempt_app.command("list")
def list_exemptions(fmt: FormatOption = RowFormat.TABLE, output: OutputFileOption = None) -> None:
    """Exemptions, oldest first."""
    with unit_of_work() as session:
        rows = session.execute(select(PolicyExemption).order_by(PolicyExemption.id)).scalars()
        records = [service.exemption_view(r) for r in rows]
    emit_rows(records, fmt, output, empty="no exemptions")


@exempt_app.command("delete")
def delete_exemption(exemption_id: Annotated[int, typer.Argument(min=1, help="The exemption's id.")]) -> None:
    """Withdraws an exemption; what it covered counts as a violation again."""
    with opened_platform() as platform, platform.sessions() as session:
        evaluation = service.delete_exemption(session, cli_context(), exemption_id, now=platform.clock())
        session.commit()
    typer.echo(f"exemption {exemption_id} withdrawn; {_evaluated(evaluation)}")
