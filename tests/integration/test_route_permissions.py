"""Every route refuses anonymous callers, every changing route refuses viewers and CSRF-less sessions.

Routes are discovered from the application itself, so a route added later is covered without
touching this file: to make a route public or let viewers use it, add it to the lists below with
the reason, where a reviewer will see it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel
from starlette.routing import BaseRoute, Mount, Route

from conftest import TEST_PASSWORD, ApiUser

try:  # FastAPI >= 0.130 keeps included routers as branches; this walks them to the final routes.
    from fastapi.routing import iter_route_contexts
except ImportError:  # pragma: no cover - older FastAPI flattens routes into app.routes itself
    iter_route_contexts = None

CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# (method, path template) or (None, path prefix of a mount) -> why anyone may call it.
PUBLIC: dict[tuple[str | None, str], str] = {
    ("GET", "/api/v1/health"): "load balancer liveness; reveals only the version",
    ("GET", "/api/v1/ready"): "load balancer readiness; reveals only the database kind",
    ("GET", "/api/v1/openapi.json"): "the API description is the same for everyone",
    ("GET", "/api/v1/docs"): "Swagger UI page; every call it makes is authenticated",
    ("GET", "/api/v1/redoc"): "ReDoc page; static",
    ("GET", "/docs/oauth2-redirect"): "Swagger UI helper page; static",
    ("POST", "/api/v1/auth/login"): "the way in",
    (
        "GET",
        "/api/v1/system/ca.pem",
    ): "the internal CA certificate: public, a client needs it to trust the server",
    (
        "GET",
        "/api/v1/ca-connections/{connection_id}/crl",
    ): "a CRL is fetched by every relying party, unauthenticated",
    (
        "GET",
        "/.well-known/acme-challenge/{token}",
    ): "ACME http-01 responder: the ACME server fetches the key authorization without credentials",
    ("GET", "/ui/login"): "the login form",
    ("POST", "/ui/login"): "the login form's submission",
    ("GET", "/"): "redirects to /ui/",
    (None, "/ui/static"): "stylesheets and scripts of the login page",
}

# Changing routes a viewer may call: none of them changes anything but the caller's own login.
VIEWER_MAY_CHANGE: dict[tuple[str, str], str] = {
    ("POST", "/api/v1/auth/login"): "public: logging in",
    ("POST", "/ui/login"): "public: logging in",
    ("POST", "/api/v1/auth/logout"): "ends the caller's own session",
    ("POST", "/ui/logout"): "ends the caller's own session",
    ("POST", "/api/v1/auth/password"): "the caller's own password, and only with the current one",
}

_PARAM = re.compile(r"\{[^}]+\}")


@dataclass(frozen=True)
class Endpoint:
    method: str
    template: str
    url: str
    mount: bool = False

    @property
    def key(self) -> tuple[str | None, str]:
        return (None, self.template) if self.mount else (self.method, self.template)


def _routes(app: FastAPI) -> Iterator[Any]:
    if iter_route_contexts is None:
        yield from app.routes
    else:
        yield from iter_route_contexts(app.routes)


def discover(app: FastAPI) -> list[Endpoint]:
    endpoints: list[Endpoint] = []
    for route in _routes(app):
        original: BaseRoute = getattr(route, "original_route", route)
        path = route.path
        if isinstance(original, Mount):
            endpoints.append(Endpoint("GET", path, f"{path}/style.css", mount=True))
            continue
        assert isinstance(original, Route), (
            f"{path}: a {type(original).__name__} route; teach this test how to call it so it is covered"
        )
        # A dummy value for every path parameter: the checks under test run before the lookup.
        url = _PARAM.sub("1", path)
        for method in sorted(set(route.methods or ()) - {"HEAD"}):
            endpoints.append(Endpoint(method, path, url))
    assert len(endpoints) > 10, "route discovery found almost nothing"
    return endpoints


def call(client: TestClient, endpoint: Endpoint, **kwargs: Any) -> int:
    response = client.request(endpoint.method, endpoint.url, follow_redirects=False, **kwargs)
    return response.status_code


def test_allow_lists_name_real_routes(client: TestClient) -> None:
    keys = {endpoint.key for endpoint in discover(client.app)}  # type: ignore[arg-type]
    assert set(PUBLIC) <= keys, f"stale PUBLIC entries: {set(PUBLIC) - keys}"
    assert {(m, p) for m, p in VIEWER_MAY_CHANGE} <= keys, "stale VIEWER_MAY_CHANGE entries"


def anonymous_failures(client: TestClient, under: str = "/") -> list[str]:
    client.cookies.clear()
    failures: list[str] = []
    for endpoint in discover(client.app):  # type: ignore[arg-type]
        if not endpoint.template.startswith(under):
            continue
        public = endpoint.key in PUBLIC
        attempts: list[dict[str, Any]] = [{}]
        if endpoint.method in CHANGING:
            # Authentication must come before body validation: an empty or wrong body still gets 401.
            attempts += [{"json": {}}, {"json": {"unexpected": 1}}, {"data": {"field": "x"}}]
        else:
            attempts.append({"params": {"limit": "-1", "unexpected": "1"}})
        for kwargs in attempts:
            status = call(client, endpoint, **kwargs)
            if public and status == 401:
                failures.append(f"{endpoint.method} {endpoint.url} {kwargs}: public but got 401")
            # A public route naming an object by its path may answer 404 for the dummy value.
            missing_object = status == 404 and "{" in endpoint.template
            if public and endpoint.method == "GET" and status >= 400 and not missing_object:
                failures.append(
                    f"{endpoint.method} {endpoint.url} {kwargs}: public page failed with {status}"
                )
            if not public and status != 401:
                failures.append(f"{endpoint.method} {endpoint.url} {kwargs}: anonymous got {status}, not 401")
    return failures


def test_anonymous_callers_get_401(client: TestClient) -> None:
    failures = anonymous_failures(client)
    assert not failures, "\n".join(failures)


class _Body(BaseModel):
    name: str


def test_the_walk_notices_a_new_unprotected_route(client: TestClient) -> None:
    def leaky(item: int, body: _Body) -> dict[str, str]:
        return {"name": body.name}

    app: FastAPI = client.app  # type: ignore[assignment]
    app.add_api_route("/api/v1/leaky/{item}", leaky, methods=["POST"])
    failures = anonymous_failures(client, under="/api/v1/leaky")
    assert failures
    assert all("/api/v1/leaky/1" in failure for failure in failures)


def test_bad_tokens_get_401_everywhere(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    client.cookies.clear()
    headers = {"Authorization": "Bearer sslclm_neverIssued"}
    failures = [
        f"{endpoint.method} {endpoint.url}: got {status}"
        for endpoint in discover(client.app)  # type: ignore[arg-type]
        if endpoint.key not in PUBLIC and (status := call(client, endpoint, headers=headers, json={})) != 401
    ]
    assert not failures, "\n".join(failures)


def test_viewers_change_nothing(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    client.cookies.clear()
    viewer = api_users["viewer"].headers
    failures: list[str] = []
    for endpoint in discover(client.app):  # type: ignore[arg-type]
        if endpoint.method not in CHANGING or (endpoint.method, endpoint.template) in VIEWER_MAY_CHANGE:
            continue
        for kwargs in ({}, {"json": {}}):
            status = call(client, endpoint, headers=viewer, **kwargs)
            if status != 403:
                failures.append(f"{endpoint.method} {endpoint.url} {kwargs}: viewer got {status}, not 403")
    assert not failures, "\n".join(failures)


def test_sessions_need_the_csrf_token_on_every_change(
    client: TestClient, api_users: dict[str, ApiUser]
) -> None:
    client.cookies.clear()
    login = client.post("/api/v1/auth/login", json={"username": "admin-user", "password": TEST_PASSWORD})
    assert login.status_code == 200
    failures: list[str] = []
    for endpoint in discover(client.app):  # type: ignore[arg-type]
        if endpoint.method not in CHANGING or endpoint.key in PUBLIC:
            continue
        # An admin session, so a 403 here can only come from the missing CSRF token.
        status = call(client, endpoint, json={})
        if status != 403:
            failures.append(f"{endpoint.method} {endpoint.url}: session without CSRF token got {status}")
    assert not failures, "\n".join(failures)
    assert client.get("/api/v1/auth/me").status_code == 200  # the session itself is still good
