"""What every command shares: opening the platform, who acts, passwords, and printing results."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext
from sslclm.core.clock import as_utc
from sslclm.core.config import Settings
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.errors import InvalidInputError


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"


OutputOption = Annotated[
    OutputFormat,
    typer.Option("--output", "-o", help="table for people, json for scripts.", case_sensitive=False),
]
PasswordStdinOption = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from the first line of standard input."),
]


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)


@contextmanager
def opened_platform(settings: Settings | None = None, *, migrate: bool = True) -> Iterator[Platform]:
    platform = Platform.open(settings or load_settings(), migrate=migrate)
    try:
        yield platform
    finally:
        platform.close()


@contextmanager
def unit_of_work() -> Iterator[Session]:
    """One platform, one transaction: committed when the command succeeds, rolled back otherwise."""
    with opened_platform() as platform, session_scope(platform.sessions) as session:
        yield session


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        # A container may run under a uid that has no passwd entry.
        return f"uid{os.getuid()}"


def cli_context() -> AuditContext:
    return AuditContext(actor=f"cli:{os_user()}")


def read_password(from_stdin: bool, *, prompt: str = "Password") -> str:
    """The password from stdin (one line, for scripts) or from an interactive prompt with confirmation."""
    if from_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
        if not password:
            raise InvalidInputError("no password on standard input", field="password")
        return password
    value: str = typer.prompt(prompt, hide_input=True, confirmation_prompt=True)
    return value


# Width for tables written to a pipe or file, where no terminal says how wide to be: wide enough that
# names and dates stay on one line for grep and less.
PIPE_WIDTH = 200


def stdout_console() -> Console:
    # Built per call: the test runner swaps sys.stdout, and nothing may be created at import time.
    console = Console(file=sys.stdout, soft_wrap=False, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


def stderr_console() -> Console:
    return Console(file=sys.stderr, highlight=False)


def emit_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2, default=_json_default).decode() + "\n")
    sys.stdout.flush()


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return as_utc(value).strftime("%Y-%m-%d %H:%M")
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)


def emit_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], *, title: str | None = None) -> None:
    table = Table(title=title, show_lines=False, header_style="bold")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(format_cell(value) for value in row))
    stdout_console().print(table)


def emit(
    output: OutputFormat,
    records: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str]],
    *,
    title: str | None = None,
    empty: str = "nothing found",
) -> None:
    """Prints ``records`` as JSON, or as a table of ``columns`` (key, heading)."""
    if output is OutputFormat.JSON:
        emit_json(list(records))
        return
    if not records:
        typer.echo(empty)
        return
    emit_table(
        [heading for _, heading in columns], [[r.get(k) for k, _ in columns] for r in records], title=title
    )


def emit_mapping(output: OutputFormat, record: dict[str, Any]) -> None:
    """One object: JSON, or a two-column field/value table."""
    if output is OutputFormat.JSON:
        emit_json(record)
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in record.items():
        table.add_row(key, format_cell(value))
    stdout_console().print(table)
