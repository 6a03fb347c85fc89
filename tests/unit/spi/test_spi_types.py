"""The SPI's request and result objects: frozen, self-validating, naming the field at fault."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sslclm.errors import InvalidInputError
from sslclm.spi import (
    CheckResult,
    CollectRequest,
    IssueRequest,
    IssueResult,
    IssueStatus,
    ListIssuedRequest,
    Notification,
    RenewalInfoResult,
    RevocationReason,
    RevokeRequest,
    Sighting,
    SightingKind,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CSR = b"-----BEGIN CERTIFICATE REQUEST-----\n...\n-----END CERTIFICATE REQUEST-----\n"


def _issue(**overrides: Any) -> IssueRequest:
    values: dict[str, Any] = {"csr_pem": CSR, "names": ("a.example",), "idempotency_key": "k1"}
    values.update(overrides)
    return IssueRequest(**values)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: _issue(idempotency_key=""), "idempotency_key"),
        (lambda: _issue(names=(), common_name=None), "names"),
        (lambda: _issue(validity_days=0), "validity_days"),
        (lambda: _issue(purposes=()), "purposes"),
        (lambda: IssueResult(status=IssueStatus.ISSUED), "certificate_pem"),
        (lambda: IssueResult(status=IssueStatus.PENDING), "pending_ref"),
        (lambda: CollectRequest(pending_ref="", idempotency_key="k"), "pending_ref"),
        (lambda: RevokeRequest(), "serial"),
        (lambda: RevokeRequest(serial="xyz"), "serial"),
        (lambda: ListIssuedRequest(limit=0), "limit"),
        (lambda: ListIssuedRequest(issued_since=datetime(2026, 1, 1)), "issued_since"),
        (lambda: RenewalInfoResult(window_start=NOW, window_end=NOW - timedelta(1)), "window_end"),
        (
            lambda: Sighting(kind=SightingKind.ENDPOINT, seen_at=NOW, location="x", port=70000),
            "port",
        ),
        (lambda: Notification(event="", subject="s", body="b"), "event"),
    ],
)
def test_invalid_requests_name_the_field(build: Callable[[], object], field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        build()
    assert caught.value.field == field
    assert caught.value.http_status == 422


def test_requests_are_deeply_immutable() -> None:
    profile = {"product": "ssl-basic"}
    request = _issue(names=["a.example", "b.example"], profile=profile)
    profile["product"] = "changed"
    assert request.names == ("a.example", "b.example")
    assert request.profile["product"] == "ssl-basic"
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.names = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        request.profile["product"] = "x"  # type: ignore[index]
    result = CheckResult(ok=True, message="fine", details={"a": 1})
    with pytest.raises(TypeError):
        result.details["a"] = 2  # type: ignore[index]


def test_csr_and_keys_stay_out_of_reprs() -> None:
    assert b"BEGIN" not in repr(_issue()).encode()


@pytest.mark.parametrize(
    ("given", "normalized"),
    [("0A:BC:01", "abc01"), ("00ff", "ff"), ("0", "0"), ("DEADBEEF", "deadbeef")],
)
def test_revoke_serials_are_normalized(given: str, normalized: str) -> None:
    assert RevokeRequest(serial=given).serial == normalized


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (RevocationReason.UNSPECIFIED, 0),
        (RevocationReason.KEY_COMPROMISE, 1),
        (RevocationReason.SUPERSEDED, 4),
        (RevocationReason.CESSATION_OF_OPERATION, 5),
        (RevocationReason.PRIVILEGE_WITHDRAWN, 9),
        (RevocationReason.AA_COMPROMISE, 10),
    ],
)
def test_revocation_reason_codes_match_rfc_5280(reason: RevocationReason, code: int) -> None:
    assert reason.code == code
    assert RevocationReason.from_code(code) is reason


def test_unknown_reason_code_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError) as caught:
        RevocationReason.from_code(7)
    assert caught.value.field == "reason"


def test_result_constructors() -> None:
    issued = IssueResult.issued(b"cert", (b"chain",), serial="ab")
    assert issued.status is IssueStatus.ISSUED and issued.chain_pem == (b"chain",)
    pending = IssueResult.pending("order-1", timedelta(seconds=30))
    assert pending.status is IssueStatus.PENDING and pending.retry_after == timedelta(seconds=30)
