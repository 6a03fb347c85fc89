"""Turning form input and validation errors into the one-line messages pages show."""

from __future__ import annotations

from pydantic import ValidationError


def validation_message(exc: ValidationError) -> str:
    """The first problem of a pydantic error, as 'field: message'."""
    errors = exc.errors()
    if not errors:
        return "invalid input"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ()))
    message = str(first.get("msg", "invalid"))
    return f"{where}: {message}" if where else message


def split_lines(text: str) -> list[str]:
    """A textarea or comma-separated field as a list of non-empty, trimmed entries."""
    return [part.strip() for line in text.splitlines() for part in line.split(",") if part.strip()]
