"""Issuance set-up from the command line: CA connections, profiles, approvals and the renewal plan.

``sslclm ca add|list|check``, ``sslclm profile create|list|show``,
``sslclm approvals list|approve|reject`` and ``sslclm renewals forecast``; the commands that act on
managed certificates (enroll, renew, revoke, adopt) live in :mod:`sslclm.cli.issuance`. Each command
is one unit of work on the database, audited as the operating-system user.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from sqlalchemy.orm import Session

from sslclm.auth.principal import Principal
from sslclm.cli import issuance
from sslclm.cli.common import (
    OutputFormat,
    OutputOption,
    cli_context,
    emit,
    emit_json,
    emit_mapping,
    opened_platform,
    os_user,
)
from sslclm.cli.issuance import queued
from sslclm.core.db import session_scope
from sslclm.errors import InvalidInputError
from sslclm.spi.capabilities import ConnectorKind
from sslclm.workflows import approvals, connections, planner, profiles
from sslclm.workflows.models import Connection, ManagedCertificate, Profile

ca_app = typer.Typer(help="CA connections: add, list, check.", no_args_is_help=True)
profile_app = typer.Typer(help="Enrollment profiles: create, list, show.", no_args_is_help=True)
approvals_app = typer.Typer(help="Issuance requests that need a second person.", no_args_is_help=True)
renewals_app = typer.Typer(help="The renewal plan.", no_args_is_help=True)


# --- helpers ----------------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    """JSON literals (true, 12, ["a"], {...}, "quoted") as such; anything else as a plain string."""
    stripped = text.strip()
    if stripped in ("true", "false", "null") or stripped[:1] in ('"', "[", "{") or _is_number(stripped):
        try:
            return orjson.loads(stripped)
        except orjson.JSONDecodeError:
            return text
    return text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _set_path(config: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    target = config
    for part in parts[:-1]:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise InvalidInputError(f"'{part}' is not an object in the config", field="set")
        target = child
    target[parts[-1]] = value


def build_config(raw: str | None, assignments: list[str], secrets: list[str]) -> dict[str, Any]:
    """The connector config from ``--config`` (JSON, or @file), then ``--set k=v``, then secrets."""
    config: dict[str, Any] = {}
    if raw:
        text = Path(raw[1:]).read_text() if raw.startswith("@") else raw
        try:
            loaded = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise InvalidInputError(f"--config is not JSON: {exc}", field="config") from None
        if not isinstance(loaded, dict):
            raise InvalidInputError("--config must be a JSON object", field="config")
        config.update(loaded)
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError(f"--set wants key=value, got '{assignment}'", field="set")
        _set_path(config, key.strip(), _parse_value(value))
    interactive = sys.stdin.isatty()
    for key in secrets:
        if interactive:
            value = typer.prompt(f"{key}", hide_input=True)
        else:
            value = sys.stdin.readline().rstrip("\r\n")
        if not value:
            raise InvalidInputError(f"no value given for secret '{key}'", field=key)
        _set_path(config, key, value)
    return config


# --- ca -----------------------------------------------------------------------------------------------


def _connection_record(row: Connection) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "type": row.type_key,
        "enabled": row.enabled,
        "config": connections.masked_config(row),
        "last_check_at": row.last_check_at,
        "last_check_ok": row.last_check_ok,
        "last_check_message": row.last_check_message,
    }


@ca_app.command("add")
def ca_add(
    name: Annotated[str, typer.Argument(help="A name for the connection, e.g. internal or letsencrypt.")],
    type_key: Annotated[str, typer.Option("--type", help="Connector type: local, acme, ...")],
    config: Annotated[
        str | None, typer.Option("--config", help="The config as a JSON object, or @file with one.")
    ] = None,
    assignments: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value (dotted keys for nested fields, e.g. http01.mode=webroot)."),
    ] = None,
    secrets: Annotated[
        list[str] | None,
        typer.Option(
            "--secret",
            help="A secret field to prompt for (from standard input, one line each, when not a terminal).",
        ),
    ] = None,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Add a CA connection; secrets are encrypted at rest and never printed."""
    values = build_config(config, assignments or [], secrets or [])
    with opened_platform() as platform, session_scope(platform.sessions) as session:
        ctx = cli_context()
        row = connections.create_connection(
            session,
            ctx,
            platform,
            kind=ConnectorKind.CA_GATEWAY.value,
            name=name,
            type_key=type_key,
            config=values,
        )
        connections.ensure_crl_url(session, ctx, platform, row, platform.settings.public_url)
        record = _connection_record(row)
    if output is OutputFormat.JSON:
        emit_json(record)
        return
    typer.echo(f"CA connection '{row.name}' ({row.type_key}) added with id {row.id}")
    if row.type_key == "local" and not row.config.get("crl_url"):
        typer.echo(
            "note: no CRL URL in its certificates; set SSLCLM_PUBLIC_URL before adding, or add "
            "--set crl_url=https://<server>/api/v1/ca-connections/<id>/crl",
            err=True,
        )


@ca_app.command("list")
def ca_list(output: OutputOption = OutputFormat.TABLE) -> None:
    """CA connections and the outcome of their last check."""
    with opened_platform() as platform, platform.sessions() as session:
        records = [
            _connection_record(r) for r in connections.list_connections(session, ConnectorKind.CA_GATEWAY)
        ]
    emit(
        output,
        records,
        [
            ("id", "ID"),
            ("name", "Name"),
            ("type", "Type"),
            ("enabled", "Enabled"),
            ("last_check_ok", "Check OK"),
            ("last_check_message", "Last check"),
        ],
        empty="no CA connections",
    )


@ca_app.command("check")
def ca_check(
    name: Annotated[str, typer.Argument(help="Name or id of the CA connection.")],
    output: OutputOption = OutputFormat.TABLE,
) -> int:
    """Test the connection's credentials and reachability (exit status 1 when it fails)."""
    with opened_platform() as platform, session_scope(platform.sessions) as session:
        row = connections.get_connection(session, name, ConnectorKind.CA_GATEWAY)
        result = connections.check_connection(session, cli_context(), platform, row)
    record = {"connection": row.name, "ok": result.ok, "message": result.message, **dict(result.details)}
    emit_mapping(output, record)
    return 0 if result.ok else 1


# --- profiles ---------------------------------------------------------------------------------------


def _profile_record(session: Session, profile: Profile) -> dict[str, Any]:
    record = profiles.describe(profile)
    connection = session.get(Connection, profile.ca_connection_id)
    record["ca_connection"] = connection.name if connection else None
    return record


@profile_app.command("create")
def profile_create(
    name: Annotated[str, typer.Argument(help="The profile's name.")],
    ca: Annotated[str, typer.Option("--ca", help="Name or id of the CA connection it issues from.")],
    key_type: Annotated[str, typer.Option("--key-type", help="EC-P256, EC-P384, RSA-2048, ...")] = "EC-P256",
    validity_days: Annotated[int, typer.Option("--validity-days", min=1, max=3650)] = 90,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow", help="Allowed name pattern (*.example.com, **.corp, 10.0.0.0/8); repeatable."
        ),
    ] = None,
    purpose: Annotated[str, typer.Option("--purpose", help="server, client or both.")] = "server",
    approval_required: Annotated[
        bool, typer.Option("--approval-required", help="A second person approves each issuance.")
    ] = False,
    renewal_mode: Annotated[
        str, typer.Option("--renewal-mode", help="fraction (of lifetime left), days (before expiry) or ari.")
    ] = "fraction",
    renewal_value: Annotated[
        float | None, typer.Option("--renewal-value", help="The fraction or the number of days.")
    ] = None,
    description: Annotated[str | None, typer.Option("--description")] = None,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Create an enrollment profile."""
    data = profiles.ProfileInput(
        name=name,
        description=description,
        ca_connection=ca,
        key_type=key_type,
        validity_days=validity_days,
        allowed_names=allow or [],
        purpose=purpose,
        approval_required=approval_required,
        renewal_mode=renewal_mode,
        renewal_value=planner.DEFAULT_FRACTION if renewal_value is None else renewal_value,
    )
    with opened_platform() as platform, session_scope(platform.sessions) as session:
        profile = profiles.create_profile(session, cli_context(), platform, data)
        record = _profile_record(session, profile)
    queued(output, record, f"profile '{profile.name}' created (id {profile.id})")


@profile_app.command("list")
def profile_list(output: OutputOption = OutputFormat.TABLE) -> None:
    """Enrollment profiles."""
    with opened_platform() as platform, platform.sessions() as session:
        records = [_profile_record(session, p) for p in profiles.list_profiles(session)]
    emit(
        output,
        records,
        [
            ("name", "Name"),
            ("ca_connection", "CA"),
            ("key_type", "Key"),
            ("validity_days", "Days"),
            ("allowed_names", "Allowed names"),
            ("approval_required", "Approval"),
            ("renewal_mode", "Renewal"),
        ],
        empty="no profiles",
    )


@profile_app.command("show")
def profile_show(
    name: Annotated[str, typer.Argument(help="Name or id of the profile.")],
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """One profile."""
    with opened_platform() as platform, platform.sessions() as session:
        record = _profile_record(session, profiles.get_profile(session, name))
    emit_mapping(output, record)


# --- approvals and the plan -------------------------------------------------------------------------


def _cli_principal() -> Principal:
    # Whoever runs the CLI has the database and the master key: they act with an admin's rights.
    return Principal(user_id=None, username=f"cli:{os_user()}", role="admin", via="cli")


@approvals_app.command("list")
def approvals_list(
    status: Annotated[str, typer.Option("--status", help="pending, approved, rejected or all.")] = "pending",
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Issuance requests waiting for (or given) a decision."""
    with opened_platform() as platform, platform.sessions() as session:
        rows = approvals.list_approvals(session, status=None if status == "all" else status)
        records = []
        for approval in rows:
            record = approvals.describe(approval)
            target = session.get(ManagedCertificate, approval.managed_certificate_id)
            record["managed_certificate"] = target.name if target else None
            records.append(record)
    emit(
        output,
        records,
        [
            ("id", "ID"),
            ("managed_certificate", "Managed certificate"),
            ("job_id", "Job"),
            ("requested_by", "Requested by"),
            ("requested_at", "Requested (UTC)"),
            ("status", "Status"),
            ("reason", "Reason"),
        ],
        empty="no approvals",
    )


@approvals_app.command("approve")
def approvals_approve(
    approval_id: Annotated[int, typer.Argument(min=1)], output: OutputOption = OutputFormat.TABLE
) -> None:
    """Approve another person's request; its job continues."""
    with opened_platform() as platform, session_scope(platform.sessions) as session:
        row = approvals.approve(
            session, cli_context(), platform, approvals.get_approval(session, approval_id), _cli_principal()
        )
        record = approvals.describe(row)
    queued(output, record, f"approval {row.id} approved; job {row.job_id} continues")


@approvals_app.command("reject")
def approvals_reject(
    approval_id: Annotated[int, typer.Argument(min=1)],
    reason: Annotated[str, typer.Option("--reason", help="Why; the requester sees it.")],
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Reject a request, with a reason; its job is cancelled."""
    with opened_platform() as platform, session_scope(platform.sessions) as session:
        row = approvals.reject(
            session,
            cli_context(),
            platform,
            approvals.get_approval(session, approval_id),
            _cli_principal(),
            reason,
        )
        record = approvals.describe(row)
    queued(output, record, f"approval {row.id} rejected; job {row.job_id} cancelled")


@renewals_app.command("forecast")
def renewals_forecast(
    days: Annotated[int, typer.Option("--days", min=1, max=366, help="How far ahead.")] = 90,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Planned renewals per day (days without any are left out of the table)."""
    with opened_platform() as platform, platform.sessions() as session:
        plan = planner.forecast(session, now=platform.clock(), days=days)
    if output is OutputFormat.JSON:
        emit_json(plan)
        return
    busy = [day for day in plan["per_day"] if day["renewals"]]
    emit(output, busy, [("date", "Date"), ("renewals", "Renewals")], empty="no renewals planned")
    typer.echo(f"total {plan['total']} in the next {days} days; {plan['overdue']} overdue")


def register(app: typer.Typer) -> None:
    app.add_typer(ca_app, name="ca")
    app.add_typer(profile_app, name="profile")
    app.add_typer(approvals_app, name="approvals")
    app.add_typer(renewals_app, name="renewals")
    issuance.register(app)
