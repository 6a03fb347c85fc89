"""Bad input to the issuance workflow, each ending in a clear state with the reason, retried only when
retrying can help, and leaving no orphaned key and no half-recorded certificate.

(A failed ACME validation and a name the ACME server refuses are in test_workflows_acme, against
Pebble; an unreachable CA's retries are run on a clock the test moves forward.)
"""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from sslclm.core.config import Settings
from sslclm.core.platform import Platform
from sslclm.errors import CARejectedError
from sslclm.inventory.models import Certificate, PrivateKey
from sslclm.jobs.models import Job, JobEvent
from sslclm.jobs.registry import load_task_modules
from sslclm.jobs.worker import Worker
from sslclm.pki import (
    certificate_to_pem,
    create_ca,
    generate_private_key,
    issue_server_certificate,
    private_key_to_pem,
)
from sslclm.spi import IssueRequest
from sslclm.spi.registry import ConnectorRegistry
from sslclm.spi.testing import memory_context, new_csr
from sslclm.workflows.managed import sweep_orphan_keys
from sslclm.workflows.models import Issuance, ManagedCertificate, Profile
from sslclm.workflows.recording import store_key
from tests.conftest import ApiUser
from tests.support.pebble import free_port

API = "/api/v1"


@dataclass
class Clock:
    now: datetime

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime.now(UTC).replace(microsecond=0))


@pytest.fixture
def platform(settings: Settings, clock: Clock) -> Iterator[Platform]:
    """The shared platform fixture, on a clock the tests move (to run retries hours apart at once)."""
    opened = Platform.open(settings, clock=clock)
    yield opened
    opened.close()


def run_jobs(platform: Platform) -> None:
    load_task_modules()
    Worker(platform, concurrency=2, poll_interval=0.05).run_until_idle(timeout=120)


def assert_nothing_half_done(platform: Platform) -> None:
    with platform.sessions() as session:
        orphan_keys = session.execute(
            select(func.count())
            .select_from(PrivateKey)
            .where(
                ~select(Certificate.id)
                .where(Certificate.public_key_sha256 == PrivateKey.public_key_sha256)
                .exists()
            )
        ).scalar_one()
        unlinked = session.execute(
            select(func.count())
            .select_from(Certificate)
            .where(
                Certificate.is_ca.is_(False),
                ~select(Issuance.id).where(Issuance.certificate_id == Certificate.id).exists(),
            )
        ).scalar_one()
    assert (orphan_keys, unlinked) == (0, 0)


def setup_ca(
    client: TestClient, admin: dict[str, str], name: str, type_key: str, config: dict[str, Any]
) -> None:
    made = client.post(
        f"{API}/ca-connections", json={"name": name, "type": type_key, "config": config}, headers=admin
    )
    assert made.status_code == 201, made.text
    profile = client.post(
        f"{API}/profiles",
        json={"name": name, "ca_connection": name, "allowed_names": ["*.example.com"]},
        headers=admin,
    )
    assert profile.status_code == 201, profile.text


def enroll(client: TestClient, operator: dict[str, str], profile: str, name: str) -> dict[str, Any]:
    created = client.post(
        f"{API}/managed-certificates", json={"dns_names": [name], "profile": profile}, headers=operator
    )
    assert created.status_code == 202, created.text
    body: dict[str, Any] = created.json()
    return body


def outcome(
    client: TestClient, headers: dict[str, str], created: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    job = client.get(f"{API}/jobs/{created['job_id']}", headers=headers).json()
    managed = client.get(f"{API}/managed-certificates/{created['id']}", headers=headers).json()
    return job, managed


def test_names_the_profile_forbids(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    admin, operator = api_users["admin"].headers, api_users["operator"].headers
    setup_ca(client, admin, "internal", "local", {})
    refused = client.post(
        f"{API}/managed-certificates",
        json={"dns_names": ["www.example.org"], "profile": "internal"},
        headers=operator,
    )
    assert refused.status_code == 422
    assert refused.json()["field"] == "dns_names" and "www.example.org" in refused.json()["detail"]
    # A request that was allowed when made, but not when its job runs (the profile was narrowed).
    created = enroll(client, operator, "internal", "shop.example.com")
    with platform.sessions() as session:
        session.execute(
            update(Profile).where(Profile.name == "internal").values(allowed_names=["*.corp.example"])
        )
        session.commit()
    run_jobs(platform)
    job, managed = outcome(client, operator, created)
    assert job["status"] == "failed" and job["attempts"] == 1
    assert "does not allow: shop.example.com" in job["last_error"]
    assert managed["status"] == "failed" and "does not allow" in managed["status_message"]
    assert_nothing_half_done(platform)


def _tampered(csr_pem: bytes) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(Encoding.DER))
    der[-3] ^= 0x01  # inside the signature value: the structure still parses, the signature fails
    return x509.load_der_x509_csr(bytes(der)).public_bytes(Encoding.PEM)


@pytest.mark.parametrize(
    ("type_key", "config"),
    [("local", {}), ("acme", {"directory_url": "https://acme.invalid/directory"})],
)
def test_a_csr_whose_signature_does_not_verify(tmp_path: Path, type_key: str, config: dict[str, Any]) -> None:
    gateway = ConnectorRegistry.from_entry_points().build_ca_gateway(
        type_key, config, memory_context(tmp_path)
    )
    csr_pem, _ = new_csr(("tampered.example.com",))
    request = IssueRequest(
        csr_pem=_tampered(csr_pem), idempotency_key="tampered-1", names=("tampered.example.com",)
    )
    with pytest.raises(CARejectedError, match="CSR signature does not verify") as caught:
        gateway.issue(request)
    assert caught.value.field == "csr_pem" and not caught.value.retryable


def test_an_unreachable_ca_is_retried_then_fails_with_the_reason(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, clock: Clock
) -> None:
    admin, operator = api_users["admin"].headers, api_users["operator"].headers
    closed = free_port()  # nothing listens there
    setup_ca(client, admin, "gone", "acme", {"directory_url": f"https://127.0.0.1:{closed}/directory"})
    created = enroll(client, operator, "gone", "www.example.com")
    for _ in range(8):
        run_jobs(platform)
        job, managed = outcome(client, operator, created)
        if job["status"] == "failed":
            break
        assert job["status"] == "queued" and job["step"] == "issue", job
        clock.now += timedelta(hours=2)  # past any backoff delay
    assert job["status"] == "failed", job
    assert job["attempts"] == 5
    assert "ca-unavailable" in job["last_error"] and "cannot reach the ACME server" in job["last_error"]
    with platform.sessions() as session:
        retries = session.execute(
            select(func.count()).where(JobEvent.job_id == job["id"], JobEvent.message.like("%retrying in%"))
        ).scalar_one()
        gave_up = session.execute(
            select(func.count()).where(
                JobEvent.job_id == job["id"], JobEvent.message.like("%gave up after 5%")
            )
        ).scalar_one()
    assert (retries, gave_up) == (4, 1)
    assert managed["status"] == "failed" and "cannot reach" in managed["status_message"]
    assert_nothing_half_done(platform)


GARBAGE = {
    "a web page": ("text/html", b"<html><body>Welcome to nginx!</body></html>", "Content-Type: text/html"),
    "JSON, not a directory": ("application/json", b'{"hello": "world"}', "is not an ACME directory"),
    "truncated JSON": ("application/json", b'{"newNonce": "https://', "fetch directory: Unexpected response"),
}


@pytest.fixture
def garbage_ca(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """An HTTPS server that answers every request with the same ``GARBAGE`` instead of ACME."""
    content_type, body, _ = GARBAGE[request.param]
    ca_key, ca_cert = create_ca("Garbage Test CA")
    key, cert = issue_server_certificate(ca_key, ca_cert, hostnames=["localhost"], ip_addresses=["127.0.0.1"])
    (tmp_path / "cert.pem").write_bytes(certificate_to_pem(cert))
    (tmp_path / "key.pem").write_bytes(private_key_to_pem(key))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_POST = do_GET

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/directory", certificate_to_pem(ca_cert).decode()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.mark.parametrize("garbage_ca", list(GARBAGE), indirect=True)
def test_a_ca_answering_garbage_fails_at_once(
    client: TestClient,
    api_users: dict[str, ApiUser],
    platform: Platform,
    garbage_ca: tuple[str, str],
    request: pytest.FixtureRequest,
) -> None:
    admin, operator = api_users["admin"].headers, api_users["operator"].headers
    url, bundle = garbage_ca
    setup_ca(client, admin, "junk", "acme", {"directory_url": url, "ca_bundle": bundle})
    check = client.post(f"{API}/ca-connections/junk/check", headers=admin).json()
    assert check["ok"] is False
    created = enroll(client, operator, "junk", "www.example.com")
    run_jobs(platform)
    job, managed = outcome(client, operator, created)
    assert job["status"] == "failed" and job["attempts"] == 1, job  # garbage does not improve with time
    expected = GARBAGE[request.node.callspec.params["garbage_ca"]][2]
    assert job["last_error"].startswith("connector: ") and expected in job["last_error"], job
    assert managed["status"] == "failed"
    with platform.sessions() as session:
        assert (
            session.execute(select(func.count()).select_from(Job).where(Job.status == "queued")).scalar_one()
            == 0
        )
    assert_nothing_half_done(platform)


def test_the_key_sweep_deletes_what_ended_jobs_left(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    """A job that ended without running its failure hook (cancelled while it waited for its CA) left
    its key behind; the hourly sweep deletes it, and never a key a certificate uses."""
    admin, operator = api_users["admin"].headers, api_users["operator"].headers
    setup_ca(client, admin, "internal", "local", {})
    issued = enroll(client, operator, "internal", "kept.example.com")
    run_jobs(platform)
    now = platform.clock()
    with platform.sessions() as session:
        kept = session.execute(select(Job).where(Job.id == issued["job_id"])).scalar_one()
        used_key = kept.state["public_key_sha256"]
        store_key(session, platform, generate_private_key("EC-P256"), now)
        left = session.execute(
            select(PrivateKey.public_key_sha256).where(PrivateKey.public_key_sha256 != used_key)
        ).scalar_one()
        for status, fingerprint in (("cancelled", left), ("failed", used_key)):
            session.add(
                Job(
                    kind="certificate.issue",
                    payload={"managed_id": issued["id"]},
                    status=status,
                    step="collect",
                    state={"public_key_sha256": fingerprint},
                    attempts=1,
                    priority=0,
                    cancel_requested=False,
                    created_at=now,
                    updated_at=now,
                    finished_at=now,
                )
            )
        session.commit()
        assert sweep_orphan_keys(session, now=now) == 1
        session.commit()
        remaining = set(session.execute(select(PrivateKey.public_key_sha256)).scalars())
    assert remaining == {used_key}
    assert_nothing_half_done(platform)


def test_a_renewal_queued_before_a_revocation_does_not_undo_it(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    admin, operator = api_users["admin"].headers, api_users["operator"].headers
    setup_ca(client, admin, "internal", "local", {})
    created = enroll(client, operator, "internal", "gone.example.com")
    run_jobs(platform)
    renewal = client.post(f"{API}/managed-certificates/{created['id']}/renew", headers=operator).json()
    with platform.sessions() as session:  # revoked (say, by another node) while the renewal waits
        session.execute(
            update(ManagedCertificate).where(ManagedCertificate.id == created["id"]).values(status="revoked")
        )
        session.commit()
    run_jobs(platform)
    job, managed = outcome(client, operator, {**created, "job_id": renewal["job_id"]})
    assert job["status"] == "failed" and "is revoked" in job["last_error"]
    assert managed["status"] == "revoked" and len(managed["issuances"]) == 1
    assert_nothing_half_done(platform)
