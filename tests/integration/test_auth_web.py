"""The UI's login form, logout and home page, driven like a browser would."""

from __future__ import annotations

import re
from http.cookies import SimpleCookie

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from conftest import TEST_PASSWORD, ApiUser
from sslclm.web.routes import safe_next

_HIDDEN = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(page: Response) -> str:
    match = _HIDDEN.search(page.text)
    assert match, page.text
    return match.group(1)


def submit_login(client: TestClient, username: str, password: str, next_url: str = "/ui/") -> Response:
    form = client.get("/ui/login")
    assert form.status_code == 200
    return client.post(
        "/ui/login",
        data={"username": username, "password": password, "csrf_token": csrf_of(form), "next": next_url},
        follow_redirects=False,
    )


def test_home_without_login_shows_the_form_with_401(client: TestClient) -> None:
    page = client.get("/ui/?tab=x")
    assert page.status_code == 401
    assert page.headers["content-type"].startswith("text/html")
    assert '<form method="post" action="/ui/login">' in page.text
    assert 'name="next" value="/ui/?tab=x"' in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert "sslclm_login_csrf" in page.headers["set-cookie"]


def test_login_and_logout(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    response = submit_login(client, "auditor-user", TEST_PASSWORD)
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/"
    cookies = [SimpleCookie(value) for value in response.headers.get_list("set-cookie")]
    session = next(cookie["sslclm_session"] for cookie in cookies if "sslclm_session" in cookie)
    assert session["secure"] and session["httponly"]
    assert session["samesite"].lower() == "strict"

    home = client.get("/ui/")
    assert home.status_code == 200
    assert "auditor-user" in home.text
    assert "auditor" in home.text
    assert 'href="/api/v1/docs"' in home.text
    # The same session works for the API.
    assert client.get("/api/v1/auth/me").json()["via"] == "session"
    # Already logged in: the form sends you on.
    again = client.get("/ui/login", follow_redirects=False)
    assert again.status_code == 303

    assert client.post("/ui/logout", data={}, follow_redirects=False).status_code == 403
    out = client.post("/ui/logout", data={"csrf_token": csrf_of(home)}, follow_redirects=False)
    assert out.status_code == 303
    assert out.headers["location"] == "/ui/login"
    assert client.get("/ui/").status_code == 401
    assert client.get("/api/v1/auth/me").status_code == 401


def test_wrong_password_shows_the_form_again(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    response = submit_login(client, "<b>viewer-user</b>", "wrong password here")
    assert response.status_code == 401
    assert "Wrong username or password." in response.text
    assert "&lt;b&gt;viewer-user&lt;/b&gt;" in response.text  # escaped, never markup
    assert "wrong password here" not in response.text
    assert "sslclm_session" not in response.headers.get("set-cookie", "")


def test_login_form_needs_its_csrf_token(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    # A page on another site can post the form, but cannot read the token that goes with the cookie.
    client.get("/ui/login")
    forged = client.post(
        "/ui/login",
        data={"username": "viewer-user", "password": TEST_PASSWORD, "csrf_token": "forged"},
        follow_redirects=False,
    )
    assert forged.status_code == 403
    assert "The login form expired" in forged.text
    client.cookies.clear()
    no_cookie = client.post(
        "/ui/login",
        data={"username": "viewer-user", "password": TEST_PASSWORD, "csrf_token": "x"},
        follow_redirects=False,
    )
    assert no_cookie.status_code == 403


def test_empty_fields(client: TestClient) -> None:
    response = submit_login(client, "", "")
    assert response.status_code == 400
    assert "Enter your username and password." in response.text


def test_no_open_redirect(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    response = submit_login(client, "viewer-user", TEST_PASSWORD, next_url="https://evil.example/")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "/ui/"),
        ("", "/ui/"),
        ("/ui/certificates?page=2", "/ui/certificates?page=2"),
        ("https://evil.example/ui/", "/ui/"),
        ("//evil.example/ui/", "/ui/"),
        ("/ui/\\evil", "/ui/"),
        ("/api/v1/users", "/ui/"),
        ("/ui/\nSet-Cookie: x", "/ui/"),
        ("javascript:alert(1)", "/ui/"),
    ],
)
def test_safe_next(value: str | None, expected: str) -> None:
    assert safe_next(value) == expected


def test_root_and_static(client: TestClient) -> None:
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 302
    assert root.headers["location"] == "/ui/"
    css = client.get("/ui/static/style.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
