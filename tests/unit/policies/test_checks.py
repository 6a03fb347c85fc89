"""The pure checks and the policy document parser."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sslclm.errors import InvalidInputError
from sslclm.policies.checks import (
    ExpiryParams,
    KeyParams,
    PolicyInput,
    Severity,
    SignatureParams,
    ValidityParams,
    cabf_max_days,
    check_expiry,
    check_key,
    check_signature,
    check_validity,
)
from sslclm.policies.document import parse_document

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def _item(**kw: object) -> PolicyInput:
    base: dict[str, object] = {
        "not_before": NOW - timedelta(days=1),
        "not_after": NOW + timedelta(days=90),
        "key_algorithm": "EC",
        "key_curve": "secp256r1",
        "signature_algorithm": "ecdsa-with-SHA256",
    }
    base.update(kw)
    return PolicyInput(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("issued", "days"),
    [
        (datetime(2025, 1, 1, tzinfo=UTC), 398),
        (datetime(2026, 3, 14, 23, tzinfo=UTC), 398),
        (datetime(2026, 3, 15, tzinfo=UTC), 200),
        (datetime(2027, 3, 15, tzinfo=UTC), 100),
        (datetime(2029, 3, 15, tzinfo=UTC), 47),
    ],
)
def test_cabf_schedule(issued: datetime, days: int) -> None:
    assert cabf_max_days(issued) == days


def test_max_validity_follows_issue_date() -> None:
    issued = datetime(2026, 4, 1, tzinfo=UTC)
    ok = _item(not_before=issued, not_after=issued + timedelta(days=200))
    long = _item(not_before=issued, not_after=issued + timedelta(days=201))
    assert check_validity(ok, ValidityParams(), NOW) is None
    found = check_validity(long, ValidityParams(), NOW)
    assert found is not None and "at most 200" in found.reason


@pytest.mark.parametrize(
    ("kw", "bad"),
    [
        ({"key_algorithm": "RSA", "key_size": 1024, "key_curve": None}, True),
        ({"key_algorithm": "RSA", "key_size": 2048, "key_curve": None}, False),
        ({"key_curve": "secp192r1"}, True),
        ({"key_algorithm": "DSA", "key_curve": None}, True),
    ],
)
def test_key_rules(kw: dict[str, object], bad: bool) -> None:
    assert (check_key(_item(**kw), KeyParams(), NOW) is not None) is bad


@pytest.mark.parametrize(
    ("name", "bad"),
    [("sha1WithRSAEncryption", True), ("md5WithRSAEncryption", True), ("sha256WithRSAEncryption", False)],
)
def test_signature(name: str, bad: bool) -> None:
    assert (check_signature(_item(signature_algorithm=name), SignatureParams(), NOW) is not None) is bad


@pytest.mark.parametrize(
    ("left", "severity"),
    [(-1, Severity.CRITICAL), (3, Severity.HIGH), (20, Severity.MEDIUM), (60, None)],
)
def test_expiry_windows(left: int, severity: Severity | None) -> None:
    found = check_expiry(_item(not_after=NOW + timedelta(days=left, hours=1)), ExpiryParams(), NOW)
    assert (found.severity if found else None) == severity


def test_document_error_names_field_and_line() -> None:
    text = "name: strict\nchecks:\n  - check: key-algorithm\n    params:\n      rsa_min_bits: lots\n"
    with pytest.raises(InvalidInputError) as caught:
        parse_document(text)
    assert caught.value.field == "checks[0]"
    assert "params.rsa_min_bits" in caught.value.message
    assert caught.value.data["line"] == 3


def test_document_unknown_check_and_yaml_syntax() -> None:
    with pytest.raises(InvalidInputError, match=r"line 4: checks\[1\]\.check: unknown check 'nope'"):
        parse_document("name: a\nchecks:\n  - check: expiry\n  - check: nope\n")
    with pytest.raises(InvalidInputError, match="line"):
        parse_document("name: [a\n")
