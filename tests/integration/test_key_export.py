"""Downloading a certificate with its private key: PEM, PKCS#12 read back by ``openssl pkcs12``, JKS
read back by ``keytool -list``; permission, password rules and the audit event."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from sqlalchemy import select

from sslclm.audit.models import AuditEvent
from sslclm.core.platform import Platform
from tests.conftest import ApiUser
from tests.support.certs import Issued, make_ca, make_leaf

API = "/api/v1/certificates"
PASSWORD = "Export-Pass-2024"


@pytest.fixture
def held(client: TestClient, api_users: dict[str, ApiUser]) -> dict[str, Issued]:
    """A leaf whose key the platform holds, with its chain, and a certificate without a key."""
    root = make_ca("Export Root")
    inter = make_ca("Export Issuing CA", parent=root)
    leaf = make_leaf(inter, "shop.example.com", days=60)
    keyless = make_leaf(inter, "nokey.example.com", days=60)
    for name, data in (
        ("shop.pem", leaf.pem + inter.pem + root.pem + leaf.key_pem),
        ("nokey.pem", keyless.pem),
    ):
        answer = client.post(
            f"{API}/import", files=[("files", (name, data))], headers=api_users["admin"].headers
        )
        assert answer.status_code in (200, 201), answer.text
    return {"root": root, "inter": inter, "leaf": leaf, "keyless": keyless}


def _url(issued: Issued) -> str:
    return f"{API}/{hashlib.sha256(issued.der).hexdigest()}/export-key"


def test_pkcs12_reads_back_with_openssl(
    client: TestClient, api_users: dict[str, ApiUser], held: dict[str, Issued], tmp_path: Path
) -> None:
    answer = client.post(
        _url(held["leaf"]),
        json={"format": "pkcs12", "password": PASSWORD},
        headers=api_users["admin"].headers,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/x-pkcs12"
    assert 'filename="shop.example.com.p12"' in answer.headers["content-disposition"]
    assert answer.headers["cache-control"] == "no-store"
    bundle = tmp_path / "shop.p12"
    bundle.write_bytes(answer.content)

    def read(*options: str) -> str:
        return subprocess.run(
            ["openssl", "pkcs12", "-in", str(bundle), "-passin", f"pass:{PASSWORD}", *options],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout

    certificates = read("-nokeys", "-clcerts") + read("-nokeys", "-cacerts")
    assert held["leaf"].pem.decode().strip() in certificates
    assert held["inter"].pem.decode().strip() in certificates
    key = serialization.load_pem_private_key(read("-nocerts", "-nodes").encode(), None)
    assert key.public_key() == held["leaf"].cert.public_key()
    refused = subprocess.run(
        ["openssl", "pkcs12", "-in", str(bundle), "-passin", "pass:wrong-password", "-nokeys"],
        capture_output=True,
        timeout=30,
    )
    assert refused.returncode != 0


def test_jks_lists_with_keytool(
    client: TestClient, api_users: dict[str, ApiUser], held: dict[str, Issued], tmp_path: Path
) -> None:
    answer = client.post(
        _url(held["leaf"]),
        json={"format": "jks", "password": PASSWORD, "alias": "shop"},
        headers=api_users["admin"].headers,
    )
    assert answer.status_code == 200, answer.text
    store = tmp_path / "shop.jks"
    store.write_bytes(answer.content)
    listing = subprocess.run(
        ["keytool", "-list", "-v", "-keystore", str(store), "-storepass", PASSWORD],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "Alias name: shop" in listing and "PrivateKeyEntry" in listing
    assert "Certificate chain length: 3" in listing
    fingerprint = hashlib.sha256(held["leaf"].der).hexdigest().upper()
    assert ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)) in listing


def test_pem_bundle_holds_chain_and_key(
    client: TestClient, api_users: dict[str, ApiUser], held: dict[str, Issued]
) -> None:
    headers = api_users["admin"].headers
    plain = client.post(_url(held["leaf"]), json={"format": "pem"}, headers=headers)
    assert plain.status_code == 200, plain.text
    leaf, inter, root = held["leaf"], held["inter"], held["root"]
    assert plain.content.startswith(leaf.pem + inter.pem + root.pem)
    assert b"-----BEGIN PRIVATE KEY-----" in plain.content
    encrypted = client.post(_url(leaf), json={"format": "pem", "password": PASSWORD}, headers=headers)
    assert b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in encrypted.content
    key_pem = encrypted.content[encrypted.content.index(b"-----BEGIN ENCRYPTED") :]
    key = serialization.load_pem_private_key(key_pem, PASSWORD.encode())
    assert key.public_key() == leaf.cert.public_key()


@pytest.mark.parametrize(
    ("role", "body", "status", "problem"),
    [
        ("viewer", {"format": "pkcs12", "password": PASSWORD}, 403, "key:export"),
        ("operator", {"format": "pem"}, 403, "key:export"),
        ("auditor", {"format": "pem"}, 403, "key:export"),
        ("admin", {"format": "pkcs12"}, 422, "needs a password"),
        ("admin", {"format": "jks", "password": ""}, 422, "needs a password"),
        ("admin", {"format": "pkcs12", "password": "short"}, 422, "too weak"),
        ("admin", {"format": "jks", "password": "aaaaaaaaaaaa"}, 422, "too weak"),
        ("admin", {"format": "pem", "password": "abcabcabca"}, 422, "too weak"),
        ("admin", {"format": "zip", "password": PASSWORD}, 422, "format"),
        ("admin", {"format": "jks", "password": PASSWORD, "alias": "a/b"}, 422, "alias"),
    ],
)
def test_refused_requests(
    client: TestClient,
    api_users: dict[str, ApiUser],
    held: dict[str, Issued],
    platform: Platform,
    role: str,
    body: dict[str, str],
    status: int,
    problem: str,
) -> None:
    answer = client.post(_url(held["leaf"]), json=body, headers=api_users[role].headers)
    assert answer.status_code == status, answer.text
    assert problem in answer.text
    with platform.sessions() as session:
        exported = session.execute(
            select(AuditEvent.id).where(AuditEvent.action == "certificate.export-key")
        ).all()
    assert exported == []


def test_no_key_held_is_404(
    client: TestClient, api_users: dict[str, ApiUser], held: dict[str, Issued]
) -> None:
    answer = client.post(
        _url(held["keyless"]),
        json={"format": "pkcs12", "password": PASSWORD},
        headers=api_users["admin"].headers,
    )
    assert answer.status_code == 404, answer.text
    assert "holds no private key" in answer.json()["detail"]


def test_export_is_audited_without_the_password(
    client: TestClient, api_users: dict[str, ApiUser], held: dict[str, Issued], platform: Platform
) -> None:
    answer = client.post(
        _url(held["leaf"]),
        json={"format": "jks", "password": PASSWORD},
        headers=api_users["admin"].headers,
    )
    assert answer.status_code == 200, answer.text
    with platform.sessions() as session:
        event = session.execute(
            select(AuditEvent).where(AuditEvent.action == "certificate.export-key")
        ).scalar_one()
        assert event.actor.startswith("admin-user")
        assert event.summary["format"] == "jks" and event.summary["encrypted"] is True
        assert event.summary["fingerprint"] == hashlib.sha256(held["leaf"].der).hexdigest()
        assert PASSWORD not in str(event.summary) and PASSWORD not in (event.note or "")
