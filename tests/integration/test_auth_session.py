"""Login, logout, /auth/me, CSRF and changing one's own password, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from http.cookies import SimpleCookie
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import TEST_PASSWORD, ApiUser
from sslclm.audit.models import AuditEvent
from sslclm.auth.bootstrap import PASSWORD_FILE, ensure_first_admin
from sslclm.core.platform import Platform


def login(client: TestClient, username: str, password: str = TEST_PASSWORD) -> dict[str, Any]:
    response = client.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def actions(platform: Platform) -> list[str]:
    with platform.sessions() as session:
        return list(session.execute(select(AuditEvent.action).order_by(AuditEvent.id)).scalars())


def test_login_sets_a_strict_session_cookie(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    response = client.post(
        "/api/v1/auth/login", json={"username": "operator-user", "password": TEST_PASSWORD}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["username"] == "operator-user"
    assert body["role"] == "operator"
    assert len(body["csrf_token"]) >= 32
    assert body["expires_at"]
    assert response.headers["cache-control"] == "no-store"
    cookie = SimpleCookie(response.headers["set-cookie"])["sslclm_session"]
    assert cookie["secure"] is True
    assert cookie["httponly"] is True
    assert cookie["samesite"].lower() == "strict"
    assert cookie["path"] == "/"
    assert int(cookie["max-age"]) == 12 * 3600

    me = client.get("/api/v1/auth/me")
    assert me.status_code == 200
    assert me.json() == {
        "username": "operator-user",
        "role": "operator",
        "via": "session",
        "token_id": None,
        "csrf_token": body["csrf_token"],
    }


def test_wrong_password_and_unknown_user_are_refused_alike(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    wrong = client.post("/api/v1/auth/login", json={"username": "viewer-user", "password": "not it at all"})
    unknown = client.post("/api/v1/auth/login", json={"username": "nobody", "password": "not it at all"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["detail"] == unknown.json()["detail"] == "wrong username or password"
    assert "set-cookie" not in wrong.headers
    assert actions(platform).count("auth.login-failed") == 2
    assert client.get("/api/v1/auth/me").status_code == 401


def test_login_input_is_validated(client: TestClient) -> None:
    missing = client.post("/api/v1/auth/login", json={"username": "admin"})
    assert missing.status_code == 422
    assert missing.json()["field"] == "password"
    extra = client.post("/api/v1/auth/login", json={"username": "admin", "password": "x", "remember": True})
    assert extra.status_code == 422
    assert extra.json()["field"] == "remember"
    # A form post from another site cannot log anyone in: the body must be JSON.
    form = client.post("/api/v1/auth/login", data={"username": "admin", "password": TEST_PASSWORD})
    assert form.status_code == 422


def test_disabled_user_cannot_log_in(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    admin = api_users["admin"].headers
    assert (
        client.patch("/api/v1/users/viewer-user", json={"disabled": True}, headers=admin).status_code == 200
    )
    refused = client.post("/api/v1/auth/login", json={"username": "viewer-user", "password": TEST_PASSWORD})
    assert refused.status_code == 401


def test_session_changes_need_the_csrf_token(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    csrf = login(client, "admin-user")["csrf_token"]
    body = {"name": "from the ui"}

    without = client.post("/api/v1/tokens", json=body)
    assert without.status_code == 403
    assert without.json()["field"] == "X-CSRF-Token"
    wrong = client.post("/api/v1/tokens", json=body, headers={"X-CSRF-Token": "guess"})
    assert wrong.status_code == 403

    created = client.post("/api/v1/tokens", json=body, headers={"X-CSRF-Token": csrf})
    assert created.status_code == 201, created.text
    # Reading needs no CSRF token: it changes nothing.
    assert client.get("/api/v1/tokens").status_code == 200


def test_logout_ends_the_session(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    csrf = login(client, "auditor-user")["csrf_token"]
    stolen_cookie = client.cookies.get("sslclm_session")
    assert client.post("/api/v1/auth/logout").status_code == 403  # CSRF applies to logout too
    response = client.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf})
    assert response.status_code == 204
    assert SimpleCookie(response.headers["set-cookie"])["sslclm_session"]["max-age"] == "0"
    assert client.get("/api/v1/auth/me").status_code == 401
    # A copy of the cookie taken before logout is worthless afterwards.
    client.cookies.set("sslclm_session", stolen_cookie or "", domain="testserver")
    assert client.get("/api/v1/auth/me").status_code == 401
    assert "auth.logout" in actions(platform)


def test_logout_with_a_bearer_token_is_harmless(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    viewer = api_users["viewer"].headers
    assert client.post("/api/v1/auth/logout", headers=viewer).status_code == 204
    assert client.get("/api/v1/auth/me", headers=viewer).status_code == 200


def test_me_with_a_token(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    me = client.get("/api/v1/auth/me", headers=api_users["viewer"].headers).json()
    assert me["username"] == "viewer-user"
    assert me["role"] == "viewer"
    assert me["via"] == "token"
    assert me["token_id"] is not None
    assert me["csrf_token"] is None


def test_expired_session_is_refused(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    login(client, "viewer-user")
    real_clock = platform.clock
    platform.clock = lambda: real_clock() + timedelta(hours=13)  # sessions last 12 hours
    try:
        assert client.get("/api/v1/auth/me").status_code == 401
    finally:
        platform.clock = real_clock


def test_change_own_password(client: TestClient, api_users: dict[str, ApiUser], platform: Platform) -> None:
    csrf = login(client, "viewer-user")["csrf_token"]
    headers = {"X-CSRF-Token": csrf}
    wrong = client.post(
        "/api/v1/auth/password",
        json={"current_password": "not the password", "new_password": "a brand new passphrase"},
        headers=headers,
    )
    assert wrong.status_code == 422
    assert wrong.json()["field"] == "current_password"
    short = client.post(
        "/api/v1/auth/password",
        json={"current_password": TEST_PASSWORD, "new_password": "short"},
        headers=headers,
    )
    assert short.status_code == 422
    assert short.json()["field"] == "new_password"

    changed = client.post(
        "/api/v1/auth/password",
        json={"current_password": TEST_PASSWORD, "new_password": "a brand new passphrase"},
        headers=headers,
    )
    assert changed.status_code == 204
    # Every open session of that user ends with the old password.
    assert client.get("/api/v1/auth/me").status_code == 401
    old = client.post("/api/v1/auth/login", json={"username": "viewer-user", "password": TEST_PASSWORD})
    assert old.status_code == 401
    login(client, "viewer-user", "a brand new passphrase")
    recorded = actions(platform)
    assert "auth.password-change-failed" in recorded
    assert "user.update" in recorded


def test_password_change_with_a_token_still_needs_the_current_password(
    client: TestClient, api_users: dict[str, ApiUser]
) -> None:
    response = client.post(
        "/api/v1/auth/password",
        json={"current_password": "guessing", "new_password": "a brand new passphrase"},
        headers=api_users["operator"].headers,
    )
    assert response.status_code == 422
    assert response.json()["field"] == "current_password"


def test_first_admin_password_file_goes_once_the_admin_changes_it(
    client: TestClient, platform: Platform
) -> None:
    platform.settings.admin_password = None
    credentials = ensure_first_admin(platform)
    assert credentials is not None and credentials.password_file is not None
    assert credentials.password_file.exists()
    csrf = login(client, credentials.username, credentials.password or "")["csrf_token"]
    response = client.post(
        "/api/v1/auth/password",
        json={"current_password": credentials.password, "new_password": "the admin's own passphrase"},
        headers={"X-CSRF-Token": csrf},
    )
    assert response.status_code == 204
    assert not (platform.settings.home / PASSWORD_FILE).exists()
