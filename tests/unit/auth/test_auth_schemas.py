"""Input schemas of the auth routes: unknown fields refused, secrets hidden, combinations checked."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from sslclm.auth.schemas import LoginRequest, PasswordChange, TokenCreate, TokenQuery, UserCreate, UserUpdate


@pytest.mark.parametrize(
    ("model", "data"),
    [
        (LoginRequest, {"username": "a", "password": "b", "otp": "1"}),
        (PasswordChange, {"current_password": "a", "new_password": "b", "confirm": "b"}),
        (UserCreate, {"username": "a", "password": "b", "role": "viewer", "email": "x"}),
        (UserUpdate, {"role": "viewer", "username": "renamed"}),
        (TokenCreate, {"name": "a", "scopes": ["all"]}),
        (TokenQuery, {"owner": "a"}),
    ],
)
def test_unknown_fields_are_refused(model: type[BaseModel], data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    error = caught.value.errors()[0]
    assert error["type"] == "extra_forbidden"
    assert error["loc"][-1] in data


def test_passwords_never_show_in_repr() -> None:
    login = LoginRequest(username="alice", password="hunter2hunter2")  # type: ignore[arg-type]
    change = PasswordChange(current_password="old-secret-1", new_password="new-secret-2")  # type: ignore[arg-type]
    for shown in (repr(login), str(login), repr(change), login.model_dump_json()):
        assert "hunter2hunter2" not in shown
        assert "old-secret-1" not in shown and "new-secret-2" not in shown
    assert login.password.get_secret_value() == "hunter2hunter2"


def test_update_needs_something_to_change() -> None:
    with pytest.raises(ValidationError, match="at least one of role, disabled, password"):
        UserUpdate()
    assert UserUpdate(disabled=False).disabled is False


def test_token_expiry_is_one_or_the_other() -> None:
    with pytest.raises(ValidationError, match="not both"):
        TokenCreate(name="a", expires_in_days=1, expires_at="2030-01-01T00:00:00Z")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        TokenCreate(name="a", expires_in_days=0)


def test_huge_passwords_are_refused_before_hashing() -> None:
    with pytest.raises(ValidationError) as caught:
        UserCreate(username="a", password="x" * 5000, role="viewer")  # type: ignore[arg-type]
    assert caught.value.errors()[0]["loc"] == ("password",)
