"""Helpers that keep the SPI's frozen dataclasses immutable all the way down."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any

from sslclm.errors import InvalidInputError

EMPTY: Mapping[str, Any] = MappingProxyType({})


def empty_mapping() -> Mapping[str, Any]:
    return EMPTY


def freeze_mapping(obj: object, name: str) -> None:
    value = getattr(obj, name)
    if not isinstance(value, MappingProxyType):
        object.__setattr__(obj, name, MappingProxyType(dict(value)))


def freeze_tuple(obj: object, name: str) -> None:
    value = getattr(obj, name)
    if not isinstance(value, tuple):
        object.__setattr__(obj, name, tuple(value))


def require_aware(value: datetime | None, name: str) -> None:
    if value is not None and value.tzinfo is None:
        raise InvalidInputError(f"{name} must be timezone-aware", field=name)
