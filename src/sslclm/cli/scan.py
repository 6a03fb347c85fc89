"""``sslclm scan``: scan TLS endpoints from this machine and record them in the local inventory.

It needs no running server: it opens the platform from the environment (``SSLCLM_*``), stores the
scan, runs it in this process and writes endpoints, certificates and their history like a scan run
by a worker would.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sslclm.cli.common import (
    OutputFormat,
    OutputOption,
    cli_context,
    emit_json,
    emit_table,
    opened_platform,
    stderr_console,
)
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.discovery.diff import compare_scans
from sslclm.discovery.scans import ScanOutcome, ScanProgress, run_scan
from sslclm.discovery.schemas import ScanOptionsIn, ScanTargetsIn
from sslclm.discovery.service import EndpointFilter, create_scan, list_endpoints
from sslclm.errors import InvalidInputError

TABLE_COLUMNS = (
    "Endpoint",
    "Address",
    "Status",
    "TLS",
    "Subject CN",
    "Expires (UTC)",
    "Trusted",
    "Name",
    "Problem",
)
PAGE = 500


def _read_bundles(paths: list[Path]) -> str | None:
    if not paths:
        return None
    texts = []
    for path in paths:
        try:
            texts.append(path.read_text(errors="replace"))
        except OSError as exc:
            raise InvalidInputError(f"cannot read {path}: {exc.strerror}", field="ca-bundle") from None
    return "\n".join(texts)


def _label(item: dict[str, Any]) -> str:
    host = f"[{item['host']}]" if ":" in item["host"] else item["host"]
    label = f"{host}:{item['port']}"
    if item["sni"] and item["sni"] != item["host"]:
        label += f" ({item['sni']})"
    if item["protocol"] != "tls":
        label = f"{item['protocol']}://{label}"
    return label


def _problem(item: dict[str, Any]) -> str | None:
    if item["last_status"] != "ok":
        return str(item["last_error"] or item["last_error_kind"] or "error")
    problems = []
    if item["trust_error"]:
        problems.append(item["trust_error"])
    if item["hostname_match"] is False:
        problems.append("name mismatch")
    return "; ".join(problems) or None


def _rows(platform: Platform, scan_id: int, limit: int | None) -> list[dict[str, Any]]:
    """The endpoints this scan recorded, in id order (every page when ``limit`` is None)."""
    rows: list[dict[str, Any]] = []
    cursor: int | None = None
    with platform.sessions() as session:
        while limit is None or len(rows) < limit:
            page = PAGE if limit is None else min(PAGE, limit - len(rows))
            items, cursor = list_endpoints(
                session, EndpointFilter(scan_id=scan_id), now=platform.clock(), limit=page, cursor=cursor
            )
            rows.extend(items)
            if cursor is None:
                break
    return rows


def _run(platform: Platform, scan_id: int, total: int, show_progress: bool) -> ScanOutcome:
    if not show_progress:
        return run_scan(platform, scan_id)
    columns = (
        TextColumn("scanning"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("endpoints, [green]{task.fields[found]} found[/], [red]{task.fields[failed]} failed[/]"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr_console(), transient=True) as bar:
        task = bar.add_task("scan", total=total, found=0, failed=0)

        def update(progress: ScanProgress) -> None:
            bar.update(task, completed=progress.done, found=progress.found, failed=progress.failed)

        return run_scan(platform, scan_id, progress=update)


def scan(
    targets: Annotated[
        list[str],
        typer.Argument(
            help="Hostnames, addresses, CIDR blocks (10.0.0.0/24), ranges (10.0.0.1-50), 'host:443,8443', "
            "'smtp://mail.example.com:25', 'www.example.com,api.example.com@10.0.0.5'.",
            show_default=False,
        ),
    ],
    ports: Annotated[str, typer.Option("--ports", "-p", help="Ports for targets without their own.")] = "443",
    sni: Annotated[
        list[str] | None, typer.Option("--sni", help="Also ask every target for this name (repeatable).")
    ] = None,
    exclude: Annotated[
        list[str] | None,
        typer.Option("--exclude", help="Skip these addresses, blocks or names (repeatable)."),
    ] = None,
    protocol: Annotated[
        str | None,
        typer.Option("--protocol", help="auto (by port), tls, smtp, imap, pop3, ldap, ftp or postgres."),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, max=10_000, help="Endpoints in flight at once.")
    ] = 256,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=0.1, max=120.0, help="Connect timeout in seconds (handshake: twice it)."
        ),
    ] = 5.0,
    rate: Annotated[float | None, typer.Option("--rate", min=0.1, help="New connections per second.")] = None,
    ca_bundle: Annotated[
        list[Path] | None,
        typer.Option("--ca-bundle", help="Also trust the roots in this PEM file (repeatable)."),
    ] = None,
    no_system_roots: Annotated[
        bool, typer.Option("--no-system-roots", help="Trust only the --ca-bundle roots.")
    ] = False,
    name: Annotated[str | None, typer.Option("--name", help="A name for the scan.")] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="Most endpoints listed in the table (JSON lists all).")
    ] = 200,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Scan TLS endpoints and record their certificates, chains and history in the inventory.

    Exits 0 when the scan ran (whatever the endpoints answered), 1 on bad input.
    """
    spec = ScanTargetsIn(
        targets=targets, ports=ports, sni=sni or [], exclude=exclude or [], protocol=protocol
    )
    options = ScanOptionsIn(
        concurrency=concurrency,
        connect_timeout=timeout,
        handshake_timeout=timeout * 2,
        rate=rate,
        use_system_roots=not no_system_roots,
        extra_roots_pem=_read_bundles(ca_bundle or []),
    )
    if no_system_roots and not ca_bundle:
        raise InvalidInputError("--no-system-roots needs at least one --ca-bundle", field="ca-bundle")
    with opened_platform() as platform:
        with session_scope(platform.sessions) as session:
            created = create_scan(
                session, cli_context(), spec, options, now=platform.clock(), name=name, enqueue=False
            )
            scan_id, total = created.id, created.total
        outcome = _run(platform, scan_id, total, show_progress=sys.stderr.isatty())
        with platform.sessions() as session:
            counts = compare_scans(session, scan_id, limit=0)
        if output is OutputFormat.JSON:
            emit_json(
                {
                    "scan": outcome.as_dict(),
                    "changes": counts["counts"],
                    "previous_scan_id": counts["previous_scan_id"],
                    "endpoints": _rows(platform, scan_id, None),
                }
            )
            return
        rows = _rows(platform, scan_id, limit)
    table = [
        [
            _label(item),
            item["address"],
            item["last_status"],
            item["tls_version"],
            (item["certificate"] or {}).get("common_name"),
            (item["certificate"] or {}).get("not_after"),
            item["trusted"],
            item["hostname_match"],
            _problem(item),
        ]
        for item in rows
    ]
    if table:
        emit_table(TABLE_COLUMNS, table, title=f"scan {scan_id}")
    silent = outcome.done - len(rows) if len(rows) < limit else None
    summary = (
        f"scan {scan_id} {outcome.status}: {outcome.done} of {outcome.total} endpoints, "
        f"{outcome.found} served a certificate ({outcome.certificates} distinct), {outcome.failed} failed"
    )
    if silent:
        summary += f"; {silent} never answered"
    typer.echo(summary)
    changes = counts["counts"]
    if counts["previous_scan_id"] is not None:
        typer.echo(
            f"since scan {counts['previous_scan_id']}: {changes['endpoints_new']} new, "
            f"{changes['endpoints_changed']} changed, {changes['endpoints_vanished']} vanished endpoints"
        )


def register(app: typer.Typer) -> None:
    app.command("scan")(scan)
