"""The ``adcs`` gateway against a fake AD CS Web Enrollment site over real TLS on loopback, with Basic and
NTLM authentication, and the fake checked with the ``certsrv`` client (PyPI) so it cannot drift into our
own assumptions about the pages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import certsrv
import pytest

from sslclm.connectors.adcs import AdcsGateway
from sslclm.errors import (
    CARejectedError,
    CAUnavailableError,
    ConnectorError,
    InvalidInputError,
    NotSupportedError,
)
from sslclm.pki import load_bundle, load_certificate
from sslclm.spi import Capability, CollectRequest, IssueRequest, IssueStatus, MemoryStateStore, RevokeRequest
from sslclm.spi.registry import ConnectorRegistry
from sslclm.spi.testing import CAGatewayConformance, assert_valid_issuance, memory_context, new_issue_request
from tests.support.fakes.adcs import AdcsApp
from tests.support.fakes.base import FakeCA, FakeServer, TlsMaterial

USER, PASSWORD = "svc-sslclm", "Enr0ll-me!"
NAMES = ("intranet.corp.example.test", "wiki.corp.example.test")


@pytest.fixture(scope="module")
def fake_ca() -> FakeCA:
    return FakeCA("Fake Corp")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return TlsMaterial.create(tmp_path_factory.mktemp("adcs-tls"), "adcs")


def _app(fake_ca: FakeCA, **options: Any) -> AdcsApp:
    fake_ca.wrong_key = False
    return AdcsApp(fake_ca, username=USER, password=PASSWORD, **options)


@pytest.fixture
def app(fake_ca: FakeCA) -> AdcsApp:
    return _app(fake_ca)


@pytest.fixture
def server(app: AdcsApp, tls: TlsMaterial) -> Iterator[FakeServer]:
    with FakeServer(app, tls) as running:
        yield running


def build(
    server: FakeServer, tls: TlsMaterial, path: Path, *, context: Any = None, **overrides: Any
) -> AdcsGateway:
    config: dict[str, Any] = {
        "url": f"{server.base_url}/certsrv",
        "template": "WebServer",
        "username": USER,
        "password": PASSWORD,
        "auth": "basic",
        "ca_bundle": tls.ca_pem,
        "poll_interval_seconds": 0.1,
        "request_timeout_seconds": 5,
        **overrides,
    }
    gateway = ConnectorRegistry.from_entry_points().build_ca_gateway(
        "adcs", config, context or memory_context(path)
    )
    assert isinstance(gateway, AdcsGateway)
    return gateway


class TestAdcsConformance(CAGatewayConformance):
    @pytest.fixture
    def ca_gateway(self, server: FakeServer, tls: TlsMaterial, tmp_path: Path) -> AdcsGateway:
        return build(server, tls, tmp_path)


class TestAdcsConformanceCaManagerApproval(CAGatewayConformance):
    """A template that requires CA certificate manager approval: every request is pending first."""

    @pytest.fixture
    def ca_gateway(self, fake_ca: FakeCA, tls: TlsMaterial, tmp_path: Path) -> Iterator[AdcsGateway]:
        with FakeServer(_app(fake_ca, pending_polls=1), tls) as running:
            yield build(running, tls, tmp_path, template="WebServerApproval")


def test_pending_request_is_collected_by_request_id(
    fake_ca: FakeCA, tls: TlsMaterial, tmp_path: Path
) -> None:
    app = _app(fake_ca)
    with FakeServer(app, tls) as server:
        state = MemoryStateStore()
        gateway = build(
            server, tls, tmp_path, template="WebServerApproval", context=memory_context(tmp_path, state=state)
        )
        request, key = new_issue_request(NAMES, idempotency_key="adcs-1")
        pending = gateway.issue(request)
        assert pending.status is IssueStatus.PENDING and pending.pending_ref is not None
        request_id = int(pending.pending_ref)
        assert app.database[request_id].status == "pending"
        assert "SslClmRequest" not in app.database[request_id].template
        other = build(
            server, tls, tmp_path, template="WebServerApproval", context=memory_context(tmp_path, state=state)
        )
        assert other.issue(request).pending_ref == pending.pending_ref
        collect = CollectRequest(pending_ref=pending.pending_ref, idempotency_key="adcs-1")
        assert other.collect(collect).status is IssueStatus.PENDING
        assert len(app.database) == 1
        app.approve(request_id)
        assert_valid_issuance(gateway, request, key, other.collect(collect))

        denied, _ = new_issue_request(NAMES, idempotency_key="adcs-2")
        refused = gateway.issue(denied)
        assert refused.pending_ref is not None
        app.deny(int(refused.pending_ref), "Denied by Officer")
        with pytest.raises(CARejectedError, match="Denied by Officer"):
            gateway.collect(CollectRequest(pending_ref=refused.pending_ref, idempotency_key="adcs-2"))


def test_denied_requests_carry_the_disposition_message(
    app: AdcsApp, server: FakeServer, tls: TlsMaterial, tmp_path: Path
) -> None:
    gateway = build(server, tls, tmp_path, template="NoSuchTemplate")
    with pytest.raises(CARejectedError, match="template is not supported by this CA") as caught:
        gateway.issue(new_issue_request(NAMES)[0])
    assert not caught.value.retryable
    request, _ = new_issue_request(NAMES)
    with pytest.raises(CARejectedError) as option:
        build(server, tls, tmp_path).issue(
            IssueRequest(csr_pem=request.csr_pem, names=NAMES, idempotency_key="o", profile={"template": "X"})
        )
    assert option.value.field == "profile.template"


def test_no_revocation_and_no_listing(server: FakeServer, tls: TlsMaterial, tmp_path: Path) -> None:
    gateway = build(server, tls, tmp_path)
    assert gateway.capabilities == {Capability.ISSUE, Capability.ASYNC_ISSUE}
    with pytest.raises(NotSupportedError):
        gateway.revoke(RevokeRequest(serial="01"))


def test_wrong_password_unreachable_and_garbage(
    app: AdcsApp, server: FakeServer, tls: TlsMaterial, tmp_path: Path
) -> None:
    wrong = build(server, tls, tmp_path, password="guess")
    checked = wrong.check()
    assert not checked.ok and "HTTP 401" in checked.message and "password" in checked.message
    with pytest.raises(CARejectedError):
        wrong.issue(new_issue_request(NAMES)[0])

    gateway = build(server, tls, tmp_path)
    checked = gateway.check()
    assert checked.ok and checked.details["ca"] == "CN=Fake Corp Issuing CA"
    app.fail_next("status", status=503, path="/certsrv/certfnsh.asp")
    request, key = new_issue_request(NAMES, idempotency_key="g")
    with pytest.raises(CAUnavailableError):
        gateway.issue(request)
    assert app.database == {}
    assert_valid_issuance(gateway, request, key, gateway.issue(request))
    app.fail_next("garbage", path="/certsrv/certfnsh.asp")
    lost, _ = new_issue_request(NAMES, idempotency_key="h")
    with pytest.raises(ConnectorError, match="not an AD CS Web Enrollment page") as garbage:
        gateway.issue(lost)
    assert not garbage.value.retryable
    with pytest.raises(ConnectorError, match="sslclm:"):
        gateway.issue(lost)


def test_unreachable_site(app: AdcsApp, tls: TlsMaterial, tmp_path: Path) -> None:
    with FakeServer(app, tls) as server:
        gateway = build(server, tls, tmp_path)
    assert not gateway.check().ok
    with pytest.raises(CAUnavailableError):
        gateway.issue(new_issue_request(NAMES)[0])


def test_a_certificate_for_another_key_is_refused(
    fake_ca: FakeCA, server: FakeServer, tls: TlsMaterial, tmp_path: Path
) -> None:
    state = MemoryStateStore()
    gateway = build(server, tls, tmp_path, context=memory_context(tmp_path, state=state))
    fake_ca.wrong_key = True
    with pytest.raises(ConnectorError, match="does not certify"):
        gateway.issue(new_issue_request(NAMES)[0])
    assert state.scan("issued/") == []


@pytest.fixture
def ntlm_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    users = tmp_path / "ntlm-users"
    users.write_text(f"CORP:{USER}:{PASSWORD}\n")
    monkeypatch.setenv("NTLM_USER_FILE", str(users))


def test_ntlm_authentication(ntlm_users: None, fake_ca: FakeCA, tls: TlsMaterial, tmp_path: Path) -> None:
    app = _app(fake_ca, ntlm=True)
    with FakeServer(app, tls) as server:
        gateway = build(server, tls, tmp_path, auth="ntlm", username=f"CORP\\{USER}")
        assert gateway.check().ok
        request, key = new_issue_request(NAMES)
        assert_valid_issuance(gateway, request, key, gateway.issue(request))
        wrong = build(server, tls, tmp_path, auth="ntlm", username=f"CORP\\{USER}", password="guess")
        checked = wrong.check()
        assert not checked.ok and "HTTP 401" in checked.message


def test_the_certsrv_client_against_the_fake(
    ntlm_users: None, fake_ca: FakeCA, tls: TlsMaterial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # requests lets these variables override the client's own ``cafile``.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    cafile = tmp_path / "ca.pem"
    cafile.write_text(tls.ca_pem)
    app = _app(fake_ca, ntlm=True)
    with FakeServer(app, tls) as server:
        host = f"127.0.0.1:{server.port}"
        client = certsrv.Certsrv(host, USER, PASSWORD, cafile=str(cafile))
        assert client.check_credentials()
        assert not certsrv.Certsrv(host, USER, "guess", cafile=str(cafile)).check_credentials()
        request, _ = new_issue_request(("client.corp.example.test",))
        issued = load_certificate(client.get_cert(request.csr_pem.decode(), "WebServer"))
        assert issued.issuer == fake_ca.issuing.subject
        with pytest.raises(certsrv.CertificatePendingException) as pending:
            client.get_cert(request.csr_pem.decode(), "WebServerApproval")
        request_id = int(pending.value.req_id)
        with pytest.raises(certsrv.CouldNotRetrieveCertificateException, match="Taken Under Submission"):
            client.get_existing_cert(request_id)
        app.approve(request_id)
        assert load_certificate(client.get_existing_cert(request_id, encoding="bin")).serial_number
        with pytest.raises(certsrv.RequestDeniedException, match="not supported by this CA"):
            client.get_cert(request.csr_pem.decode(), "NoSuchTemplate")
        with pytest.raises(certsrv.RequestDeniedException, match="Error Parsing Request"):
            client.get_cert(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----", "WebServer"
            )
        assert load_certificate(client.get_ca_cert()).subject == fake_ca.issuing.subject
        chain = load_bundle(client.get_chain()).certificates
        assert {c.subject for c in chain} == {fake_ca.issuing.subject, fake_ca.root.subject}

        ntlm_client = certsrv.Certsrv(host, f"CORP\\{USER}", PASSWORD, auth_method="ntlm", cafile=str(cafile))
        assert ntlm_client.check_credentials()
        assert load_certificate(ntlm_client.get_cert(request.csr_pem.decode(), "WebServer")).serial_number
    with pytest.raises(InvalidInputError):
        build(server, tls, tmp_path, url="http://plain.example.test/certsrv")
