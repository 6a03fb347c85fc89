"""The audit query model and the verify result shape."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sslclm.audit.schemas import MAX_PAGE, AuditQuery, VerifyOut
from sslclm.audit.service import VerifyResult


def test_defaults() -> None:
    query = AuditQuery()
    assert query.limit == 100
    assert query.cursor is None


@pytest.mark.parametrize("limit", [0, -1, MAX_PAGE + 1])
def test_page_size_is_bounded(limit: int) -> None:
    with pytest.raises(ValidationError) as caught:
        AuditQuery(limit=limit)
    assert caught.value.errors()[0]["loc"] == ("limit",)


def test_window_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="until must be later than since"):
        AuditQuery.model_validate({"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"})
    window = AuditQuery.model_validate({"since": "2030-01-01T00:00:00Z", "until": "2030-01-02T00:00:00Z"})
    assert window.until is not None and window.since is not None and window.until > window.since


def test_unknown_filter_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        AuditQuery.model_validate({"user": "alice"})
    assert caught.value.errors()[0]["type"] == "extra_forbidden"


def test_verify_out_carries_the_result() -> None:
    broken = VerifyOut.of(VerifyResult(False, 4, 6, "previous-hash link does not match"))
    assert broken.model_dump() == {
        "ok": False,
        "checked": 4,
        "broken_at_id": 6,
        "reason": "previous-hash link does not match",
    }
    assert VerifyOut.of(VerifyResult(True, 10)).broken_at_id is None
