"""Failed-login throttling.

After ``max_failures`` failed logins for one username from one address within the lockout period,
that pair is locked for the period: further attempts are refused (429) without checking the
password, so a guessing run learns nothing more. The pair rather than the username alone is
locked so that someone mistyping from elsewhere cannot lock the real user out; unknown usernames
are counted like known ones so that the answer does not reveal which names exist. The counters
live in the database, so every node of a cluster sees the same ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.auth.models import LoginThrottle
from sslclm.core.clock import as_utc
from sslclm.core.config import Settings
from sslclm.errors import TooManyAttemptsError

UNKNOWN_SOURCE = "unknown"


@dataclass(frozen=True, slots=True)
class LoginLimits:
    max_failures: int = 5
    lockout: timedelta = timedelta(minutes=15)

    @classmethod
    def from_settings(cls, settings: Settings) -> LoginLimits:
        return cls(settings.login_max_failures, timedelta(minutes=settings.login_lockout_minutes))


def _key(username: str, ctx: AuditContext) -> tuple[str, str]:
    return username[:150].casefold(), (ctx.source_address or UNKNOWN_SOURCE)[:64]


def _row(session: Session, username: str, ctx: AuditContext) -> LoginThrottle | None:
    name, source = _key(username, ctx)
    query = select(LoginThrottle).where(LoginThrottle.username == name, LoginThrottle.source == source)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    return session.execute(query).scalar_one_or_none()


def check(session: Session, ctx: AuditContext, username: str, now: datetime) -> None:
    """Raises ``TooManyAttemptsError`` while this username is locked for this address."""
    row = _row(session, username, ctx)
    if row is None or row.locked_until is None or as_utc(row.locked_until) <= now:
        return
    seconds = max(1, math.ceil((as_utc(row.locked_until) - now).total_seconds()))
    raise TooManyAttemptsError(
        f"too many failed logins; try again in {math.ceil(seconds / 60)} minute(s)",
        retry_after_seconds=seconds,
    )


def failed(session: Session, ctx: AuditContext, username: str, now: datetime, limits: LoginLimits) -> None:
    """Counts a failure; the one that reaches the limit locks the pair and is audited."""
    row = _row(session, username, ctx) or _insert(session, username, ctx, now)
    if row.failures and as_utc(row.first_failed_at) + limits.lockout <= now:
        # Failures older than the period are forgotten, and so is an expired lock.
        row.failures, row.first_failed_at, row.locked_until = 0, now, None
    row.failures += 1
    if row.failures >= limits.max_failures and row.locked_until is None:
        row.locked_until = now + limits.lockout
        record(
            session,
            ctx,
            "auth.login-locked",
            "user",
            None,
            {"username": username[:150], "failures": row.failures, "until": row.locked_until.isoformat()},
        )
    session.flush()


def _insert(session: Session, username: str, ctx: AuditContext, now: datetime) -> LoginThrottle:
    name, source = _key(username, ctx)
    try:
        with session.begin_nested():
            row = LoginThrottle(username=name, source=source, failures=0, first_failed_at=now)
            session.add(row)
    except IntegrityError:
        # A concurrent failure inserted the pair first: count on its row.
        existing = _row(session, username, ctx)
        assert existing is not None
        return existing
    return row


def succeeded(session: Session, ctx: AuditContext, username: str) -> None:
    name, source = _key(username, ctx)
    session.execute(
        delete(LoginThrottle).where(LoginThrottle.username == name, LoginThrottle.source == source)
    )
