"""Policy sets, violations, enrollment pre-check, reports, metrics and webhook notifications via the API."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import ApiUser
from sslclm.audit.service import AuditContext
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.workflows import connections
from support.certs import make_ca, make_leaf

API = "/api/v1"
POLICY = """\
name: strict
scope: {kind: all}
checks:
  - check: max-validity
  - check: expiry
    params: {warning_days: 30, critical_days: 7}
  - check: domains
    params: {forbidden: ["*.internal.example"]}
"""


def _import(client: TestClient, user: ApiUser, pem: bytes, name: str) -> None:
    response = client.post(f"{API}/certificates/import", files=[("files", (name, pem))], headers=user.headers)
    assert response.status_code in (200, 201), response.text


@pytest.fixture
def inventory(client: TestClient, api_users: dict[str, ApiUser]) -> dict[str, Any]:
    admin = api_users["admin"]
    ca = make_ca("Policy Root")
    long = make_leaf(ca, "long.example.com", days=500)
    soon = make_leaf(ca, "soon.example.com", days=4)
    bad = make_leaf(ca, "db.internal.example", days=30)
    for name, issued in (("ca.pem", ca), ("long.pem", long), ("soon.pem", soon), ("bad.pem", bad)):
        _import(client, admin, issued.pem, name)
    return {"ca": ca, "long": long, "soon": soon, "bad": bad}


def test_policy_violations_reports_and_metrics(
    client: TestClient, api_users: dict[str, ApiUser], inventory: dict[str, Any]
) -> None:
    admin, viewer = api_users["admin"], api_users["viewer"]
    assert client.put(f"{API}/policies", content=POLICY, headers=viewer.headers).status_code == 403
    created = client.put(f"{API}/policies", content=POLICY, headers=admin.headers)
    assert created.status_code == 201, created.text
    assert created.json()["evaluation"]["certificates"] == 4

    found = client.get(f"{API}/policies/violations", headers=viewer.headers).json()["items"]
    by_check = {(v["common_name"], v["check"]): v["severity"] for v in found}
    assert by_check[("long.example.com", "max-validity")] == "high"
    assert by_check[("soon.example.com", "expiry")] == "high"
    assert ("db.internal.example", "domains") in by_check
    assert all(v["policy"] == "strict" for v in found)

    csv_text = client.get(f"{API}/policies/violations/export?format=csv", headers=viewer.headers).text
    assert csv_text.splitlines()[0].startswith("id,certificate_id")

    bad_doc = client.put(
        f"{API}/policies", content="name: x\nchecks:\n  - check: nope\n", headers=admin.headers
    )
    assert bad_doc.status_code == 422
    assert bad_doc.json()["field"] == "checks[0].check" and bad_doc.json()["data"]["line"] == 3

    refused = client.post(
        f"{API}/policies/check-enrollment",
        json={"names": ["a.internal.example"], "validity_days": 3650},
        headers=api_users["operator"].headers,
    ).json()
    assert refused["allowed"] is False
    assert {v["check"] for v in refused["violations"]} == {"max-validity", "domains"}

    compliance = client.get(f"{API}/reports/compliance", headers=viewer.headers).json()
    assert {r["check"] for r in compliance} == {"max-validity", "expiry", "domains"}
    risks = client.get(f"{API}/reports/top-risks", headers=viewer.headers).json()
    assert risks[0]["common_name"] in {"soon.example.com", "long.example.com"} and risks[0]["score"] > 0
    forecast = client.get(f"{API}/reports/expiry-forecast?per=week", headers=viewer.headers).json()
    assert sum(r["unmanaged"] for r in forecast) == 2  # soon (4 days) and bad (30 days)
    assert client.get(f"{API}/reports/risk?by=issuer&format=csv", headers=viewer.headers).status_code == 200

    ca_id = next(
        c["id"]
        for c in client.get(f"{API}/certificates?q=policy root", headers=viewer.headers).json()["items"]
        if c["is_ca"]
    )
    concentration = client.get(f"{API}/reports/ca-concentration/{ca_id}", headers=viewer.headers).json()
    assert concentration["certificates"] == 3

    assert client.get(f"{API}/metrics").status_code == 401
    metrics = client.get(f"{API}/metrics", headers=viewer.headers)
    assert metrics.status_code == 200
    assert 'sslclm_policy_violations{severity="high"}' in metrics.text
    assert 'sslclm_certificates_expiring{within_days="7"} 1.0' in metrics.text


def test_exemption_hides_violation_until_withdrawn(
    client: TestClient, api_users: dict[str, ApiUser], inventory: dict[str, Any]
) -> None:
    admin = api_users["admin"]
    client.put(f"{API}/policies", content=POLICY, headers=admin.headers)
    found = client.get(f"{API}/policies/violations?check=max-validity", headers=admin.headers).json()["items"]
    cert_id = found[0]["certificate_id"]
    body = {
        "certificate_id": cert_id,
        "check": "max-validity",
        "justification": "legacy appliance, replaced in Q3",
        "approver": "ciso",
        "expires_at": "2099-01-01T00:00:00Z",
    }
    created = client.post(f"{API}/policies/exemptions", json=body, headers=admin.headers)
    assert created.status_code == 201, created.text
    assert (
        client.get(f"{API}/policies/violations?check=max-validity", headers=admin.headers).json()["items"]
        == []
    )
    listed = client.get(
        f"{API}/policies/violations?check=max-validity&include_exempted=true", headers=admin.headers
    ).json()["items"]
    assert listed[0]["exemption_id"] == created.json()["id"]
    client.delete(f"{API}/policies/exemptions/{created.json()['id']}", headers=admin.headers)
    assert (
        len(
            client.get(f"{API}/policies/violations?check=max-validity", headers=admin.headers).json()["items"]
        )
        == 1
    )


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    _Receiver.received = []
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Receiver.received
    server.shutdown()
    server.server_close()


def test_expiry_notice_sent_once_per_threshold_signed(
    client: TestClient,
    platform: Platform,
    api_users: dict[str, ApiUser],
    inventory: dict[str, Any],
    receiver: tuple[str, list[tuple[dict[str, str], bytes]]],
) -> None:
    url, received = receiver
    admin = api_users["admin"]
    with session_scope(platform.sessions) as session:
        connections.create_connection(
            session,
            AuditContext(actor="test"),
            platform,
            kind="notifier",
            name="ops-hook",
            type_key="webhook",
            config={"url": url, "secret": "s3cret-key", "attempts": 2, "backoff_seconds": 0},
        )
    rule = {"name": "expiry", "event": "certificate.expiring", "channel": "ops-hook"}
    assert client.post(f"{API}/notifications/rules", json=rule, headers=admin.headers).status_code == 201
    first = client.post(f"{API}/notifications/sweep", headers=admin.headers).json()
    assert first["queued"] == 2 and first["sent"] == 2
    again = client.post(f"{API}/notifications/sweep", headers=admin.headers).json()
    assert again["queued"] == 0 and len(received) == 2
    headers, body = received[0]
    expected = hmac.new(
        b"s3cret-key", headers["X-SSLCLM-Timestamp"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert headers["X-SSLCLM-Signature"] == f"sha256={expected}"
    payload = json.loads(body)
    assert payload["event"] == "certificate.expiring"
    assert {json.loads(b)["details"]["threshold_days"] for _, b in received} == {7, 30}
    log = client.get(f"{API}/notifications/log", headers=admin.headers).json()
    assert {e["status"] for e in log} == {"sent"}
