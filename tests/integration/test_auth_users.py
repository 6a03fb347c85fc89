"""User accounts through the API: create, read, change, and the errors that name the field at fault."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from conftest import TEST_PASSWORD, ApiUser

USERS = "/api/v1/users"
NEW_USER = {"username": "carol", "password": "a long enough secret", "role": "operator"}


def test_create_list_and_read(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    admin = api_users["admin"].headers
    created = client.post(USERS, json=NEW_USER, headers=admin)
    assert created.status_code == 201
    body = created.json()
    assert body["username"] == "carol"
    assert body["role"] == "operator"
    assert body["disabled"] is False
    assert body["last_login_at"] is None
    assert "password" not in str(body) and "hash" not in str(body)

    listed = client.get(USERS, headers=api_users["auditor"].headers)
    assert listed.status_code == 200
    assert [user["username"] for user in listed.json()] == [
        "admin-user",
        "auditor-user",
        "carol",
        "operator-user",
        "viewer-user",
    ]
    assert client.get(f"{USERS}/carol", headers=admin).json()["role"] == "operator"
    missing = client.get(f"{USERS}/nobody", headers=admin)
    assert missing.status_code == 404
    assert missing.json()["field"] == "username"

    # The new account can log in with the password it was given.
    login = client.post("/api/v1/auth/login", json={"username": "carol", "password": NEW_USER["password"]})
    assert login.status_code == 200


def test_duplicate_is_a_conflict(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    admin = api_users["admin"].headers
    assert client.post(USERS, json=NEW_USER, headers=admin).status_code == 201
    again = client.post(USERS, json={**NEW_USER, "role": "viewer"}, headers=admin)
    assert again.status_code == 409
    assert again.json()["field"] == "username"


# A table of bad inputs, run in one test: each case needs the same users, made once.
BAD_USERS: list[tuple[dict[str, Any], str]] = [
    ({**NEW_USER, "username": "has space"}, "username"),
    ({**NEW_USER, "username": ""}, "username"),
    ({**NEW_USER, "username": "x" * 151}, "username"),
    ({**NEW_USER, "role": "superuser"}, "role"),
    ({**NEW_USER, "password": "short"}, "password"),
    ({**NEW_USER, "password": "x" * 5000}, "password"),
    ({"username": "carol", "role": "viewer"}, "password"),
    ({**NEW_USER, "is_admin": True}, "is_admin"),
]


def test_create_validation_names_the_field(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    for body, field in BAD_USERS:
        response = client.post(USERS, json=body, headers=api_users["admin"].headers)
        assert (response.status_code, response.json()["field"]) == (422, field), body
        # Passwords are never echoed back in an error.
        assert "a long enough secret" not in response.text
    assert client.get(f"{USERS}/carol", headers=api_users["admin"].headers).status_code == 404


def test_update_role_disable_and_password(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    admin = api_users["admin"].headers
    path = f"{USERS}/operator-user"
    nothing = client.patch(path, json={}, headers=admin)
    assert nothing.status_code == 422
    typo = client.patch(path, json={"roles": "viewer"}, headers=admin)
    assert typo.json()["field"] == "roles"
    bad_role = client.patch(path, json={"role": "god"}, headers=admin)
    assert bad_role.json()["field"] == "role"
    bad_flag = client.patch(path, json={"disabled": "sometimes"}, headers=admin)
    assert bad_flag.json()["field"] == "disabled"

    assert client.patch(path, json={"password": "another long secret"}, headers=admin).status_code == 200
    old = client.post("/api/v1/auth/login", json={"username": "operator-user", "password": TEST_PASSWORD})
    assert old.status_code == 401

    token = api_users["operator"].headers
    assert client.get("/api/v1/auth/me", headers=token).status_code == 200
    assert client.patch(path, json={"disabled": True}, headers=admin).json()["disabled"] is True
    # A disabled user's tokens stop working at once, although they were just cached.
    assert client.get("/api/v1/auth/me", headers=token).status_code == 401
    assert client.patch(path, json={"disabled": False}, headers=admin).status_code == 200
    assert client.get("/api/v1/auth/me", headers=token).status_code == 200
    assert client.patch(path, json={"role": "operator"}, headers=admin).status_code == 200  # no change
    assert client.patch(path, json={"role": "admin"}, headers=admin).json()["role"] == "admin"
    # A promotion leaves existing tokens at the role they were created with.
    assert client.get("/api/v1/auth/me", headers=token).json()["role"] == "operator"


def test_demotion_revokes_tokens_above_the_new_role(
    client: TestClient, api_users: dict[str, ApiUser]
) -> None:
    admin = api_users["admin"].headers
    operator = api_users["operator"].headers
    viewer_token = client.post(
        "/api/v1/tokens", json={"name": "ro", "role": "viewer"}, headers=operator
    ).json()
    assert client.get("/api/v1/auth/me", headers=operator).json()["role"] == "operator"

    assert client.patch(f"{USERS}/operator-user", json={"role": "viewer"}, headers=admin).status_code == 200
    assert client.get("/api/v1/auth/me", headers=operator).status_code == 401
    kept = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {viewer_token['token']}"})
    assert kept.status_code == 200
    assert kept.json()["role"] == "viewer"


def test_the_last_admin_stays(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    admin = api_users["admin"].headers
    demote = client.patch(f"{USERS}/admin-user", json={"role": "operator"}, headers=admin)
    assert demote.status_code == 409
    assert demote.json()["field"] == "role"
    disable = client.patch(f"{USERS}/admin-user", json={"disabled": True}, headers=admin)
    assert disable.status_code == 409
    assert disable.json()["field"] == "disabled"

    second = {"username": "second-admin", "password": "a long enough secret", "role": "admin"}
    assert client.post(USERS, json=second, headers=admin).status_code == 201
    assert client.patch(f"{USERS}/admin-user", json={"disabled": True}, headers=admin).status_code == 200


def test_only_user_manage_changes_users(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    for role in ("operator", "auditor", "viewer"):
        headers = api_users[role].headers
        assert client.post(USERS, json=NEW_USER, headers=headers).status_code == 403
        assert (
            client.patch(f"{USERS}/viewer-user", json={"disabled": True}, headers=headers).status_code == 403
        )
        can_read = role == "auditor"
        assert client.get(USERS, headers=headers).status_code == (200 if can_read else 403), role
