"""The console's pages through the real app and database: rendering, roles, CSRF, escaping, actions."""

from __future__ import annotations

import re

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.testclient import TestClient
from httpx import Response

from conftest import TEST_PASSWORD, ApiUser
from sslclm.core.platform import Platform
from support.certs import make_ca, make_leaf

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
XSS_CN = "<script>alert(1)</script>"


def login(client: TestClient, username: str) -> str:
    """Signs in through the login form; returns the session's CSRF token from the landing page."""
    form = client.get("/ui/login")
    token = CSRF.search(form.text)
    assert token, form.text
    landed = client.post(
        "/ui/login",
        data={"username": username, "password": TEST_PASSWORD, "csrf_token": token.group(1), "next": "/ui/"},
    )
    assert landed.status_code == 200, landed.text
    session_token = CSRF.search(landed.text)
    assert session_token
    return session_token.group(1)


def import_pems(client: TestClient, user: ApiUser, pems: list[bytes]) -> None:
    files = [("files", (f"c{i}.pem", pem, "application/x-pem-file")) for i, pem in enumerate(pems)]
    response = client.post("/api/v1/certificates/import", files=files, headers=user.headers)
    assert response.status_code in (200, 201), response.text


def assert_strict_page(response: Response) -> None:
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "style-src 'self'" in policy and "unsafe-inline" not in policy
    # No inline script or style anywhere: every script is a file, no style attributes.
    assert "<script>" not in response.text and " style=" not in response.text
    assert re.search(r"\son[a-z]+=", response.text) is None


@pytest.fixture
def seeded(client: TestClient, api_users: dict[str, ApiUser]) -> dict[str, int]:
    admin = api_users["admin"]
    ca = make_ca("Web Test CA")
    leaves = [make_leaf(ca, f"host{i}.example.com", days=10 + i * 40) for i in range(3)]
    xss = make_leaf(ca, XSS_CN, sans=["xss.example.com"])
    import_pems(client, admin, [ca.cert.public_bytes(Encoding.PEM)])
    import_pems(client, admin, [leaf.cert.public_bytes(Encoding.PEM) for leaf in [*leaves, xss]])
    listed = client.get("/api/v1/certificates", params={"q": "xss.example.com"}, headers=admin.headers).json()
    assert (
        client.post(
            "/api/v1/ca-connections", json={"name": "internal", "type": "local"}, headers=admin.headers
        ).status_code
        == 201
    )
    assert (
        client.post(
            "/api/v1/profiles", json={"name": "web", "ca_connection": "internal"}, headers=admin.headers
        ).status_code
        == 201
    )
    enrolled = client.post(
        "/api/v1/managed-certificates",
        json={"dns_names": ["app.example.com"], "profile": "web"},
        headers=admin.headers,
    )
    assert enrolled.status_code == 202, enrolled.text
    return {
        "xss": listed["items"][0]["id"],
        "managed": enrolled.json()["id"],
        "job": enrolled.json()["job_id"],
    }


PAGES = [
    "/ui/",
    "/ui/certificates",
    "/ui/certificates?q=host&status=valid&status=expiring&sort=common_name&desc=1",
    "/ui/certificates/import",
    "/ui/managed",
    "/ui/managed/new",
    "/ui/approvals",
    "/ui/jobs",
    "/ui/jobs?status=queued",
    "/ui/scans",
    "/ui/endpoints",
    "/ui/connectors",
    "/ui/connectors/ca-gateway/new/local",
    "/ui/policies",
    "/ui/reports",
    "/ui/reports?by=key_algorithm",
    "/ui/audit",
    "/ui/audit?verify=1",
    "/ui/users",
    "/ui/tokens",
    "/ui/agents",
    "/ui/notifications",
    "/ui/notifications/channels/new/email",
    "/ui/notifications/log",
    "/ui/notifications/events",
    "/ui/scan-schedules",
    "/ui/profiles",
    "/ui/policies/new",
]


def test_every_page_renders_for_an_admin(
    client: TestClient, api_users: dict[str, ApiUser], seeded: dict[str, int]
) -> None:
    login(client, "admin-user")
    for path in [
        *PAGES,
        f"/ui/certificates/{seeded['xss']}",
        f"/ui/managed/{seeded['managed']}",
        f"/ui/jobs/{seeded['job']}",
    ]:
        page = client.get(path)
        assert page.status_code == 200, f"{path}: {page.status_code} {page.text[:500]}"
        assert_strict_page(page)
    dashboard = client.get("/ui/").text
    assert "<svg" in dashboard and "Within 7 days" in dashboard
    assert "The hash chain is intact" in client.get("/ui/audit?verify=1").text


def test_hostile_certificate_fields_render_as_text(
    client: TestClient, api_users: dict[str, ApiUser], seeded: dict[str, int]
) -> None:
    login(client, "viewer-user")
    for path in (f"/ui/certificates/{seeded['xss']}", "/ui/certificates?q=xss"):
        page = client.get(path)
        assert page.status_code == 200
        assert XSS_CN not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


def test_a_viewer_sees_no_actions_and_the_server_refuses_them(
    client: TestClient, api_users: dict[str, ApiUser], seeded: dict[str, int]
) -> None:
    csrf = login(client, "viewer-user")
    for path in (
        "/ui/certificates",
        f"/ui/certificates/{seeded['xss']}",
        f"/ui/managed/{seeded['managed']}",
        f"/ui/jobs/{seeded['job']}",
        "/ui/scans",
        "/ui/connectors",
        "/ui/managed",
    ):
        page = client.get(path)
        assert page.status_code == 200, path
        # The only form a viewer gets that changes anything is logging out.
        actions = re.findall(r'<form[^>]*method="post"[^>]*action="([^"]+)"', page.text)
        assert actions == ["/ui/logout"], (path, actions)
    assert "Audit log" not in client.get("/ui/").text
    assert client.get("/ui/audit").status_code == 403
    refused = client.post(
        "/ui/certificates/bulk",
        data={"csrf_token": csrf, "action": "tag", "value": "x", "ids": [str(seeded["xss"])]},
    )
    assert refused.status_code == 403 and "lacks permission" in refused.text
    assert client.post(f"/ui/managed/{seeded['managed']}/renew", data={"csrf_token": csrf}).status_code == 403


def test_forms_without_the_csrf_token_are_refused(
    client: TestClient, api_users: dict[str, ApiUser], seeded: dict[str, int]
) -> None:
    login(client, "admin-user")
    refused = client.post(
        "/ui/certificates/bulk", data={"action": "tag", "value": "x", "ids": [str(seeded["xss"])]}
    )
    assert refused.status_code == 403
    assert "CSRF" in refused.text and refused.headers["content-type"].startswith("text/html")
    page = client.get(f"/ui/certificates/{seeded['xss']}")
    assert '<span class="tag">x</span>' not in page.text


def test_bulk_tag_and_owner_then_filter_by_them(
    client: TestClient, api_users: dict[str, ApiUser], seeded: dict[str, int]
) -> None:
    csrf = login(client, "operator-user")
    listing = client.get("/ui/certificates?q=host")
    ids = re.findall(r'name="ids" value="(\d+)"', listing.text)
    assert len(ids) == 3
    tagged = client.post(
        "/ui/certificates/bulk",
        data={
            "csrf_token": csrf,
            "action": "tag",
            "value": "pci",
            "ids": ids[:2],
            "back": "/ui/certificates?q=host",
        },
        follow_redirects=False,
    )
    assert tagged.status_code == 303 and tagged.headers["location"] == "/ui/certificates?q=host&done=tagged"
    owned = client.post(
        "/ui/certificates/bulk",
        data={"csrf_token": csrf, "action": "owner", "value": "alice", "ids": ids[:1]},
    )
    assert owned.status_code == 200 and "Owner updated." in owned.text
    assert len(re.findall(r'name="ids"', client.get("/ui/certificates?tag=pci").text)) == 2
    assert len(re.findall(r'name="ids"', client.get("/ui/certificates?owner=alice&tag=pci").text)) == 1
    # The change is audited under the operator's name.
    trail = client.get(f"/ui/certificates/{ids[0]}").text
    assert "certificate.update" in trail and "operator-user" in trail
    empty = client.post("/ui/certificates/bulk", data={"csrf_token": csrf, "action": "tag", "value": "pci"})
    assert empty.status_code == 422 and "select at least one certificate" in empty.text
    bad = client.post(
        "/ui/certificates/bulk", data={"csrf_token": csrf, "action": "tag", "value": "no spaces", "ids": ids}
    )
    assert bad.status_code == 422 and "a tag is" in bad.text


def test_inventory_sorts_pages_and_names_bad_filters(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    ca = make_ca("Paging CA")
    leaves = [make_leaf(ca, f"n{i:02d}.example.com", days=30 + i) for i in range(55)]
    import_pems(client, api_users["admin"], [leaf.cert.public_bytes(Encoding.PEM) for leaf in leaves])
    login(client, "viewer-user")
    first = client.get("/ui/certificates?q=example.com&sort=common_name&desc=1")
    names = re.findall(r'<td class="name"><a href="/ui/certificates/\d+">([^<]+)</a>', first.text)
    assert names[:2] == ["n54.example.com", "n53.example.com"] and len(names) == 50
    next_link = re.search(r'<a href="([^"]+)" rel="next">', first.text)
    assert next_link
    second = client.get(next_link.group(1).replace("&amp;", "&"))
    rest = re.findall(r'<td class="name"><a href="/ui/certificates/\d+">([^<]+)</a>', second.text)
    assert rest == [
        "n04.example.com",
        "n03.example.com",
        "n02.example.com",
        "n01.example.com",
        "n00.example.com",
    ]
    assert 'rel="next"' not in second.text
    bad = client.get("/ui/certificates?expires_after=not-a-date")
    assert bad.status_code == 400 and "expires_after" in bad.text
    assert client.get("/ui/certificates?sort=password").status_code == 400


def test_enrollment_form_checks_policy_and_enrolls(
    client: TestClient, api_users: dict[str, ApiUser], seeded: dict[str, int]
) -> None:
    csrf = login(client, "operator-user")
    form = client.get("/ui/managed/new")
    assert '<option value="web"' in form.text
    checked = client.post(
        "/ui/managed/new",
        data={"csrf_token": csrf, "profile": "web", "dns_names": "shop.example.com", "intent": "check"},
    )
    assert checked.status_code == 200
    # Only advisory objections (if any) under the baseline: nothing blocks this request.
    assert "No policy objections" in checked.text or (
        "Policy objections" in checked.text and "blocks enrollment" not in checked.text
    )
    missing = client.post("/ui/managed/new", data={"csrf_token": csrf, "dns_names": "x.example.com"})
    assert missing.status_code == 422 and "choose a profile" in missing.text
    enrolled = client.post(
        "/ui/managed/new",
        data={"csrf_token": csrf, "profile": "web", "dns_names": "shop.example.com", "intent": "enroll"},
        follow_redirects=False,
    )
    assert enrolled.status_code == 303 and re.match(
        r"/ui/jobs/\d+\?done=enrolled", enrolled.headers["location"]
    )
    again = client.post(
        "/ui/managed/new", data={"csrf_token": csrf, "profile": "web", "dns_names": "shop.example.com"}
    )
    assert again.status_code == 409 and "already exists" in again.text


def test_connector_form_is_generated_from_the_schema_and_checked(
    client: TestClient, api_users: dict[str, ApiUser]
) -> None:
    csrf = login(client, "admin-user")
    form = client.get("/ui/connectors/ca-gateway/new/local")
    assert form.status_code == 200 and 'name="name"' in form.text
    created = client.post(
        "/ui/connectors/ca-gateway/new/local",
        data={"csrf_token": csrf, "name": "ui-ca"},
        follow_redirects=False,
    )
    assert created.status_code == 303, created.text
    overview = client.get("/ui/connectors")
    assert "ui-ca" in overview.text
    connection_id = re.search(r'action="/ui/connectors/(\d+)/check"', overview.text)
    assert connection_id
    checked = client.post(f"/ui/connectors/{connection_id.group(1)}/check", data={"csrf_token": csrf})
    assert checked.status_code == 200 and "Connection checked." in checked.text
    clash = client.post("/ui/connectors/ca-gateway/new/local", data={"csrf_token": csrf, "name": "ui-ca"})
    assert clash.status_code == 409
    unknown = client.get("/ui/connectors/ca-gateway/new/nope")
    assert unknown.status_code == 422 and "no ca-gateway connector type &#39;nope&#39;" in unknown.text


def test_missing_things_answer_with_a_page(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    login(client, "viewer-user")
    for path in ("/ui/certificates/999999", "/ui/jobs/999999", "/ui/managed/999999", "/ui/scans/999999"):
        page = client.get(path)
        assert page.status_code == 404, path
        assert page.headers["content-type"].startswith("text/html")
    # The API keeps answering problems as JSON.
    api = client.get("/api/v1/certificates/999999")
    assert api.status_code == 404 and api.headers["content-type"] == "application/problem+json"
