"""Bearer tokens: creation, the secret shown once, role ceilings, listing, revocation and expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

from conftest import ApiUser
from sslclm.core.platform import Platform

TOKENS = "/api/v1/tokens"


def make_token(client: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post(TOKENS, json={"name": "ci", **body}, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_bad_credentials_get_401(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    cases = [
        ("Bearer sslclm_thisTokenWasNeverIssued", "unknown bearer token"),
        ("Bearer not-one-of-ours", "malformed bearer token"),
        ("Basic YWRtaW46YWRtaW4=", "use 'Authorization: Bearer <token>'"),
        ("Bearer ", "use 'Authorization: Bearer <token>'"),
    ]
    for authorization, detail in cases:
        response = client.get("/api/v1/auth/me", headers={"Authorization": authorization})
        assert (response.status_code, response.json()["detail"]) == (401, detail), authorization
        assert response.headers["www-authenticate"] == "Bearer"


def test_secret_is_shown_once_and_works(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    created = make_token(client, api_users["operator"].headers, name="deploy bot")
    assert created["token"].startswith("sslclm_")
    assert created["token"].startswith(created["prefix"])
    assert created["role"] == "operator"
    assert created["user"] == "operator-user"
    assert created["expires_at"] is None
    me = client.get("/api/v1/auth/me", headers=bearer(created["token"])).json()
    assert me["token_id"] == created["id"]

    listed = client.get(TOKENS, headers=api_users["operator"].headers).json()["items"]
    assert {token["name"] for token in listed} == {"operator token", "deploy bot"}
    assert all("token" not in token for token in listed)
    assert created["token"] not in str(listed)


def test_token_role_never_exceeds_owner_or_caller(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    operator = api_users["operator"].headers
    above = client.post(TOKENS, json={"name": "x", "role": "admin"}, headers=operator)
    assert above.status_code == 422
    assert above.json()["field"] == "role"
    unknown = client.post(TOKENS, json={"name": "x", "role": "root"}, headers=operator)
    assert unknown.status_code == 422
    assert unknown.json()["field"] == "role"

    # A narrower token works at its own role, even though its owner is an admin...
    auditor_of_admin = make_token(client, api_users["admin"].headers, role="auditor")
    as_auditor = bearer(auditor_of_admin["token"])
    assert client.get("/api/v1/auth/me", headers=as_auditor).json()["role"] == "auditor"
    assert client.post("/api/v1/users", json={}, headers=as_auditor).status_code == 403
    assert client.get("/api/v1/audit/events", headers=as_auditor).status_code == 200
    # ...and cannot mint a wider one: by default a new token inherits the narrower role.
    minted = make_token(client, as_auditor)
    assert minted["role"] == "auditor"
    wider = client.post(TOKENS, json={"name": "x", "role": "admin"}, headers=as_auditor)
    assert wider.status_code == 422
    assert wider.json()["field"] == "role"

    viewer_of_operator = make_token(client, operator, role="viewer")
    assert (
        client.get("/api/v1/auth/me", headers=bearer(viewer_of_operator["token"])).json()["role"] == "viewer"
    )


def test_viewer_cannot_create_tokens(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    response = client.post(TOKENS, json={"name": "mine"}, headers=api_users["viewer"].headers)
    assert response.status_code == 403
    assert response.json()["data"] == {"permission": "token:own"}


def test_admin_creates_a_token_for_another_user(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    admin = api_users["admin"].headers
    created = make_token(client, admin, user="viewer-user")
    assert created["user"] == "viewer-user"
    assert created["role"] == "viewer"
    above = client.post(TOKENS, json={"name": "x", "user": "viewer-user", "role": "operator"}, headers=admin)
    assert above.status_code == 422
    missing = client.post(TOKENS, json={"name": "x", "user": "nobody"}, headers=admin)
    assert missing.status_code == 404
    # Only token:manage may act for someone else.
    other = client.post(
        TOKENS, json={"name": "x", "user": "viewer-user"}, headers=api_users["operator"].headers
    )
    assert other.status_code == 403


def test_listing_scopes(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    admin = api_users["admin"].headers
    auditor = api_users["auditor"].headers
    everyone = client.get(TOKENS, headers=admin).json()["items"]
    assert {token["user"] for token in everyone} == {
        "admin-user",
        "operator-user",
        "auditor-user",
        "viewer-user",
    }
    one = client.get(TOKENS, params={"user": "viewer-user"}, headers=admin).json()["items"]
    assert [token["user"] for token in one] == ["viewer-user"]

    own = client.get(TOKENS, headers=auditor).json()["items"]
    assert [token["user"] for token in own] == ["auditor-user"]
    assert client.get(TOKENS, params={"user": "auditor-user"}, headers=auditor).status_code == 200
    assert client.get(TOKENS, params={"user": "admin-user"}, headers=auditor).status_code == 403
    # Viewers may look at their own tokens; looking changes nothing.
    assert len(client.get(TOKENS, headers=api_users["viewer"].headers).json()["items"]) == 1

    typo = client.get(TOKENS, params={"usr": "x"}, headers=admin)
    assert typo.status_code == 422
    assert typo.json()["field"] == "usr"


def test_listing_pages(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    admin = api_users["admin"].headers
    for index in range(5):
        make_token(client, admin, name=f"bulk {index}")
    seen: list[int] = []
    cursor: int | None = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        page = client.get(TOKENS, params=params, headers=admin).json()
        seen += [token["id"] for token in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 9
    assert seen == sorted(seen)
    assert client.get(TOKENS, params={"limit": 501}, headers=admin).json()["field"] == "limit"


def test_revocation_is_immediate(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    operator = api_users["operator"].headers
    created = make_token(client, operator)
    token = bearer(created["token"])
    assert client.get("/api/v1/auth/me", headers=token).status_code == 200  # now cached on this node
    revoked = client.delete(f"{TOKENS}/{created['id']}", headers=operator)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    refused = client.get("/api/v1/auth/me", headers=token)
    assert refused.status_code == 401
    assert refused.json()["detail"] == "this API token was revoked"
    # Revoking twice is harmless.
    assert client.delete(f"{TOKENS}/{created['id']}", headers=operator).status_code == 200


def test_revoking_someone_elses_token(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    victim = make_token(client, api_users["auditor"].headers)
    path = f"{TOKENS}/{victim['id']}"
    # Another user's token looks like a missing one, so ids cannot be probed.
    assert client.delete(path, headers=api_users["operator"].headers).status_code == 404
    assert client.delete(f"{TOKENS}/999999", headers=api_users["operator"].headers).status_code == 404
    assert client.delete(path, headers=api_users["viewer"].headers).status_code == 403
    assert client.delete(path, headers=api_users["admin"].headers).status_code == 200
    assert client.get("/api/v1/auth/me", headers=bearer(victim["token"])).status_code == 401


def test_expiry(client: TestClient, api_users: dict[str, ApiUser], platform: Platform) -> None:
    operator = api_users["operator"].headers
    in_a_day = make_token(client, operator, expires_in_days=1)
    expires = datetime.fromisoformat(in_a_day["expires_at"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(days=1)
    at = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    fixed = make_token(client, operator, expires_at=at.isoformat())
    assert datetime.fromisoformat(fixed["expires_at"]) == at

    past = client.post(TOKENS, json={"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, headers=operator)
    assert past.status_code == 422
    assert past.json()["field"] == "expires_at"
    both = client.post(
        TOKENS, json={"name": "x", "expires_in_days": 1, "expires_at": at.isoformat()}, headers=operator
    )
    assert both.status_code == 422
    too_long = client.post(TOKENS, json={"name": "x", "expires_in_days": 99999}, headers=operator)
    assert too_long.json()["field"] == "expires_in_days"

    real_clock = platform.clock
    platform.clock = lambda: real_clock() + timedelta(days=2)
    try:
        expired = client.get("/api/v1/auth/me", headers=bearer(in_a_day["token"]))
        assert expired.status_code == 401
        assert expired.json()["detail"] == "this API token has expired"
        assert client.get("/api/v1/auth/me", headers=bearer(fixed["token"])).status_code == 200
    finally:
        platform.clock = real_clock


def test_token_input_validation(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    admin = api_users["admin"].headers
    extra = client.post(TOKENS, json={"name": "x", "scope": "all"}, headers=admin)
    assert extra.status_code == 422
    assert extra.json()["field"] == "scope"
    blank = client.post(TOKENS, json={"name": ""}, headers=admin)
    assert blank.json()["field"] == "name"
    assert client.delete(f"{TOKENS}/abc", headers=admin).json()["field"] == "token_id"
