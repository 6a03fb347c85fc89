"""Revocation from CRLs fetched over HTTP: the built-in CA's real CRL endpoint served by uvicorn, and
a loopback server publishing CRLs made by ``sslclm.pki`` (a forged one is refused; nextUpdate is kept).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import uvicorn
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import ApiUser
from sslclm.api.app import create_app
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.inventory.models import Certificate
from sslclm.jobs import queue
from sslclm.jobs.registry import load_task_modules
from sslclm.jobs.worker import Worker
from sslclm.pki import build_csr, certificate_to_pem, create_ca, generate_private_key, sign_csr
from sslclm.pki.ca_tools import RevokedEntry, build_crl
from sslclm.policies.engine import evaluate_certificates
from sslclm.policies.models import PolicyViolation, RevocationList
from sslclm.policies.revocation import RETRY_AFTER_FAILURE, refresh_due
from sslclm.policies.tasks import REFRESH_CRLS_TASK
from sslclm.spi.types import RevocationReason, RevokeRequest
from sslclm.workflows import connections
from support.tls_zoo import free_port

API = "/api/v1"
POLICY = "name: revocation\nscope: {kind: all}\nchecks:\n  - check: revoked\n"


def run_jobs(platform: Platform) -> None:
    load_task_modules()
    Worker(platform, concurrency=2, poll_interval=0.05).run_until_idle(timeout=60)


@contextmanager
def served_platform(platform: Platform) -> Iterator[str]:
    """The platform's own app on a real loopback HTTP server."""
    port = free_port()
    config = uvicorn.Config(
        create_app(platform=platform), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _violations(platform: Platform, certificate_id: int) -> dict[str, str]:
    with platform.sessions() as session:
        rows = session.execute(
            select(PolicyViolation.check, PolicyViolation.severity).where(
                PolicyViolation.certificate_id == certificate_id
            )
        )
        return {check: severity for check, severity in rows}


def test_the_built_in_ca_crl_marks_a_certificate_revoked_at_the_ca(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    admin, operator = api_users["admin"].headers, api_users["operator"].headers
    assert client.put(f"{API}/policies", content=POLICY, headers=admin).status_code == 201
    with served_platform(platform) as base:
        made = client.post(
            f"{API}/ca-connections", json={"name": "internal", "type": "local", "config": {}}, headers=admin
        )
        assert made.status_code == 201, made.text
        connection_id = made.json()["id"]
        crl_url = f"{base}/api/v1/ca-connections/{connection_id}/crl"
        patched = client.patch(
            f"{API}/ca-connections/{connection_id}", json={"config": {"crl_url": crl_url}}, headers=admin
        )
        assert patched.status_code == 200, patched.text
        profile = client.post(
            f"{API}/profiles",
            json={
                "name": "web",
                "ca_connection": "internal",
                "validity_days": 30,
                "allowed_names": ["*.example.com"],
            },
            headers=admin,
        )
        assert profile.status_code == 201, profile.text
        created = client.post(
            f"{API}/managed-certificates",
            json={"dns_names": ["crl.example.com"], "profile": "web"},
            headers=operator,
        )
        assert created.status_code == 202, created.text
        run_jobs(platform)
        managed = client.get(f"{API}/managed-certificates/{created.json()['id']}", headers=operator).json()
        cert_id = managed["current_certificate_id"]
        assert cert_id is not None and _violations(platform, cert_id) == {}

        # Revoked at the CA behind the platform's back: only the CRL can tell the inventory.
        with session_scope(platform.sessions) as session:
            row = connections.get_connection(session, connection_id, connections.ConnectorKind.CA_GATEWAY)
            gateway = connections.build_ca_gateway(platform, row)
            der = session.get(Certificate, cert_id).der  # type: ignore[union-attr]
        gateway.revoke(
            RevokeRequest(certificate_pem=certificate_to_pem(der), reason=RevocationReason.KEY_COMPROMISE)
        )
        with session_scope(platform.sessions) as session:
            queue.enqueue(session, REFRESH_CRLS_TASK, {}, now=platform.clock())
        run_jobs(platform)

    detail = client.get(f"{API}/certificates/{cert_id}", headers=operator).json()
    assert detail["status"] == "revoked" and detail["revoked_at"] is not None
    assert _violations(platform, cert_id) == {"revoked": "high"}
    with platform.sessions() as session:
        crl = session.execute(select(RevocationList).where(RevocationList.url == crl_url)).scalar_one()
    # The issuing CA is in the inventory (recorded with the chain), so the signature was checked.
    assert crl.signature_valid is True and crl.entries == 1 and crl.error is None
    assert crl.next_update is not None and crl.due_at == crl.next_update


class _CrlServer:
    """Serves ``body`` at any path and counts the requests."""

    def __init__(self) -> None:
        self.body = b""
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/pkix-crl")
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/issuing.crl"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_forged_crl_is_refused_and_next_update_is_honoured(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    admin = api_users["admin"].headers
    assert client.put(f"{API}/policies", content=POLICY, headers=admin).status_code == 201
    publisher = _CrlServer()
    try:
        now = platform.clock()
        ca_key, ca_cert = create_ca("CRL Test CA", now=now - timedelta(days=1))
        leaf_key = generate_private_key("EC-P256")
        leaf = sign_csr(
            ca_key,
            ca_cert,
            build_csr(leaf_key, "revoked.example.com", ["revoked.example.com"]),
            valid_days=60,
            crl_urls=[publisher.url],
            now=now,
        )
        for name, cert in (("ca.pem", ca_cert), ("leaf.pem", leaf)):
            pem = cert.public_bytes(Encoding.PEM)
            imported = client.post(
                f"{API}/certificates/import", files=[("files", (name, pem))], headers=admin
            )
            assert imported.status_code in (200, 201), imported.text
        with platform.sessions() as session:
            leaf_id = session.execute(
                select(Certificate.id).where(Certificate.common_name == "revoked.example.com")
            ).scalar_one()
            registered = session.execute(select(RevocationList)).scalar_one()
        assert registered.url == publisher.url and registered.fetched_at is None
        now = platform.clock()  # registered as due at import time

        entry = RevokedEntry(serial=leaf.serial_number, revoked_at=now)
        # Same issuer name, another key: must not revoke anything.
        forger_key, forger_cert = create_ca("CRL Test CA", now=now - timedelta(days=1))
        publisher.body = build_crl(
            [entry],
            issuer_certificate=forger_cert,
            issuer_key=forger_key,
            this_update=now,
            next_update=now + timedelta(hours=6),
            crl_number=1,
        )
        with session_scope(platform.sessions) as session:
            stats, revoked = refresh_due(session, now=now)
        assert (stats.failed, revoked) == (1, [])
        with platform.sessions() as session:
            row = session.execute(select(RevocationList)).scalar_one()
            assert row.error is not None and "not signed" in row.error
            assert row.due_at == now + RETRY_AFTER_FAILURE
            assert session.get(Certificate, leaf_id).revoked_at is None  # type: ignore[union-attr]

        publisher.body = build_crl(
            [entry],
            issuer_certificate=ca_cert,
            issuer_key=ca_key,
            this_update=now,
            next_update=now + timedelta(hours=6),
            crl_number=2,
        )
        later = now + RETRY_AFTER_FAILURE
        with session_scope(platform.sessions) as session:
            stats, revoked = refresh_due(session, now=later)
            evaluate_certificates(session, revoked, now=later)
        assert (stats.fetched, revoked) == (1, [leaf_id])
        assert _violations(platform, leaf_id) == {"revoked": "high"}
        fetches = publisher.requests

        # Before nextUpdate nothing is fetched again.
        with session_scope(platform.sessions) as session:
            stats, revoked = refresh_due(session, now=later + timedelta(hours=1))
        assert (stats.fetched, stats.failed, publisher.requests) == (0, 0, fetches)
        with session_scope(platform.sessions) as session:
            stats, _ = refresh_due(session, now=now + timedelta(hours=7))
        assert stats.fetched == 1 and publisher.requests == fetches + 1
    finally:
        publisher.server.shutdown()
        publisher.server.server_close()
