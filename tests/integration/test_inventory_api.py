"""The certificate inventory through the REST API, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from sslclm.audit.models import AuditEvent
from sslclm.core.platform import Platform
from sslclm.inventory.models import PrivateKey
from tests.conftest import ApiUser
from tests.support.certs import NOW, Issued, make_ca, make_leaf

API = "/api/v1/certificates"


def upload(client: TestClient, user: ApiUser, name: str, data: bytes, password: str | None = None) -> dict:
    form = {"password": password} if password else {}
    response = client.post(f"{API}/import", files=[("files", (name, data))], data=form, headers=user.headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


@pytest.fixture
def estate() -> dict[str, Issued]:
    root = make_ca("Estate Root")
    inter = make_ca("Estate Issuing CA", parent=root)
    other = make_ca("Other CA", key_kind="rsa")
    return {
        "root": root,
        "inter": inter,
        "other": other,
        "soon": make_leaf(inter, "soon.example.com", days=10),
        "later": make_leaf(
            inter, "later.example.com", sans=["later.example.com", "api.example.org"], days=300
        ),
        "expired": make_leaf(other, "old.example.net", not_before=NOW - timedelta(days=400), days=100),
        "future": make_leaf(other, "future.example.net", not_before=NOW + timedelta(days=5), days=90),
        "rsa": make_leaf(inter, "rsa.example.com", key_kind="rsa", days=200),
    }


@pytest.fixture
def loaded(client: TestClient, api_users: dict[str, ApiUser], estate: dict[str, Issued]) -> dict[str, Issued]:
    operator = api_users["operator"]
    bundle = b"".join(estate[k].pem for k in ("soon", "inter", "root"))
    summary = upload(client, operator, "soon-chain.pem", bundle + estate["soon"].key_pem)
    assert summary["imported"] == 3 and summary["keys_stored"] == 1
    for name in ("later", "expired", "future", "rsa", "other"):
        upload(client, operator, f"{name}.der", estate[name].der)
    return estate


def names(page: dict) -> list[str]:
    return [item["common_name"] for item in page["items"]]


def test_list_filters_and_statuses(client: TestClient, api_users: dict[str, ApiUser], loaded: dict) -> None:
    viewer = api_users["viewer"].headers
    everything = client.get(API, params={"limit": 100}, headers=viewer).json()
    assert len(everything["items"]) == 8 and everything["next_cursor"] is None
    statuses = {item["common_name"]: item["status"] for item in everything["items"]}
    assert statuses["soon.example.com"] == "expiring"
    assert statuses["later.example.com"] == "valid"
    assert statuses["old.example.net"] == "expired"
    assert statuses["future.example.net"] == "not-yet-valid"

    expiring = client.get(API, params={"status": "expiring"}, headers=viewer).json()
    assert names(expiring) == ["soon.example.com"]
    both = client.get(API, params=[("status", "expired"), ("status", "expiring")], headers=viewer).json()
    assert set(names(both)) == {"soon.example.com", "old.example.net"}
    assert names(client.get(API, params={"q": "API.example.ORG"}, headers=viewer).json()) == [
        "later.example.com"
    ]
    by_issuer = client.get(API, params={"issuer": "other ca"}, headers=viewer).json()
    assert set(names(by_issuer)) == {"old.example.net", "future.example.net", "Other CA"}
    rsa = client.get(API, params={"key_algorithm": "rsa", "min_key_size": 2048}, headers=viewer).json()
    assert set(names(rsa)) == {"rsa.example.com", "Other CA"}
    window = client.get(
        API,
        params={"expires_after": NOW.isoformat(), "expires_before": (NOW + timedelta(days=100)).isoformat()},
        headers=viewer,
    ).json()
    assert set(names(window)) == {"soon.example.com", "future.example.net"}
    fingerprint = loaded["rsa"].fingerprint
    assert names(client.get(API, params={"q": fingerprint[:20]}, headers=viewer).json()) == [
        "rsa.example.com"
    ]


@pytest.mark.parametrize("sort", ["not_after", "common_name", "owner", "issuer", "key_size", "created_at"])
@pytest.mark.parametrize("desc", [False, True])
def test_keyset_pagination_visits_every_row_once(
    client: TestClient, api_users: dict[str, ApiUser], loaded: dict, sort: str, desc: bool
) -> None:
    admin = api_users["admin"].headers
    # Some owners set, some NULL: pagination must cross the NULL boundary in both directions.
    client.patch(f"{API}/{loaded['soon'].fingerprint}", json={"owner": "alice"}, headers=admin)
    client.patch(f"{API}/{loaded['rsa'].fingerprint}", json={"owner": "bob"}, headers=admin)
    expected = [
        i["id"]
        for i in client.get(API, params={"limit": 100, "sort": sort, "desc": desc}, headers=admin).json()[
            "items"
        ]
    ]
    seen: list[int] = []
    cursor = None
    while True:
        params = {"limit": 3, "sort": sort, "desc": desc}
        if cursor:
            params["cursor"] = cursor
        page = client.get(API, params=params, headers=admin).json()
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected and len(seen) == 8


def test_reimport_updates_and_records_sightings(
    client: TestClient, api_users: dict[str, ApiUser], loaded: dict, platform: Platform
) -> None:
    operator = api_users["operator"]
    again = upload(client, operator, "copy-of-later.pem", loaded["later"].pem)
    assert again == {"files": 1, "imported": 0, "updated": 1, "keys_stored": 0, "rejected": []}
    cert = client.get(f"{API}/{loaded['later'].fingerprint}", headers=operator.headers).json()
    assert cert["sightings"] == 2
    sightings = client.get(f"{API}/{cert['id']}/sightings", headers=operator.headers).json()["items"]
    assert {s["location"] for s in sightings} == {"later.der", "copy-of-later.pem"}
    assert all(s["kind"] == "upload" for s in sightings)


def test_detail_fields_download_and_chain(
    client: TestClient, api_users: dict[str, ApiUser], loaded: dict
) -> None:
    viewer = api_users["viewer"].headers
    soon = loaded["soon"]
    detail = client.get(f"{API}/{soon.fingerprint[:12]}", headers=viewer).json()
    assert detail["common_name"] == "soon.example.com"
    assert detail["issuer"] == "CN=Estate Issuing CA"
    assert detail["sans"] == ["DNS:soon.example.com"]
    assert detail["extended_key_usage"] == ["serverAuth"]
    assert detail["has_private_key"] is True
    assert "PRIVATE KEY" not in json.dumps(detail)
    pem = client.get(f"{API}/{detail['id']}/download", headers=viewer)
    assert pem.content == soon.pem
    der = client.get(f"{API}/{detail['id']}/download", params={"format": "der"}, headers=viewer)
    assert der.content == soon.der and der.headers["content-type"] == "application/pkix-cert"
    chain = client.get(f"{API}/{detail['id']}/download", params={"format": "chain"}, headers=viewer).content
    assert chain == soon.pem + loaded["inter"].pem + loaded["root"].pem


def test_private_key_stored_encrypted_and_export_is_separate_and_audited(
    client: TestClient, api_users: dict[str, ApiUser], loaded: dict, platform: Platform
) -> None:
    soon = loaded["soon"]
    with platform.sessions() as session:
        sealed = session.execute(select(PrivateKey.encrypted_pkcs8)).scalar_one()
    raw_der_tail = soon.key_pem.split(b"\n")[1]
    assert raw_der_tail not in sealed
    url = f"{API}/{soon.fingerprint}/private-key"
    assert client.post(url, json={}, headers=api_users["operator"].headers).status_code == 403
    exported = client.post(url, json={}, headers=api_users["admin"].headers)
    assert exported.status_code == 200 and b"BEGIN PRIVATE KEY" in exported.content
    encrypted = client.post(url, json={"password": "exportpass1"}, headers=api_users["admin"].headers)
    assert b"ENCRYPTED PRIVATE KEY" in encrypted.content
    with platform.sessions() as session:
        actions = session.execute(
            select(AuditEvent.action).where(AuditEvent.action == "private-key.export")
        ).all()
    assert len(actions) == 2


def test_metadata_update_history_tags_and_archive(
    client: TestClient, api_users: dict[str, ApiUser], loaded: dict
) -> None:
    operator = api_users["operator"].headers
    url = f"{API}/{loaded['later'].fingerprint}"
    changed = client.patch(
        url, json={"owner": "web-team", "tags": ["prod", "pci"], "environment": "prod"}, headers=operator
    )
    assert changed.status_code == 200
    assert changed.json()["changed"] == ["environment", "owner", "tags"]
    client.patch(url, json={"owner": None}, headers=operator)
    history = client.get(f"{url}/history", headers=operator).json()
    assert history[0]["changes"]["tags"] == [[], ["pci", "prod"]]
    assert history[1]["changes"] == {"owner": ["web-team", None]}
    assert names(client.get(API, params={"tag": "pci"}, headers=operator).json()) == ["later.example.com"]
    assert names(client.get(API, params={"environment": "prod"}, headers=operator).json()) == [
        "later.example.com"
    ]

    assert client.post(f"{url}/archive", headers=operator).status_code == 200
    assert "later.example.com" not in names(client.get(API, params={"limit": 100}, headers=operator).json())
    archived = client.get(API, params={"include_archived": True, "q": "later"}, headers=operator).json()
    assert archived["items"][0]["archived"] is True
    events = client.get(
        "/api/v1/audit/events", params={"action": "certificate.archive"}, headers=api_users["admin"].headers
    )
    assert events.status_code == 200 and len(events.json()["items"]) == 1


def test_stats_and_streamed_exports(client: TestClient, api_users: dict[str, ApiUser], loaded: dict) -> None:
    viewer = api_users["viewer"].headers
    stats = client.get(f"{API}/stats", params={"by": "issuer"}, headers=viewer).json()["counts"]
    counts = {row["key"]: row["count"] for row in stats}
    assert counts == {"CN=Estate Issuing CA": 3, "CN=Estate Root": 2, "CN=Other CA": 3}
    by_status = client.get(f"{API}/stats", params={"by": "status"}, headers=viewer).json()["counts"]
    assert {row["key"]: row["count"] for row in by_status}["expiring"] == 1

    exported = client.get(f"{API}/export", params={"format": "csv", "status": "expiring"}, headers=viewer)
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [row["common_name"] for row in rows] == ["soon.example.com"]
    as_json = client.get(f"{API}/export", params={"format": "json"}, headers=viewer).json()
    assert len(as_json) == 8


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"sort": "password"}, "sort"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"status": "sleepy"}, "status.0"),
        ({"limit": 0}, "limit"),
        ({"expires_before": "yesterday"}, "expires_before"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_query_parameters_name_the_field(
    client: TestClient, api_users: dict[str, ApiUser], params: dict, field: str
) -> None:
    response = client.get(API, params=params, headers=api_users["viewer"].headers)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == field
    assert response.headers["content-type"] == "application/problem+json"


def test_bad_uploads_are_rejected_with_a_reason(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    headers = api_users["operator"].headers
    garbage = client.post(f"{API}/import", files=[("files", ("junk.pem", b"hello world"))], headers=headers)
    assert garbage.status_code == 422
    assert garbage.json()["detail"].startswith("junk.pem: ")
    truncated = b"-----BEGIN CERTIFICATE-----\nMIIB"
    response = client.post(f"{API}/import", files=[("files", ("cut.pem", truncated))], headers=headers)
    assert response.status_code == 422 and "truncated" in response.json()["detail"].lower()
    platform.settings.max_upload_bytes = 1000
    huge = client.post(f"{API}/import", files=[("files", ("big.bin", b"x" * 5000))], headers=headers)
    assert huge.status_code == 413
    listing = client.get(API, headers=headers).json()
    assert listing["items"] == []
    assert client.get(f"{API}/nope", headers=headers).status_code == 422
    assert client.get(f"{API}/999999", headers=headers).status_code == 404
