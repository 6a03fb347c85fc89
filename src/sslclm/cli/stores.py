"""``sslclm store list|show|add|check|scan``: certificate store connections from the command line.

The commands call the same services as the API's ``/stores`` routes. A store's config comes from a
JSON or YAML file (``--config``), ``--set key=value`` on top, and secrets last: prompted for
(``--secret KEY``, or one line each from standard input when it is not a terminal) or read from a
file (``--secret-file KEY=PATH``), so they never appear in the shell's history or the process list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
import yaml
from sqlalchemy import func, select

from sslclm.cli.common import (
    OutputFormat,
    OutputOption,
    cli_context,
    emit,
    emit_json,
    emit_mapping,
    opened_platform,
)
from sslclm.cli.deploy import job_outcome, run_jobs_here
from sslclm.cli.issuance import TimeoutOption, WaitOption, queued
from sslclm.cli.workflows import build_config
from sslclm.core.db import session_scope
from sslclm.deployments import service
from sslclm.deployments.models import StoreBinding
from sslclm.errors import InvalidInputError
from sslclm.spi.capabilities import ConnectorKind
from sslclm.workflows import connections
from sslclm.workflows.models import Connection

store_app = typer.Typer(help="Certificate stores: list, show, add, check, scan.", no_args_is_help=True)

StoreArgument = Annotated[str, typer.Argument(metavar="STORE", help="Name or id of the store.")]
MAX_CONFIG_BYTES = 1024 * 1024


def load_config_file(path: Path) -> dict[str, Any]:
    """A JSON or YAML file holding one object (YAML is a superset of JSON, so one parser reads both)."""
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise InvalidInputError(f"--config file {path} is larger than 1 MiB", field="config")
        text = path.read_text()
    except OSError as exc:
        raise InvalidInputError(
            f"cannot read --config file {path}: {exc.strerror or exc}", field="config"
        ) from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise InvalidInputError(f"--config file {path} is not JSON or YAML{line}", field="config") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise InvalidInputError(f"--config file {path} must hold an object (key: value)", field="config")
    return loaded


def _put(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    target = config
    for part in parents:
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise InvalidInputError(f"'{part}' is not an object in the config", field="secret-file")
        target = child
    target[last] = value


def read_secret_files(assignments: list[str]) -> dict[str, Any]:
    """``KEY=PATH`` pairs: each secret is the file's content without its final line break."""
    secrets: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, path = assignment.partition("=")
        if not sep or not key.strip() or not path:
            raise InvalidInputError(f"--secret-file wants KEY=PATH, got '{assignment}'", field="secret-file")
        try:
            value = Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            raise InvalidInputError(
                f"cannot read the secret for '{key}' from {path}: {exc.strerror or exc}", field=key
            ) from None
        if not value:
            raise InvalidInputError(f"the secret file for '{key}' is empty", field=key)
        _put(secrets, key.strip(), value)
    return secrets


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        current = merged.get(key)
        merged[key] = (
            _merge(current, value) if isinstance(current, dict) and isinstance(value, dict) else value
        )
    return merged


def _store_record(row: Connection) -> dict[str, Any]:
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


@store_app.command("list")
def store_list(output: OutputOption = OutputFormat.TABLE) -> None:
    """Certificate stores and the outcome of their last check."""
    with opened_platform() as platform, platform.sessions() as session:
        records = [_store_record(r) for r in connections.list_connections(session, ConnectorKind.CERT_STORE)]
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
        empty="no certificate stores",
    )


@store_app.command("show")
def store_show(ref: StoreArgument, output: OutputOption = OutputFormat.TABLE) -> None:
    """One store (secrets masked) and how many bindings deploy to it."""
    with opened_platform() as platform, platform.sessions() as session:
        row = service.store_connection(session, ref)
        record = _store_record(row)
        record["bindings"] = session.execute(
            select(func.count()).select_from(StoreBinding).where(StoreBinding.store_connection_id == row.id)
        ).scalar_one()
    emit_mapping(output, record)


@store_app.command("add")
def store_add(
    name: Annotated[str, typer.Argument(help="A name for the store, e.g. web-edge.")],
    type_key: Annotated[str, typer.Option("--type", help="Store type: pem-files, nginx, haproxy, ...")],
    config_file: Annotated[
        Path | None, typer.Option("--config", help="The config as a JSON or YAML file (an object).")
    ] = None,
    assignments: Annotated[
        list[str] | None,
        typer.Option("--set", help="key=value on top of the file (dotted keys for nested fields)."),
    ] = None,
    secrets: Annotated[
        list[str] | None,
        typer.Option(
            "--secret",
            help="A secret field to prompt for (from standard input, one line each, when not a terminal).",
        ),
    ] = None,
    secret_files: Annotated[
        list[str] | None,
        typer.Option("--secret-file", metavar="KEY=PATH", help="A secret field read from a file."),
    ] = None,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Add a certificate store; the config is checked against the type's schema before anything is saved."""
    base = load_config_file(config_file) if config_file is not None else {}
    base = _merge(base, read_secret_files(secret_files or []))
    values = build_config(orjson.dumps(base).decode() if base else None, assignments or [], secrets or [])
    with opened_platform() as platform, session_scope(platform.sessions) as session:
        row = connections.create_connection(
            session,
            cli_context(),
            platform,
            kind=ConnectorKind.CERT_STORE.value,
            name=name,
            type_key=type_key,
            config=values,
        )
        record = _store_record(row)
    if output is OutputFormat.JSON:
        emit_json(record)
        return
    typer.echo(
        f"store '{row.name}' ({row.type_key}) added with id {row.id}; test it with 'sslclm store check'"
    )


@store_app.command("check")
def store_check(ref: StoreArgument, output: OutputOption = OutputFormat.TABLE) -> int:
    """Test access to the store (exit status 1 when it fails)."""
    with opened_platform() as platform, session_scope(platform.sessions) as session:
        row = service.store_connection(session, ref)
        result = connections.check_connection(session, cli_context(), platform, row)
        record = {"store": row.name, "ok": result.ok, "message": result.message, **dict(result.details)}
    emit_mapping(output, record)
    return 0 if result.ok else 1


@store_app.command("scan")
def store_scan(
    ref: StoreArgument,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
    output: OutputOption = OutputFormat.TABLE,
) -> int:
    """Read what the store holds into the certificate inventory (sightings name the store and alias)."""
    with opened_platform() as platform:
        with session_scope(platform.sessions) as session:
            row, job = service.request_scan(session, cli_context(), platform, ref)
            record: dict[str, Any] = {"job_id": job.id, "store": row.name}
        if wait:
            finished = run_jobs_here(platform, record["job_id"], timeout)
            emit_mapping(output, {**record, "job_status": finished.status, **(finished.result or {})})
            return job_outcome(finished)
    queued(output, record, f"scan of store '{row.name}' is job {record['job_id']}")
    return 0


def register(app: typer.Typer) -> None:
    app.add_typer(store_app, name="store")
