"""Failed-login throttling through the API, the login form and the service, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from test_auth_web import submit_login

from conftest import TEST_PASSWORD, ApiUser
from sslclm.audit.models import AuditEvent
from sslclm.audit.service import AuditContext
from sslclm.auth import service
from sslclm.auth.models import LoginThrottle
from sslclm.auth.throttle import LoginLimits
from sslclm.core.clock import utcnow
from sslclm.core.platform import Platform
from sslclm.errors import AuthenticationError, TooManyAttemptsError


def api_login(client: TestClient, username: str, password: str) -> int:
    response = client.post("/api/v1/auth/login", json={"username": username, "password": password})
    return response.status_code


def test_api_locks_after_five_failures_even_for_the_right_password(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    for _ in range(5):
        assert api_login(client, "viewer-user", "wrong-password") == 401
    locked = client.post("/api/v1/auth/login", json={"username": "viewer-user", "password": TEST_PASSWORD})
    assert locked.status_code == 429
    body = locked.json()
    assert body["type"].endswith("/too-many-attempts")
    assert "try again in 15 minute(s)" in body["detail"]
    assert 0 < int(locked.headers["retry-after"]) <= 900
    # Other users are not affected.
    assert api_login(client, "operator-user", TEST_PASSWORD) == 200
    with platform.sessions() as session:
        locks = list(
            session.execute(select(AuditEvent).where(AuditEvent.action == "auth.login-locked")).scalars()
        )
        assert len(locks) == 1
        assert locks[0].summary["username"] == "viewer-user"
        assert locks[0].summary["failures"] == 5


def test_unknown_usernames_are_throttled_alike(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    for _ in range(5):
        assert api_login(client, "nobody-here", "whatever-password") == 401
    assert api_login(client, "nobody-here", "whatever-password") == 429


def test_a_success_clears_the_count(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    for _ in range(4):
        assert api_login(client, "viewer-user", "wrong-password") == 401
    assert api_login(client, "viewer-user", TEST_PASSWORD) == 200
    with platform.sessions() as session:
        assert session.execute(select(LoginThrottle)).first() is None
    for _ in range(4):
        assert api_login(client, "viewer-user", "wrong-password") == 401
    assert api_login(client, "viewer-user", TEST_PASSWORD) == 200


def test_login_form_shows_the_lock(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    for _ in range(5):
        assert submit_login(client, "viewer-user", "wrong-password").status_code == 401
    page = submit_login(client, "viewer-user", TEST_PASSWORD)
    assert page.status_code == 429
    assert "Too many failed sign-ins: try again in 15 minute(s)." in page.text
    assert "sslclm_session" not in page.headers.get("set-cookie", "")


def test_lock_is_per_address_and_expires(api_users: dict[str, ApiUser], platform: Platform) -> None:
    limits = LoginLimits(max_failures=3, lockout=timedelta(minutes=10))
    here = AuditContext(actor="anonymous", source_address="192.0.2.1")
    there = AuditContext(actor="anonymous", source_address="192.0.2.2")
    start = utcnow()
    with platform.sessions() as session:
        for _ in range(3):
            with pytest.raises(AuthenticationError):
                service.login(session, here, "viewer-user", "wrong", hours=1, limits=limits, now=start)
        with pytest.raises(TooManyAttemptsError):
            service.login(session, here, "viewer-user", TEST_PASSWORD, hours=1, limits=limits, now=start)
        # Another address is not locked out by these failures.
        service.login(session, there, "viewer-user", TEST_PASSWORD, hours=1, limits=limits, now=start)
        session.commit()
        later = start + timedelta(minutes=10, seconds=1)
        result = service.login(session, here, "viewer-user", TEST_PASSWORD, hours=1, limits=limits, now=later)
        session.commit()
        assert result.user.username == "viewer-user"
        assert session.execute(select(LoginThrottle)).first() is None


def test_old_failures_are_forgotten(api_users: dict[str, ApiUser], platform: Platform) -> None:
    limits = LoginLimits(max_failures=3, lockout=timedelta(minutes=10))
    ctx = AuditContext(actor="anonymous", source_address="192.0.2.9")
    start = utcnow()
    with platform.sessions() as session:
        for minutes in (0, 1, 12):
            with pytest.raises(AuthenticationError):
                service.login(
                    session,
                    ctx,
                    "viewer-user",
                    "wrong",
                    hours=1,
                    limits=limits,
                    now=start + timedelta(minutes=minutes),
                )
        row = session.execute(select(LoginThrottle)).scalar_one()
        assert row.failures == 1
        assert row.locked_until is None
