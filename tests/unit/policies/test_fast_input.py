"""``fast_input`` and ``input_builder`` build the same frozen ``PolicyInput`` as its constructor."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from sslclm.policies.checks import PolicyInput, fast_input, input_builder

NOW = datetime(2026, 6, 1, tzinfo=UTC)
VALUES: dict[str, object] = {
    "not_before": NOW - timedelta(days=1),
    "not_after": NOW + timedelta(days=90),
    "key_algorithm": "RSA",
    "key_size": 2048,
    "sans": ("DNS:a.example.com",),
    "certificate_id": 7,
    "tags": frozenset({"web"}),
    "endpoints": 3,
}


def test_fast_input_equals_the_constructor_and_stays_frozen() -> None:
    item = fast_input(**VALUES)
    assert item == PolicyInput(**VALUES)  # type: ignore[arg-type]
    assert item.enrollment is False and item.profile is None  # defaults filled in
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.key_size = 4096  # type: ignore[misc]


def test_fast_input_refuses_unknown_and_missing_fields() -> None:
    with pytest.raises(TypeError, match=r"unknown fields \['colour'\]"):
        fast_input(**VALUES, colour="blue")
    with pytest.raises(TypeError, match=r"missing fields \['not_after'\]"):
        fast_input(**{k: v for k, v in VALUES.items() if k != "not_after"})


def test_input_builder_takes_the_named_fields_by_position() -> None:
    build = input_builder(tuple(VALUES))
    item = build(*VALUES.values())
    assert item == PolicyInput(**VALUES)  # type: ignore[arg-type]
    assert item.enrollment is False and item.profile is None
    with pytest.raises(ValueError):
        build(*list(VALUES.values())[:-1])  # one value short


def test_input_builder_checks_the_names_once() -> None:
    with pytest.raises(TypeError, match=r"unknown fields \['colour'\]"):
        input_builder((*VALUES, "colour"))
    with pytest.raises(TypeError, match=r"missing fields \['not_after'\]"):
        input_builder(tuple(k for k in VALUES if k != "not_after"))
    with pytest.raises(TypeError, match="repeated"):
        input_builder((*VALUES, "endpoints"))
