"""How the policy and report commands print rows: a table, CSV or JSON, to stdout or to a file.

A file is written beside its destination and renamed into place when complete, so a failed
command never leaves half a report behind.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from sslclm.cli.common import emit_table
from sslclm.reporting.service import to_csv


class RowFormat(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


FormatOption = Annotated[
    RowFormat,
    typer.Option(
        "--format", "-f", help="table for people; csv or json for files and scripts.", case_sensitive=False
    ),
]
OutputFileOption = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Write to this file instead of standard output.", dir_okay=False),
]


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def to_json(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2, default=_json_default) + b"\n"


def write_output(data: bytes, output: Path | None) -> None:
    """``data`` to the file (atomically) or to standard output."""
    if output is None:
        sys.stdout.write(data.decode())
        sys.stdout.flush()
        return
    target = output.expanduser()
    if not target.parent.is_dir():
        raise FileNotFoundError(2, "no such directory", str(target.parent))
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    typer.echo(f"wrote {target} ({len(data)} bytes)", err=True)


def emit_rows(
    rows: Sequence[dict[str, Any]],
    fmt: RowFormat,
    output: Path | None = None,
    *,
    columns: Iterable[str] | None = None,
    title: str | None = None,
    empty: str = "nothing found",
) -> None:
    """Rows as a table (stdout only), CSV or JSON."""
    if fmt is RowFormat.JSON:
        write_output(to_json(list(rows)), output)
    elif fmt is RowFormat.CSV:
        write_output(to_csv(rows).encode(), output)
    elif output is not None:
        raise typer.BadParameter("a table is for the terminal: use --format csv or json with --output")
    elif not rows:
        typer.echo(empty)
    else:
        keys = list(columns or rows[0])
        emit_table([k.replace("_", " ") for k in keys], [[r.get(k) for k in keys] for r in rows], title=title)
