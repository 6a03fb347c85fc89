"""Reading the audit log: filters, keyset pagination, permissions and the verify endpoint."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from conftest import ApiUser

EVENTS = "/api/v1/audit/events"


def all_pages(client: TestClient, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = dict(params)
        if cursor is not None:
            query["cursor"] = cursor
        response = client.get(EVENTS, params=query, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= params.get("limit", 100)
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def test_every_change_is_listed_newest_first(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    admin = api_users["admin"].headers
    for name in ("dave", "erin", "frank"):
        body = {"username": name, "password": "a long enough secret", "role": "viewer"}
        assert client.post("/api/v1/users", json=body, headers=admin).status_code == 201

    events = all_pages(client, api_users["auditor"].headers, limit=2)
    ids = [event["id"] for event in events]
    assert ids == sorted(ids, reverse=True)
    assert len(ids) == len(set(ids)) == 4 + 4 + 3  # fixture users and tokens, then three users here
    newest = events[0]
    assert newest["action"] == "user.create"
    assert (
        newest["actor"]
        == f"admin-user (token {client.get('/api/v1/auth/me', headers=admin).json()['token_id']})"
    )
    assert newest["summary"] == {"username": "frank", "role": "viewer"}
    assert newest["request_id"]
    assert newest["prev_hash"] == events[1]["hash"]


def test_filters(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    admin = api_users["admin"].headers
    auditor = api_users["auditor"].headers
    client.patch("/api/v1/users/viewer-user", json={"disabled": True}, headers=admin)
    client.post("/api/v1/auth/login", json={"username": "ghost", "password": "whatever"})

    updates = all_pages(client, auditor, action="user.update")
    assert len(updates) == 1
    assert updates[0]["summary"]["changes"] == {"disabled": [False, True]}
    target = updates[0]["target_id"]
    by_target = all_pages(client, auditor, target_type="user", target_id=target)
    assert {event["action"] for event in by_target} == {"user.create", "user.update"}
    assert [event["action"] for event in all_pages(client, auditor, actor="ghost")] == ["auth.login-failed"]
    tokens = all_pages(client, auditor, target_type="api_token")
    assert len(tokens) == 4
    assert all_pages(client, auditor, actor="nobody-at-all") == []
    # A user's actions through a token count as theirs; the filter is not a pattern.
    by_admin = all_pages(client, auditor, actor="admin-user")
    assert [event["action"] for event in by_admin] == ["user.update"]
    assert all_pages(client, auditor, actor=by_admin[0]["actor"]) == by_admin
    assert all_pages(client, auditor, actor="admin%") == []
    assert all_pages(client, auditor, actor="admin_user") == []

    everything = all_pages(client, auditor)
    middle = everything[len(everything) // 2]
    since = all_pages(client, auditor, since=middle["occurred_at"])
    assert since and all(event["occurred_at"] >= middle["occurred_at"] for event in since)
    until = all_pages(client, auditor, until=middle["occurred_at"])
    assert all(event["occurred_at"] < middle["occurred_at"] for event in until)
    assert len(since) + len(until) == len(everything)


def test_bad_query_names_the_parameter(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"limit": 501}, "limit"),
        ({"limit": 0}, "limit"),
        ({"cursor": "last"}, "cursor"),
        ({"since": "yesterday"}, "since"),
        ({"actr": "admin"}, "actr"),
    ]
    for params, field in cases:
        response = client.get(EVENTS, params=params, headers=api_users["auditor"].headers)
        assert (response.status_code, response.json()["field"]) == (422, field), params


def test_window_must_be_ordered(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    response = client.get(
        EVENTS,
        params={"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"},
        headers=api_users["auditor"].headers,
    )
    assert response.status_code == 422
    assert "until must be later than since" in response.json()["detail"]


def test_only_audit_read_sees_the_log(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    for role, status in (("admin", 200), ("auditor", 200), ("operator", 403), ("viewer", 403)):
        headers = api_users[role].headers
        assert client.get(EVENTS, headers=headers).status_code == status, role
        assert client.get("/api/v1/audit/verify", headers=headers).status_code == status, role


def test_verify_an_intact_log(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    result = client.get("/api/v1/audit/verify", headers=api_users["auditor"].headers).json()
    assert result == {"ok": True, "checked": 8, "broken_at_id": None, "reason": None}
