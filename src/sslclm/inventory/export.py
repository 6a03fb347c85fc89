"""Streamed CSV and JSON exports: one row at a time, never the whole result in memory."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

import orjson

CSV_COLUMNS = (
    "id",
    "fingerprint_sha256",
    "common_name",
    "subject",
    "issuer",
    "serial",
    "not_before",
    "not_after",
    "days_left",
    "status",
    "key_algorithm",
    "key_size",
    "key_curve",
    "signature_algorithm",
    "sans",
    "owner",
    "team",
    "environment",
    "tags",
    "source",
    "has_private_key",
    "archived",
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return " ".join(str(v) for v in value)
    text = str(value)
    # Spreadsheet formula injection: a leading =, +, - or @ would be evaluated when opened.
    if text[:1] in ("=", "+", "-", "@") and not text.lstrip("-").isdigit():
        return "'" + text
    return text


def stream_csv(items: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for count, item in enumerate(items, start=1):
        writer.writerow([_cell(item.get(column)) for column in CSV_COLUMNS])
        if count % 500 == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def stream_json(items: Iterable[dict[str, Any]]) -> Iterator[bytes]:
    yield b"["
    first = True
    for item in items:
        yield (b"" if first else b",") + orjson.dumps(item)
        first = False
    yield b"]\n"
