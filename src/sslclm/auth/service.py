"""Users, API tokens and UI sessions. Every change is audited in the same transaction."""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.auth import throttle
from sslclm.auth.models import ApiToken, User, WebSession
from sslclm.auth.permissions import Role, role_within
from sslclm.auth.secrets import hash_password, hash_token, new_token, verify_password
from sslclm.auth.throttle import LoginLimits
from sslclm.core.clock import as_utc, utcnow
from sslclm.errors import AuthenticationError, ConflictError, InvalidInputError, NotFoundError

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,149}$")
MIN_PASSWORD = 10
DEFAULT_LIMITS = LoginLimits()


def _check_role(role: str, field: str = "role") -> Role:
    try:
        return Role(role)
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise InvalidInputError(f"unknown role '{role}'; choose one of {allowed}", field=field) from None


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise InvalidInputError(f"password must have at least {MIN_PASSWORD} characters", field="password")


def count_users(session: Session) -> int:
    return session.execute(select(func.count()).select_from(User)).scalar_one()


def get_user(session: Session, username: str) -> User:
    user = session.execute(select(User).where(User.username == username)).scalar_one_or_none()
    if user is None:
        raise NotFoundError(f"no user named '{username}'", field="username")
    return user


def list_users(session: Session) -> Sequence[User]:
    return session.execute(select(User).order_by(User.username)).scalars().all()


def create_user(session: Session, ctx: AuditContext, username: str, password: str, role: str) -> User:
    if not USERNAME.match(username):
        raise InvalidInputError(
            "username must be 1-150 letters, digits or . _ @ - and start with a letter or digit",
            field="username",
        )
    _check_role(role)
    _check_password(password)
    if session.execute(select(User.id).where(User.username == username)).first():
        raise ConflictError(f"user '{username}' already exists", field="username")
    user = User(username=username, password_hash=hash_password(password), role=role, created_at=utcnow())
    session.add(user)
    session.flush()
    record(session, ctx, "user.create", "user", user.id, {"username": username, "role": role})
    return user


def update_user(
    session: Session,
    ctx: AuditContext,
    user: User,
    *,
    role: str | None = None,
    disabled: bool | None = None,
    password: str | None = None,
) -> User:
    changes: dict[str, list[object]] = {}
    if role is not None and role != user.role:
        _check_role(role)
        changes["role"] = [user.role, role]
        user.role = role
    if disabled is not None and disabled != user.disabled:
        changes["disabled"] = [user.disabled, disabled]
        user.disabled = disabled
    if password is not None:
        _check_password(password)
        user.password_hash = hash_password(password)
        changes["password"] = ["(set)", "(changed)"]
    if changes:
        if "disabled" in changes or "password" in changes:
            # A disabled user or a changed password ends every open UI session.
            session.execute(delete(WebSession).where(WebSession.user_id == user.id))
        record(session, ctx, "user.update", "user", user.id, {"username": user.username, "changes": changes})
    return user


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: ApiToken
    secret: str  # shown once, never stored


def create_token(
    session: Session,
    ctx: AuditContext,
    user: User,
    name: str,
    *,
    role: str | None = None,
    expires_at: datetime | None = None,
) -> IssuedToken:
    role = role or user.role
    _check_role(role)
    if not role_within(role, user.role):
        raise InvalidInputError(
            f"a token cannot have more rights than its user ('{user.role}')", field="role"
        )
    if not name.strip() or len(name) > 150:
        raise InvalidInputError("token name must be 1-150 characters", field="name")
    if expires_at is not None and as_utc(expires_at) <= utcnow():
        raise InvalidInputError("expiry must be in the future", field="expires_at")
    secret = new_token()
    token = ApiToken(
        user_id=user.id,
        name=name.strip(),
        prefix=secret[:12],
        token_hash=hash_token(secret),
        role=role,
        created_at=utcnow(),
        expires_at=expires_at,
    )
    session.add(token)
    session.flush()
    record(
        session,
        ctx,
        "token.create",
        "api_token",
        token.id,
        {"user": user.username, "name": token.name, "role": role, "expires_at": _iso(expires_at)},
    )
    return IssuedToken(token, secret)


def revoke_token(session: Session, ctx: AuditContext, token: ApiToken) -> ApiToken:
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        record(session, ctx, "token.revoke", "api_token", token.id, {"name": token.name})
    return token


def get_token(session: Session, token_id: int) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFoundError(f"no API token with id {token_id}", field="token_id")
    return token


@dataclass(frozen=True, slots=True)
class LoginResult:
    session_id: str  # the cookie value; only its hash is stored
    csrf_token: str
    user: User
    expires_at: datetime


def login(
    session: Session,
    ctx: AuditContext,
    username: str,
    password: str,
    *,
    hours: int,
    limits: LoginLimits = DEFAULT_LIMITS,
    now: datetime | None = None,
) -> LoginResult:
    now = now or utcnow()
    throttle.check(session, ctx, username, now)
    user = session.execute(select(User).where(User.username == username)).scalar_one_or_none()
    # Verify against a dummy hash when the user is unknown so timing does not reveal which names exist.
    ok = verify_password(user.password_hash if user else _dummy_hash(), password)
    if user is None or not ok or user.disabled:
        record(session, ctx, "auth.login-failed", "user", None, {"username": username[:150]})
        throttle.failed(session, ctx, username, now, limits)
        session.commit()
        raise AuthenticationError("wrong username or password")
    throttle.succeeded(session, ctx, username)
    raw = secrets.token_urlsafe(32)
    web_session = WebSession(
        id_hash=hash_token(raw),
        user_id=user.id,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        expires_at=now + timedelta(hours=hours),
    )
    session.add(web_session)
    session.execute(delete(WebSession).where(WebSession.expires_at < now))
    user.last_login_at = now
    record(session, ctx, "auth.login", "user", user.id, {"username": user.username})
    return LoginResult(raw, web_session.csrf_token, user, web_session.expires_at)


def logout(session: Session, ctx: AuditContext, raw_session_id: str) -> None:
    deleted = session.execute(delete(WebSession).where(WebSession.id_hash == hash_token(raw_session_id)))
    if getattr(deleted, "rowcount", 0):
        record(session, ctx, "auth.logout", "user", None, {})


def _iso(value: datetime | None) -> str | None:
    return None if value is None else as_utc(value).isoformat()


@cache
def _dummy_hash() -> str:
    return hash_password("not-a-real-password-used-for-timing")
