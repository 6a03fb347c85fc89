"""Inventory cursors over AWS listings.

The cursor carries the service's ``NextToken`` and how many items of that page were already handed
out: a server may answer with more items than asked for (some emulators ignore ``MaxItems``), and the
store still owes its caller pages of at most ``limit`` entries without skipping any.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from sslclm.errors import InvalidInputError


@dataclass(frozen=True, slots=True)
class Position:
    token: str | None = None  # the NextToken that fetches the current service page; None: the first
    skip: int = 0  # items of that page already returned


def decode_cursor(cursor: str | None) -> Position:
    if not cursor:
        return Position()
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return Position(token=data.get("t"), skip=int(data.get("s", 0)))
    except (ValueError, TypeError, AttributeError):
        raise InvalidInputError(
            "the inventory cursor is not one this store handed out", field="cursor"
        ) from None


def encode_cursor(position: Position) -> str:
    raw = json.dumps({"t": position.token, "s": position.skip}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode()


def next_position(
    position: Position, returned: int, page_items: int, next_token: str | None
) -> Position | None:
    """Where the following inventory page starts after ``returned`` items of a ``page_items`` page."""
    consumed = position.skip + returned
    if consumed < page_items:
        return Position(token=position.token, skip=consumed)
    if next_token:
        return Position(token=next_token, skip=0)
    return None
