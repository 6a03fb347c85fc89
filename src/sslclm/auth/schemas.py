"""Request and response bodies of the auth, user and token routes.

Inputs forbid unknown fields so a typo (``"rol": "admin"``) is a 422 naming the field instead of
a silently ignored change. Passwords are ``SecretStr`` so they never show in a repr or a log line.
"""

from __future__ import annotations

from datetime import datetime
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from sslclm.auth.models import ApiToken, User

# Argon2 hashes any length; the cap only stops a multi-megabyte "password" from tying up a worker.
MAX_PASSWORD = 1024

T = TypeVar("T")


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginRequest(_Input):
    username: str = Field(min_length=1, max_length=150)
    password: SecretStr = Field(min_length=1, max_length=MAX_PASSWORD)


class LoginResponse(BaseModel):
    username: str
    role: str
    csrf_token: str = Field(description="Send it as the X-CSRF-Token header on every changing request.")
    expires_at: datetime


class PrincipalOut(BaseModel):
    username: str
    role: str
    via: str = Field(description="How the caller authenticated: session or token.")
    token_id: int | None = None
    csrf_token: str | None = Field(default=None, description="Only for a UI session.")


class PasswordChange(_Input):
    current_password: SecretStr = Field(min_length=1, max_length=MAX_PASSWORD)
    new_password: SecretStr = Field(min_length=1, max_length=MAX_PASSWORD)


class UserCreate(_Input):
    username: str = Field(min_length=1, max_length=150)
    password: SecretStr = Field(min_length=1, max_length=MAX_PASSWORD)
    role: str = Field(description="admin, operator, auditor or viewer.")


class UserUpdate(_Input):
    role: str | None = None
    disabled: bool | None = None
    password: SecretStr | None = Field(default=None, min_length=1, max_length=MAX_PASSWORD)

    @model_validator(mode="after")
    def _something_to_change(self) -> UserUpdate:
        if self.role is None and self.disabled is None and self.password is None:
            raise ValueError("give at least one of role, disabled, password")
        return self


class UserOut(BaseModel):
    username: str
    role: str
    disabled: bool
    created_at: datetime
    last_login_at: datetime | None

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(
            username=user.username,
            role=user.role,
            disabled=user.disabled,
            created_at=user.created_at,
            last_login_at=user.last_login_at,
        )


class TokenCreate(_Input):
    name: str = Field(min_length=1, max_length=150)
    role: str | None = Field(
        default=None, min_length=1, description="Defaults to the owner's role; never above it."
    )
    user: str | None = Field(default=None, description="Owner, when an admin creates a token for someone.")
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)
    expires_at: datetime | None = Field(default=None, description="Naive times are taken as UTC.")

    @model_validator(mode="after")
    def _one_expiry(self) -> TokenCreate:
        if self.expires_in_days is not None and self.expires_at is not None:
            raise ValueError("give expires_in_days or expires_at, not both")
        return self


class TokenOut(BaseModel):
    id: int
    name: str
    prefix: str = Field(description="The first characters of the secret, to recognise it.")
    role: str
    user: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @classmethod
    def of(cls, token: ApiToken, username: str) -> TokenOut:
        return cls(
            id=token.id,
            name=token.name,
            prefix=token.prefix,
            role=token.role,
            user=username,
            created_at=token.created_at,
            expires_at=token.expires_at,
            revoked_at=token.revoked_at,
            last_used_at=token.last_used_at,
        )


class TokenCreated(TokenOut):
    token: str = Field(description="The secret: shown in this response only, never again.")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: int | None = Field(description="Pass as ?cursor= for the next page; null on the last.")


class TokenQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str | None = Field(
        default=None, max_length=150, description="Another user's tokens (token:manage)."
    )
    cursor: int | None = Field(default=None, ge=1, description="next_cursor of the previous page.")
    limit: int = Field(default=100, ge=1, le=500)
