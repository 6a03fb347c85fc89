"""The ``sectigo`` gateway against a fake SCM REST API over real TLS on loopback, and the fake checked with
Sectigo's own Python client (PyPI ``cert-manager``) so it cannot drift into our own assumptions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from cert_manager import SSL, Client
from cert_manager._helpers import PendingError
from cryptography import x509

from sslclm.connectors.sectigo import SectigoGateway
from sslclm.errors import CARejectedError, CAUnavailableError, ConnectorError, InvalidInputError
from sslclm.pki import load_bundle, load_certificate
from sslclm.spi import (
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
from tests.support.fakes.sectigo import SectigoApp

LOGIN, PASSWORD, CUSTOMER = "api-admin", "Sectigo-pa55", "ExampleOrg"
NAMES = ("mail.example.test", "webmail.example.test")


@pytest.fixture(scope="module")
def fake_ca() -> FakeCA:
    return FakeCA("Fake Sectigo")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return TlsMaterial.create(tmp_path_factory.mktemp("sectigo-tls"), "sectigo")


def _app(fake_ca: FakeCA, **options: Any) -> SectigoApp:
    fake_ca.wrong_key = False
    return SectigoApp(fake_ca, login=LOGIN, password=PASSWORD, customer_uri=CUSTOMER, **options)


@pytest.fixture
def app(fake_ca: FakeCA) -> SectigoApp:
    return _app(fake_ca)


@pytest.fixture
def server(app: SectigoApp, tls: TlsMaterial) -> Iterator[FakeServer]:
    with FakeServer(app, tls) as running:
        yield running


def build(
    server: FakeServer, tls: TlsMaterial, path: Path, *, context: Any = None, **overrides: Any
) -> SectigoGateway:
    config: dict[str, Any] = {
        "api_url": f"{server.base_url}/api",
        "customer_uri": CUSTOMER,
        "login": LOGIN,
        "password": PASSWORD,
        "org_id": 4711,
        "cert_type": "Sectigo OV SSL",
        "ca_bundle": tls.ca_pem,
        "poll_interval_seconds": 0.1,
        "request_timeout_seconds": 5,
        **overrides,
    }
    gateway = ConnectorRegistry.from_entry_points().build_ca_gateway(
        "sectigo", config, context or memory_context(path)
    )
    assert isinstance(gateway, SectigoGateway)
    return gateway


class TestSectigoConformance(CAGatewayConformance):
    @pytest.fixture
    def ca_gateway(self, server: FakeServer, tls: TlsMaterial, tmp_path: Path) -> SectigoGateway:
        return build(server, tls, tmp_path)


class TestSectigoConformanceBeingProcessed(CAGatewayConformance):
    """Every collect answers -183 twice before the certificate is ready."""

    @pytest.fixture
    def ca_gateway(self, fake_ca: FakeCA, tls: TlsMaterial, tmp_path: Path) -> Iterator[SectigoGateway]:
        with FakeServer(_app(fake_ca, processing_polls=2), tls) as running:
            yield build(running, tls, tmp_path, cert_type=None, cert_type_id=227)


def test_being_processed_then_collected_and_a_retry_enrolls_once(
    fake_ca: FakeCA, tls: TlsMaterial, tmp_path: Path
) -> None:
    app = _app(fake_ca)
    app.hold = True
    with FakeServer(app, tls) as server:
        state = MemoryStateStore()
        gateway = build(server, tls, tmp_path, context=memory_context(tmp_path, state=state))
        request, key = new_issue_request(NAMES, idempotency_key="scm-1")
        pending = gateway.issue(request)
        assert pending.status is IssueStatus.PENDING and pending.pending_ref is not None
        assert pending.retry_after is not None and pending.retry_after.total_seconds() == pytest.approx(0.1)
        other_worker = build(server, tls, tmp_path, context=memory_context(tmp_path, state=state))
        assert other_worker.issue(request).pending_ref == pending.pending_ref
        assert len(app.certificates) == 1
        app.approve(int(pending.pending_ref))
        result = other_worker.collect(
            CollectRequest(pending_ref=pending.pending_ref, idempotency_key="scm-1")
        )
        assert_valid_issuance(gateway, request, key, result)
        (row,) = app.certificates.values()
        assert row.term == 365 and row.type_id == 224

        rejected, _ = new_issue_request(NAMES, idempotency_key="scm-2")
        refused = gateway.issue(rejected)
        assert refused.pending_ref is not None
        app.reject(int(refused.pending_ref))
        with pytest.raises(CARejectedError, match="Rejected"):
            gateway.collect(CollectRequest(pending_ref=refused.pending_ref, idempotency_key="scm-2"))


def test_types_and_terms(app: SectigoApp, server: FakeServer, tls: TlsMaterial, tmp_path: Path) -> None:
    checked = build(server, tls, tmp_path).check()
    assert checked.ok and checked.details["types"] == ["Sectigo OV SSL", "Sectigo Private SSL"]
    missing = build(server, tls, tmp_path, cert_type="Gold SSL").check()
    assert not missing.ok and "Gold SSL" in missing.message

    private = build(server, tls, tmp_path, cert_type=None, cert_type_id=227)
    request, _ = new_issue_request(NAMES)
    ninety = IssueRequest(csr_pem=request.csr_pem, names=NAMES, idempotency_key="t90", validity_days=200)
    private.issue(ninety)
    assert [r.term for r in app.certificates.values()] == [90]  # the longest term within 200 days
    too_short = IssueRequest(csr_pem=request.csr_pem, names=NAMES, idempotency_key="t30", validity_days=30)
    with pytest.raises(CARejectedError) as caught:
        private.issue(too_short)
    assert caught.value.field == "validity_days"
    with pytest.raises(InvalidInputError):
        build(server, tls, tmp_path, cert_type=None)  # neither a type name nor an id


def test_wrong_login_and_faults(
    app: SectigoApp, server: FakeServer, tls: TlsMaterial, tmp_path: Path
) -> None:
    wrong = build(server, tls, tmp_path, password="guess")
    checked = wrong.check()
    assert not checked.ok and "HTTP 401" in checked.message and "Invalid login" in checked.message
    assert "guess" not in checked.message and "guess" not in repr(wrong.settings)

    gateway = build(server, tls, tmp_path)
    request, key = new_issue_request(NAMES, idempotency_key="faults")
    app.fail_next("status", status=502, path="/api/ssl/v1/enroll")
    with pytest.raises(CAUnavailableError):
        gateway.issue(request)
    app.fail_next("429", retry_after=1, path="/api/ssl/v1/enroll")
    assert_valid_issuance(gateway, request, key, gateway.issue(request))
    assert len(app.certificates) == 1
    app.fail_next("garbage", path="/api/ssl/v1/types")
    with pytest.raises(ConnectorError) as garbage:
        gateway.issue(new_issue_request(NAMES, idempotency_key="g")[0])
    assert not garbage.value.retryable


def test_a_lost_answer_is_never_enrolled_twice(
    app: SectigoApp, server: FakeServer, tls: TlsMaterial, tmp_path: Path
) -> None:
    gateway = build(server, tls, tmp_path)
    request, _ = new_issue_request(NAMES, idempotency_key="lost")
    app.fail_next("drop", path="/api/ssl/v1/enroll")
    with pytest.raises(ConnectorError):
        gateway.issue(request)
    with pytest.raises(ConnectorError, match="sslclm:"):
        gateway.issue(request)
    assert len(app.certificates) == 1


def test_a_certificate_for_another_key_is_refused(
    fake_ca: FakeCA, server: FakeServer, tls: TlsMaterial, tmp_path: Path
) -> None:
    state = MemoryStateStore()
    gateway = build(server, tls, tmp_path, context=memory_context(tmp_path, state=state))
    fake_ca.wrong_key = True
    with pytest.raises(ConnectorError, match="does not certify"):
        gateway.issue(new_issue_request(NAMES)[0])
    assert state.scan("issued/") == []


def test_revoke_and_list(app: SectigoApp, server: FakeServer, tls: TlsMaterial, tmp_path: Path) -> None:
    gateway = build(server, tls, tmp_path)
    serials = []
    for index in range(3):
        result = issue_and_collect(gateway, new_issue_request(NAMES, idempotency_key=f"l{index}")[0])
        assert result.serial is not None
        serials.append(int(result.serial, 16))
    revoked = gateway.revoke(
        RevokeRequest(serial=f"{serials[1]:x}", reason=RevocationReason.CESSATION_OF_OPERATION)
    )
    assert not revoked.already_revoked
    row = next(
        r for r in app.certificates.values() if r.certificate and r.certificate.serial_number == serials[1]
    )
    assert row.status == "Revoked" and row.revoke_reason.startswith("cessation-of-operation")
    fresh = build(server, tls, tmp_path / "fresh")
    seen: list[int] = []
    cursor = None
    for _ in range(5):
        page = fresh.list_issued(ListIssuedRequest(limit=1, cursor=cursor))
        seen += [int(c.serial, 16) for c in page.certificates]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [serials[0], serials[2]]


def test_sectigos_own_client_against_the_fake(
    app: SectigoApp, server: FakeServer, tls: TlsMaterial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # requests lets these variables override a session's own ``verify``.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    (tmp_path / "ca.pem").write_text(tls.ca_pem)
    session = requests.Session()
    session.verify = str(tmp_path / "ca.pem")
    with session:
        client = Client(
            base_url=f"{server.base_url}/api",
            login_uri=CUSTOMER,
            username=LOGIN,
            password=PASSWORD,
            session=session,
        )
        ssl = SSL(client=client)
        assert set(ssl.types) == {"Sectigo OV SSL", "Sectigo Private SSL"}
        request, _ = new_issue_request(("client.example.test", "alt.example.test"))
        app.hold = True
        enrolled = ssl.enroll(
            cert_type_name="Sectigo OV SSL",
            csr=request.csr_pem.decode(),
            term=365,
            org_id=4711,
            subject_alt_names=["alt.example.test"],
            external_requester="pki@example.test",
        )
        ssl_id = enrolled["sslId"]
        with pytest.raises(PendingError):
            ssl.collect(ssl_id, "x509CO")
        app.approve(ssl_id)
        leaf = load_certificate(ssl.collect(ssl_id, "x509CO").encode())
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sorted(san.get_values_for_type(x509.DNSName)) == ["alt.example.test", "client.example.test"]
        assert len(load_bundle(ssl.collect(ssl_id, "x509").encode()).certificates) == 3
        assert len(load_bundle(ssl.collect(ssl_id, "x509IOR").encode()).certificates) == 2
        details = ssl.get(ssl_id)
        assert details["status"] == "Issued" and int(details["serialNumber"], 16) == leaf.serial_number
        assert [c["sslId"] for c in ssl.list(serialNumber=details["serialNumber"])] == [ssl_id]
        assert ssl.count() == 1
        assert ssl.revoke(ssl_id, reason="key compromised") == {}
        assert ssl.get(ssl_id)["status"] == "Revoked"
        with pytest.raises(requests.HTTPError):
            ssl.revoke(ssl_id, reason="again")
        with pytest.raises(ValueError, match="Incorrect term"):
            ssl.enroll(cert_type_name="Sectigo OV SSL", csr=request.csr_pem.decode(), term=90, org_id=4711)
