"""``sslclm import`` and ``sslclm certs``: filling the inventory and reading it back."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import chain, islice
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sslclm.cli.common import (
    OutputFormat,
    OutputOption,
    PasswordStdinOption,
    cli_context,
    emit_json,
    emit_mapping,
    emit_table,
    opened_platform,
    stderr_console,
)
from sslclm.core.platform import Platform
from sslclm.errors import InvalidInputError
from sslclm.inventory.export import stream_csv, stream_json
from sslclm.inventory.importer import ImportSummary, Rejection, import_paths
from sslclm.inventory.query import MAX_PAGE, CertificateFilter, Status, iter_certificates, list_certificates
from sslclm.inventory.service import certificate_detail, get_certificate

certs_app = typer.Typer(help="The certificate inventory: list, show, export.", no_args_is_help=True)

SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
LIST_COLUMNS = [
    ("id", "ID"),
    ("common_name", "Common name"),
    ("issuer_cn", "Issuer"),
    ("not_after", "Expires (UTC)"),
    ("days_left", "Days"),
    ("status", "Status"),
    ("key", "Key"),
    ("source", "Source"),
    ("fingerprint", "SHA-256"),
]


class ExportFormat(StrEnum):
    CSV = "csv"
    JSON = "json"


def parse_when(value: str | None, option: str) -> datetime | None:
    """A date (midnight UTC) or an ISO 8601 date-time; a time without an offset is UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(
            f"'{value}' is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS][+HH:MM]", param_hint=option
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@dataclass(frozen=True)
class Filters:
    """The certificate filters shared by ``certs list`` and ``certs export`` (same names as the API)."""

    search: str | None
    status: list[Status] | None
    expires_within: int | None
    expires_after: str | None
    expires_before: str | None
    issuer: str | None
    key_algorithm: str | None
    key_size: int | None
    signature_algorithm: str | None
    owner: str | None
    team: str | None
    environment: str | None
    tag: str | None
    source: str | None
    include_archived: bool

    def build(self, now: datetime) -> CertificateFilter:
        after = parse_when(self.expires_after, "--expires-after")
        before = parse_when(self.expires_before, "--expires-before")
        if self.expires_within is not None:
            # "Expires within N days" means still valid now and gone by then.
            horizon = now + timedelta(days=self.expires_within)
            before = min(before, horizon) if before else horizon
            after = max(after, now) if after else now
        return CertificateFilter(
            q=self.search,
            status=list(self.status or []),
            expires_after=after,
            expires_before=before,
            issuer=self.issuer,
            key_algorithm=self.key_algorithm,
            key_size=self.key_size,
            signature_algorithm=self.signature_algorithm,
            owner=self.owner,
            team=self.team,
            environment=self.environment,
            tag=self.tag,
            source=self.source,
            include_archived=self.include_archived,
        )


# Typer reads options from the signature, so every filter is spelled out in each command that takes them.
SearchOpt = Annotated[
    str | None,
    typer.Option(
        "--search",
        "-q",
        help="Text in the subject (CN), SANs or issuer; or the start of the serial or SHA-256 fingerprint.",
    ),
]
StatusOpt = Annotated[
    list[Status] | None,
    typer.Option("--status", help="Lifecycle status; repeat for several.", case_sensitive=False),
]
WithinOpt = Annotated[
    int | None, typer.Option("--expires-within", min=0, max=36500, help="Still valid, expiring within DAYS.")
]
AfterOpt = Annotated[str | None, typer.Option("--expires-after", help="Expiring at or after DATE (UTC).")]
BeforeOpt = Annotated[str | None, typer.Option("--expires-before", help="Expiring before DATE (UTC).")]
IssuerOpt = Annotated[str | None, typer.Option("--issuer", help="Text in the issuer name.")]
KeyAlgOpt = Annotated[str | None, typer.Option("--key-algorithm", help="RSA, EC, Ed25519, ...")]
KeySizeOpt = Annotated[int | None, typer.Option("--key-size", min=1, help="Key size in bits.")]
SigAlgOpt = Annotated[str | None, typer.Option("--signature-algorithm", help="e.g. sha256WithRSAEncryption.")]
OwnerOpt = Annotated[str | None, typer.Option("--owner", help="Owner (exact).")]
TeamOpt = Annotated[str | None, typer.Option("--team", help="Team (exact).")]
EnvOpt = Annotated[str | None, typer.Option("--environment", help="Environment (exact).")]
TagOpt = Annotated[str | None, typer.Option("--tag", help="Carries this tag.")]
SourceOpt = Annotated[str | None, typer.Option("--source", help="Imported or seen by this source.")]
ArchivedOpt = Annotated[bool, typer.Option("--include-archived", help="Include archived certificates.")]
SortOpt = Annotated[str, typer.Option("--sort", help="not_after, common_name, issuer, key_size, ...")]
DescOpt = Annotated[bool, typer.Option("--desc", help="Sort descending.")]


def _issuer_cn(dn: str | None) -> str | None:
    if not dn:
        return dn
    for part in dn.split(","):
        name, _, value = part.partition("=")
        if name.strip().upper() == "CN":
            return value.strip()
    return dn


def _list_row(item: dict[str, Any]) -> dict[str, Any]:
    key = item.get("key_algorithm") or "?"
    if item.get("key_size"):
        key = f"{key} {item['key_size']}"
    return {
        **item,
        "issuer_cn": _issuer_cn(item.get("issuer")),
        "key": key,
        "fingerprint": (item.get("fingerprint_sha256") or "")[:16],
    }


def _check_source(source: str) -> str:
    if not SOURCE_NAME.match(source):
        raise InvalidInputError(
            "source must be 1-64 letters, digits or . _ : - (e.g. 'import')", field="source"
        )
    return source


def _reason(rejection: Rejection) -> str:
    # Parse errors may already start with the file name; the path is printed once, in front.
    return rejection.reason.removeprefix(f"{rejection.path}: ")


def _count_files(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        if path.is_dir():
            total += sum(len(files) for _, _, files in os.walk(path))
        else:
            total += 1
    return total


def _run_import(
    platform: Platform, paths: list[Path], password: str | None, source: str, show_progress: bool
) -> ImportSummary:
    ctx = cli_context()
    if not show_progress:
        return import_paths(platform, paths, ctx, password=password, source=source)
    console = stderr_console()
    columns = (
        TextColumn("importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("import", total=_count_files(paths))
        return import_paths(
            platform,
            paths,
            ctx,
            password=password,
            source=source,
            progress=lambda done: progress.advance(task, done),
        )


def register(app: typer.Typer) -> None:
    app.add_typer(certs_app, name="certs")

    @app.command("import")
    def import_command(
        paths: Annotated[list[Path], typer.Argument(help="Files and directories (searched recursively).")],
        password_stdin: PasswordStdinOption = False,
        source: Annotated[str, typer.Option("--source", help="Name recorded as the source.")] = "import",
        output: OutputOption = OutputFormat.TABLE,
    ) -> None:
        """Import certificates (PEM, DER, PKCS#7, PKCS#12, JKS; keys beside them are stored encrypted).

        Exits 1 when any file was rejected; the summary lists each one with the reason.
        """
        missing = [str(path) for path in paths if not path.exists()]
        if missing:
            raise InvalidInputError(f"no such file or directory: {', '.join(missing)}", field="paths")
        _check_source(source)
        password = None
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n") or None
        show_progress = output is OutputFormat.TABLE and stderr_console().is_terminal
        with opened_platform() as platform:
            summary = _run_import(platform, paths, password, source, show_progress)
        rejected = [{"path": r.path, "reason": _reason(r)} for r in summary.rejected]
        if output is OutputFormat.JSON:
            emit_json({**summary.as_dict(), "rejected": rejected})
        else:
            typer.echo(
                f"files: {summary.files}  imported: {summary.imported}  updated: {summary.updated}  "
                f"keys stored: {summary.keys_stored}  rejected: {len(summary.rejected)}"
            )
            for rejection in rejected:
                typer.echo(f"rejected {rejection['path']}: {rejection['reason']}")
        if summary.rejected:
            raise typer.Exit(1)

    @certs_app.command("list")
    def list_command(
        search: SearchOpt = None,
        status: StatusOpt = None,
        expires_within: WithinOpt = None,
        expires_after: AfterOpt = None,
        expires_before: BeforeOpt = None,
        issuer: IssuerOpt = None,
        key_algorithm: KeyAlgOpt = None,
        key_size: KeySizeOpt = None,
        signature_algorithm: SigAlgOpt = None,
        owner: OwnerOpt = None,
        team: TeamOpt = None,
        environment: EnvOpt = None,
        tag: TagOpt = None,
        source: SourceOpt = None,
        include_archived: ArchivedOpt = False,
        sort: SortOpt = "not_after",
        desc: DescOpt = False,
        limit: Annotated[int, typer.Option("--limit", min=1, max=MAX_PAGE, help="Rows per page.")] = 50,
        cursor: Annotated[
            str | None, typer.Option("--cursor", help="next_cursor of the previous page.")
        ] = None,
        output: OutputOption = OutputFormat.TABLE,
    ) -> None:
        """List certificates, soonest expiry first; --cursor pages on."""
        filters = Filters(
            search, status, expires_within, expires_after, expires_before, issuer, key_algorithm, key_size,
            signature_algorithm, owner, team, environment, tag, source, include_archived,
        )  # fmt: skip
        with opened_platform() as platform, platform.sessions() as session:
            now = platform.clock()
            page = list_certificates(
                session,
                filters.build(now),
                sort=sort,
                descending=desc,
                limit=limit,
                cursor=cursor,
                now=now,
                expiring_days=platform.settings.expiring_days,
            )
        if output is OutputFormat.JSON:
            emit_json({"items": page.items, "next_cursor": page.next_cursor})
            return
        if not page.items:
            typer.echo("no certificates match")
            return
        rows = [_list_row(item) for item in page.items]
        emit_table([h for _, h in LIST_COLUMNS], [[row.get(k) for k, _ in LIST_COLUMNS] for row in rows])
        if page.next_cursor:
            typer.echo(f"more: repeat with --cursor {page.next_cursor}", err=True)

    @certs_app.command("show")
    def show_command(
        ref: Annotated[
            str, typer.Argument(metavar="ID_OR_FINGERPRINT", help="ID, or SHA-256 (8+ hex digits).")
        ],
        pem: Annotated[bool, typer.Option("--pem", help="Print only the certificate as PEM.")] = False,
        output: OutputOption = OutputFormat.TABLE,
    ) -> None:
        """Show one certificate in full."""
        with opened_platform() as platform, platform.sessions() as session:
            detail = certificate_detail(
                session,
                get_certificate(session, ref),
                now=platform.clock(),
                expiring_days=platform.settings.expiring_days,
            )
        if pem:
            typer.echo(detail["pem"], nl=False)
            return
        if output is OutputFormat.TABLE:
            detail = {key: value for key, value in detail.items() if key != "pem"}
        emit_mapping(output, detail)

    @certs_app.command("export")
    def export_command(
        export_format: Annotated[
            ExportFormat, typer.Option("--format", "-f", case_sensitive=False, help="csv or json.")
        ] = ExportFormat.CSV,
        file: Annotated[Path | None, typer.Option("--file", help="Write here instead of stdout.")] = None,
        search: SearchOpt = None,
        status: StatusOpt = None,
        expires_within: WithinOpt = None,
        expires_after: AfterOpt = None,
        expires_before: BeforeOpt = None,
        issuer: IssuerOpt = None,
        key_algorithm: KeyAlgOpt = None,
        key_size: KeySizeOpt = None,
        signature_algorithm: SigAlgOpt = None,
        owner: OwnerOpt = None,
        team: TeamOpt = None,
        environment: EnvOpt = None,
        tag: TagOpt = None,
        source: SourceOpt = None,
        include_archived: ArchivedOpt = False,
        sort: SortOpt = "not_after",
        desc: DescOpt = False,
    ) -> None:
        """Export every matching certificate, streamed (memory does not grow with the inventory)."""
        filters = Filters(
            search, status, expires_within, expires_after, expires_before, issuer, key_algorithm, key_size,
            signature_algorithm, owner, team, environment, tag, source, include_archived,
        )  # fmt: skip
        with opened_platform() as platform, platform.sessions() as session:
            now = platform.clock()
            items = iter_certificates(
                session,
                filters.build(now),
                sort=sort,
                descending=desc,
                now=now,
                expiring_days=platform.settings.expiring_days,
            )
            # Pull the first page before writing anything, so a bad filter fails with no partial output.
            first = list(islice(items, 1))
            items = chain(first, items)
            chunks = stream_csv(items) if export_format is ExportFormat.CSV else stream_json(items)
            if file is None:
                sys.stdout.flush()
                _write_all(sys.stdout.buffer, chunks)
            else:
                _write_file(file, chunks)


def _write_all(stream: BinaryIO, chunks: Iterator[bytes]) -> int:
    written = 0
    for chunk in chunks:
        stream.write(chunk)
        written += len(chunk)
    stream.flush()
    return written


def _write_file(path: Path, chunks: Iterator[bytes]) -> None:
    # Written beside the target and renamed: a failed export never leaves a truncated file behind.
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("wb") as handle:
            _write_all(handle, chunks)
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
