"""The ``entrust`` gateway against a fake ECS Enterprise API v2 that demands a TLS client certificate and
HTTP Basic, over real TLS on loopback.

Entrust publishes no Python client on PyPI (its Ansible module builds one at run time from an OpenAPI
document on Entrust's site), so a test drives the fake with plain requests the way that module does.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.serialization import Encoding

from sslclm.connectors.entrust import EntrustGateway
from sslclm.errors import CARejectedError, CAUnavailableError, ConnectorError, InvalidInputError
from sslclm.pki import (
    build_csr,
    certificate_to_pem,
    create_ca,
    generate_private_key,
    private_key_to_pem,
    sign_csr,
)
from sslclm.spi import (
    CertificatePurpose,
    CollectRequest,
    IssueRequest,
    IssueStatus,
    ListIssuedRequest,
    MemoryStateStore,
    RevocationReason,
    RevokeRequest,
)
from sslclm.spi.registry import ConnectorRegistry
from sslclm.spi.testing import (
    CAGatewayConformance,
    assert_valid_issuance,
    issue_and_collect,
    memory_context,
    new_issue_request,
)
from tests.support.fakes.base import FakeCA, FakeServer, TlsMaterial
from tests.support.fakes.entrust import EntrustApp

USER, API_KEY = "ecs-api-user", "s3cr3t-ECS-key"
NAMES = ("portal.example.test", "www.portal.example.test")


@dataclass
class ClientIdentity:
    ca_pem: str
    certificate_pem: str
    certificate_der: bytes
    key_pem: str


def _client_identity(name: str) -> ClientIdentity:
    ca_key, ca_cert = create_ca(f"{name} API Client CA")
    key = generate_private_key("EC-P256")
    certificate = sign_csr(
        ca_key,
        ca_cert,
        build_csr(key, name, [f"{name}.example.test"]),
        valid_days=30,
        extended_key_usage=("clientAuth",),
    )
    return ClientIdentity(
        ca_pem=certificate_to_pem(ca_cert).decode(),
        certificate_pem=certificate_to_pem(certificate).decode(),
        certificate_der=certificate.public_bytes(Encoding.DER),
        key_pem=private_key_to_pem(key).decode(),
    )


@pytest.fixture(scope="module")
def fake_ca() -> FakeCA:
    return FakeCA("Fake Entrust")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return TlsMaterial.create(tmp_path_factory.mktemp("entrust-tls"), "entrust")


@pytest.fixture(scope="module")
def identity() -> ClientIdentity:
    return _client_identity("sslclm-api")


def _app(fake_ca: FakeCA, identity: ClientIdentity, **options: Any) -> EntrustApp:
    fake_ca.wrong_key = False
    return EntrustApp(
        fake_ca, username=USER, api_key=API_KEY, client_certificate_der=identity.certificate_der, **options
    )


@pytest.fixture
def app(fake_ca: FakeCA, identity: ClientIdentity) -> EntrustApp:
    return _app(fake_ca, identity)


@pytest.fixture
def server(app: EntrustApp, tls: TlsMaterial, identity: ClientIdentity) -> Iterator[FakeServer]:
    with FakeServer(app, tls, client_ca_pem=identity.ca_pem) as running:
        yield running


def build(
    server: FakeServer,
    tls: TlsMaterial,
    identity: ClientIdentity,
    path: Path,
    *,
    context: Any = None,
    **overrides: Any,
) -> EntrustGateway:
    config: dict[str, Any] = {
        "api_url": f"{server.base_url}/v2",
        "api_user": USER,
        "api_key": API_KEY,
        "client_certificate": identity.certificate_pem,
        "client_key": identity.key_pem,
        "requester_email": "pki-team@example.test",
        "ca_bundle": tls.ca_pem,
        "poll_interval_seconds": 0.1,
        "request_timeout_seconds": 5,
        **overrides,
    }
    gateway = ConnectorRegistry.from_entry_points().build_ca_gateway(
        "entrust", config, context or memory_context(path)
    )
    assert isinstance(gateway, EntrustGateway)
    return gateway


class TestEntrustConformance(CAGatewayConformance):
    @pytest.fixture
    def ca_gateway(
        self, server: FakeServer, tls: TlsMaterial, identity: ClientIdentity, tmp_path: Path
    ) -> EntrustGateway:
        return build(server, tls, identity, tmp_path)


class TestEntrustConformancePendingApproval(CAGatewayConformance):
    @pytest.fixture
    def ca_gateway(
        self, fake_ca: FakeCA, tls: TlsMaterial, identity: ClientIdentity, tmp_path: Path
    ) -> Iterator[EntrustGateway]:
        app = _app(fake_ca, identity, approval_required=True, pending_polls=1)
        with FakeServer(app, tls, client_ca_pem=identity.ca_pem) as running:
            yield build(running, tls, identity, tmp_path)


def test_approval_flow_and_retries_reuse_the_tracking_id(
    fake_ca: FakeCA, tls: TlsMaterial, identity: ClientIdentity, tmp_path: Path
) -> None:
    app = _app(fake_ca, identity, approval_required=True)
    with FakeServer(app, tls, client_ca_pem=identity.ca_pem) as server:
        state = MemoryStateStore()
        gateway = build(server, tls, identity, tmp_path, context=memory_context(tmp_path, state=state))
        request, key = new_issue_request(NAMES, idempotency_key="job-7")
        pending = gateway.issue(request)
        assert pending.status is IssueStatus.PENDING and pending.pending_ref is not None
        assert gateway.issue(request).pending_ref == pending.pending_ref
        assert len(app.certificates) == 1
        collect = CollectRequest(pending_ref=pending.pending_ref, idempotency_key="job-7")
        assert gateway.collect(collect).status is IssueStatus.PENDING
        app.approve(int(pending.pending_ref))
        assert_valid_issuance(gateway, request, key, gateway.collect(collect))
        assert len(app.certificates) == 1

        declined, _ = new_issue_request(NAMES, idempotency_key="job-8")
        refused = gateway.issue(declined)
        assert refused.pending_ref is not None
        app.decline(int(refused.pending_ref))
        with pytest.raises(CARejectedError, match="DECLINED"):
            gateway.collect(CollectRequest(pending_ref=refused.pending_ref, idempotency_key="job-8"))


def test_the_request_carries_what_ecs_needs(
    app: EntrustApp, server: FakeServer, tls: TlsMaterial, identity: ClientIdentity, tmp_path: Path
) -> None:
    gateway = build(server, tls, identity, tmp_path, cert_type="ADVANTAGE_SSL")
    request, _ = new_issue_request(NAMES, idempotency_key="eku")
    both = IssueRequest(
        csr_pem=request.csr_pem,
        names=NAMES,
        idempotency_key="eku",
        validity_days=90,
        purposes=(CertificatePurpose.SERVER_AUTH, CertificatePurpose.CLIENT_AUTH),
    )
    gateway.issue(both)
    (row,) = app.certificates.values()
    assert row.cert_type == "ADVANTAGE_SSL" and row.names == list(NAMES)


def test_wrong_credentials_are_refused(
    server: FakeServer, tls: TlsMaterial, identity: ClientIdentity, tmp_path: Path
) -> None:
    wrong_key = build(server, tls, identity, tmp_path, api_key="nope")
    checked = wrong_key.check()
    assert not checked.ok and "HTTP 401" in checked.message and "api_key" in checked.message
    with pytest.raises(CARejectedError) as caught:
        wrong_key.issue(new_issue_request(NAMES)[0])
    assert not caught.value.retryable

    stranger = _client_identity("stranger")  # a certificate the ECS listener does not trust
    wrong_certificate = build(server, tls, stranger, tmp_path / "s")
    checked = wrong_certificate.check()
    assert not checked.ok and "TLS" in checked.message


def test_the_client_key_is_written_for_its_owner_only(
    server: FakeServer, tls: TlsMaterial, identity: ClientIdentity, tmp_path: Path
) -> None:
    gateway = build(server, tls, identity, tmp_path)
    assert gateway.check().ok
    (key_file,) = tmp_path.glob("entrust-client-*.key")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert API_KEY not in repr(gateway.settings) and "PRIVATE KEY" not in repr(gateway.settings)


def test_faults_map_to_retryable_and_final_errors(
    app: EntrustApp, server: FakeServer, tls: TlsMaterial, identity: ClientIdentity, tmp_path: Path
) -> None:
    gateway = build(server, tls, identity, tmp_path)
    request, key = new_issue_request(NAMES, idempotency_key="faults")
    app.fail_next("status", status=500, path="/v2/certificates", method="POST")
    with pytest.raises(CAUnavailableError):
        gateway.issue(request)
    app.fail_next("429", retry_after=300)
    with pytest.raises(CAUnavailableError) as limited:
        gateway.issue(request)
    assert limited.value.data["retry_after_seconds"] == 300
    assert app.certificates == {}
    assert_valid_issuance(gateway, request, key, gateway.issue(request))

    app.fail_next("garbage", path="/v2/certificates", method="POST")
    with pytest.raises(ConnectorError) as garbage:
        gateway.issue(new_issue_request(NAMES, idempotency_key="garbage")[0])
    assert not garbage.value.retryable


def test_a_lost_answer_is_not_requested_twice_and_a_wrong_key_is_refused(
    fake_ca: FakeCA,
    app: EntrustApp,
    server: FakeServer,
    tls: TlsMaterial,
    identity: ClientIdentity,
    tmp_path: Path,
) -> None:
    state = MemoryStateStore()
    gateway = build(server, tls, identity, tmp_path, context=memory_context(tmp_path, state=state))
    request, _ = new_issue_request(NAMES, idempotency_key="lost")
    app.fail_next("drop", path="/v2/certificates", method="POST")
    with pytest.raises(ConnectorError):
        gateway.issue(request)
    with pytest.raises(ConnectorError, match="sslclm:") as again:
        gateway.issue(request)
    assert not again.value.retryable and len(app.certificates) == 1

    fake_ca.wrong_key = True
    with pytest.raises(ConnectorError, match="does not certify"):
        gateway.issue(new_issue_request(NAMES, idempotency_key="wrong")[0])
    assert state.scan("issued/") == []


def test_revoke_list_and_reasons(
    app: EntrustApp, server: FakeServer, tls: TlsMaterial, identity: ClientIdentity, tmp_path: Path
) -> None:
    gateway = build(server, tls, identity, tmp_path)
    serials = []
    for index in range(3):
        result = issue_and_collect(gateway, new_issue_request(NAMES, idempotency_key=f"r{index}")[0])
        assert result.serial is not None
        serials.append(int(result.serial, 16))
    with pytest.raises(InvalidInputError):
        gateway.revoke(RevokeRequest(serial=f"{serials[0]:x}", reason=RevocationReason.PRIVILEGE_WITHDRAWN))
    revoked = gateway.revoke(RevokeRequest(serial=f"{serials[0]:x}", reason=RevocationReason.KEY_COMPROMISE))
    assert not revoked.already_revoked
    row = next(
        r for r in app.certificates.values() if r.certificate and r.certificate.serial_number == serials[0]
    )
    assert row.revocation["crlReason"] == "KEY_COMPROMISE"
    assert gateway.revoke(RevokeRequest(serial=f"{serials[0]:x}")).already_revoked

    fresh = build(server, tls, identity, tmp_path / "fresh")
    seen: list[int] = []
    cursor = None
    for _ in range(5):
        page = fresh.list_issued(ListIssuedRequest(limit=2, cursor=cursor))
        seen += [int(c.serial, 16) for c in page.certificates]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == serials[1:]


def test_the_fake_speaks_the_documented_api(
    server: FakeServer,
    tls: TlsMaterial,
    identity: ClientIdentity,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The calls the Ansible ``ecs_certificate`` module makes, with plain requests."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    (tmp_path / "ca.pem").write_text(tls.ca_pem)
    (tmp_path / "client.pem").write_text(identity.certificate_pem)
    (tmp_path / "client.key").write_text(identity.key_pem)
    session = requests.Session()
    session.verify = str(tmp_path / "ca.pem")
    session.cert = (str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
    session.auth = (USER, API_KEY)
    base = f"{server.base_url}/v2"
    request, _ = new_issue_request(("docs.example.test",))
    with session:
        assert session.get(f"{base}/application/version").status_code == 200
        body = {
            "csr": request.csr_pem.decode(),
            "certType": "STANDARD_SSL",
            "clientId": 1,
            "certLifetime": "P1Y",
            "tracking": {
                "requesterName": "Jo Doe",
                "requesterEmail": "jdoe@example.test",
                "requesterPhone": "555",
            },
        }
        created = session.post(f"{base}/certificates", json=body)
        assert created.status_code == 201
        tracking_id = created.json()["trackingId"]
        details = session.get(f"{base}/certificates/{tracking_id}").json()
        assert details["status"] == "ACTIVE" and details["endEntityCert"].startswith("-----BEGIN CERTIFICATE")
        serial = details["serialNumber"]
        listed = session.get(f"{base}/certificates", params={"serialNumber": serial}).json()
        assert [c["trackingId"] for c in listed["certificates"]] == [tracking_id]
        revoked = session.post(
            f"{base}/certificates/{tracking_id}/revocations", json={"crlReason": "SUPERSEDED"}
        )
        assert revoked.status_code == 200
        session.auth = (USER, "wrong")
        refused = session.get(f"{base}/application/version")
        assert refused.status_code == 401 and refused.json()["errors"][0]["message"]
