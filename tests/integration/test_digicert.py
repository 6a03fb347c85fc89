"""The ``digicert`` gateway against a fake CertCentral Services API v2 served over real TLS on loopback.

DigiCert publishes no Python client for CertCentral (its 2015 ``digicert-client`` on PyPI speaks Python 2
only), so besides the conformance suite a test drives the fake with plain requests the way a documented
integration does (order, poll the order, download ``pem_all``, revoke) to keep the fake honest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sslclm.connectors.digicert import DigiCertGateway
from sslclm.errors import CARejectedError, CAUnavailableError, ConnectorError, InvalidInputError
from sslclm.pki import load_certificate
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
from tests.support.fakes.digicert import DigiCertApp

API_KEY = "D1G1CERT-DEVKEY-0123456789"
NAMES = ("shop.example.test", "www.shop.example.test")


@pytest.fixture(scope="module")
def fake_ca() -> FakeCA:
    return FakeCA("Fake DigiCert")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return TlsMaterial.create(tmp_path_factory.mktemp("digicert-tls"), "digicert")


@pytest.fixture
def app(fake_ca: FakeCA) -> DigiCertApp:
    fake_ca.wrong_key = False
    return DigiCertApp(fake_ca, api_key=API_KEY)


@pytest.fixture
def server(app: DigiCertApp, tls: TlsMaterial) -> Iterator[FakeServer]:
    with FakeServer(app, tls) as running:
        yield running


def build(
    server: FakeServer, tls: TlsMaterial, path: Path, *, context: Any = None, **overrides: Any
) -> DigiCertGateway:
    config: dict[str, Any] = {
        "api_url": f"{server.base_url}/services/v2",
        "api_key": API_KEY,
        "organization_id": 112233,
        "ca_bundle": tls.ca_pem,
        "poll_interval_seconds": 0.1,
        "request_timeout_seconds": 5,
        **overrides,
    }
    gateway = ConnectorRegistry.from_entry_points().build_ca_gateway(
        "digicert", config, context or memory_context(path)
    )
    assert isinstance(gateway, DigiCertGateway)
    return gateway


class TestDigiCertConformance(CAGatewayConformance):
    """Orders CertCentral issues at once (domains and organization already validated)."""

    @pytest.fixture
    def ca_gateway(self, server: FakeServer, tls: TlsMaterial, tmp_path: Path) -> DigiCertGateway:
        return build(server, tls, tmp_path)


class TestDigiCertConformancePendingApproval(CAGatewayConformance):
    """Orders that wait for an approver: every issuance answers pending and is collected later."""

    @pytest.fixture
    def ca_gateway(self, fake_ca: FakeCA, tls: TlsMaterial, tmp_path: Path) -> Iterator[DigiCertGateway]:
        app = DigiCertApp(fake_ca, api_key=API_KEY, approval_required=True, pending_polls=1)
        with FakeServer(app, tls) as running:
            yield build(running, tls, tmp_path, skip_approval=False)


def _request(key: str = "job-1") -> tuple[IssueRequest, Any]:
    return new_issue_request(NAMES, idempotency_key=key)


def test_pending_order_is_collected_after_approval_and_a_retry_never_orders_twice(
    fake_ca: FakeCA, tls: TlsMaterial, tmp_path: Path
) -> None:
    app = DigiCertApp(fake_ca, api_key=API_KEY, approval_required=True)
    with FakeServer(app, tls) as server:
        state = MemoryStateStore()
        gateway = build(
            server, tls, tmp_path, skip_approval=False, context=memory_context(tmp_path, state=state)
        )
        request, key = _request()
        first = gateway.issue(request)
        assert first.status is IssueStatus.PENDING and first.pending_ref is not None
        assert [o.status for o in app.orders.values()] == ["needs_approval"]

        # A retried job (another worker, same state) polls the same order instead of ordering again.
        again = build(
            server, tls, tmp_path, skip_approval=False, context=memory_context(tmp_path, state=state)
        )
        assert again.issue(request).pending_ref == first.pending_ref
        collect = CollectRequest(pending_ref=first.pending_ref, idempotency_key=request.idempotency_key)
        assert again.collect(collect).status is IssueStatus.PENDING
        assert len(app.orders) == 1

        app.approve(int(first.pending_ref))
        issued = gateway.collect(collect)
        assert_valid_issuance(gateway, request, key, issued)
        assert len(app.orders) == 1
        assert gateway.issue(request).certificate_pem == issued.certificate_pem
        with pytest.raises(CARejectedError):
            gateway.collect(CollectRequest(pending_ref=first.pending_ref, idempotency_key="another-job"))


def test_a_rejected_order_fails_with_the_approvers_note(
    fake_ca: FakeCA, tls: TlsMaterial, tmp_path: Path
) -> None:
    app = DigiCertApp(fake_ca, api_key=API_KEY, approval_required=True)
    with FakeServer(app, tls) as server:
        gateway = build(server, tls, tmp_path, skip_approval=False)
        request, _ = _request()
        pending = gateway.issue(request)
        assert pending.pending_ref is not None
        app.reject(int(pending.pending_ref), "Organization validation failed")
        collect = CollectRequest(pending_ref=pending.pending_ref, idempotency_key=request.idempotency_key)
        for _ in range(2):
            with pytest.raises(CARejectedError, match="Organization validation failed") as caught:
                gateway.collect(collect)
            assert not caught.value.retryable
        with pytest.raises(CARejectedError, match="rejected"):
            gateway.issue(request)
        assert len(app.orders) == 1


def test_a_wrong_api_key_is_refused_clearly(server: FakeServer, tls: TlsMaterial, tmp_path: Path) -> None:
    gateway = build(server, tls, tmp_path, api_key="not-the-key")
    checked = gateway.check()
    assert not checked.ok and "HTTP 401" in checked.message and "api_key" in checked.message
    with pytest.raises(CARejectedError) as caught:
        gateway.issue(_request()[0])
    assert not caught.value.retryable
    assert "not-the-key" not in repr(gateway.settings) and "not-the-key" not in caught.value.message


def test_check_reports_the_user_and_never_orders(
    app: DigiCertApp, server: FakeServer, tls: TlsMaterial, tmp_path: Path
) -> None:
    checked = build(server, tls, tmp_path).check()
    assert checked.ok and checked.details["user"] == "api-user"
    assert app.orders == {}


def test_a_server_error_is_retryable_and_the_retry_orders_once(
    app: DigiCertApp, server: FakeServer, tls: TlsMaterial, tmp_path: Path
) -> None:
    gateway = build(server, tls, tmp_path)
    request, key = _request()
    app.fail_next("status", status=503, path="/services/v2/order/certificate/")
    with pytest.raises(CAUnavailableError) as caught:
        gateway.issue(request)
    assert caught.value.retryable and "HTTP 503" in caught.value.message
    assert app.orders == {}
    assert_valid_issuance(gateway, request, key, gateway.issue(request))
    assert len(app.orders) == 1


def test_rate_limits_wait_for_a_short_retry_after_and_report_a_long_one(
    app: DigiCertApp, server: FakeServer, tls: TlsMaterial, tmp_path: Path
) -> None:
    gateway = build(server, tls, tmp_path, max_rate_limit_wait_seconds=2)
    app.fail_next("429", retry_after=1)
    assert gateway.issue(_request("short")[0]).status is IssueStatus.ISSUED
    app.fail_next("429", retry_after=120)
    with pytest.raises(CAUnavailableError) as caught:
        gateway.issue(_request("long")[0])
    assert caught.value.retryable and caught.value.data["retry_after_seconds"] == 120
    assert len(app.orders) == 1


def test_garbage_is_a_connector_error(
    app: DigiCertApp, server: FakeServer, tls: TlsMaterial, tmp_path: Path
) -> None:
    gateway = build(server, tls, tmp_path)
    app.fail_next("garbage", path="/services/v2/user/me")
    checked = gateway.check()
    assert not checked.ok and "instead of the JSON" in checked.message
    app.fail_next("garbage", path="/services/v2/order/certificate/")
    request, _ = _request()
    with pytest.raises(ConnectorError) as caught:
        gateway.issue(request)
    assert not caught.value.retryable


def test_an_order_whose_answer_was_lost_is_never_placed_again(
    app: DigiCertApp, server: FakeServer, tls: TlsMaterial, tmp_path: Path
) -> None:
    gateway = build(server, tls, tmp_path)
    request, _ = _request()
    app.fail_next("drop", path="/services/v2/order/certificate/", method="POST")
    with pytest.raises(ConnectorError):
        gateway.issue(request)
    assert len(app.orders) == 1  # CertCentral did place it
    for _ in range(2):
        with pytest.raises(ConnectorError, match="sslclm:") as again:
            gateway.issue(request)
        assert not again.value.retryable
    assert len(app.orders) == 1
    placed = next(iter(app.orders.values()))
    assert placed.certificate is not None and again.value.data["marker"].startswith("sslclm:")


def test_a_certificate_for_another_key_is_never_recorded(
    fake_ca: FakeCA, server: FakeServer, tls: TlsMaterial, tmp_path: Path
) -> None:
    state = MemoryStateStore()
    gateway = build(server, tls, tmp_path, context=memory_context(tmp_path, state=state))
    fake_ca.wrong_key = True
    request, _ = _request()
    with pytest.raises(ConnectorError, match="does not certify the CSR's key") as caught:
        gateway.issue(request)
    assert not caught.value.retryable
    assert state.scan("issued/") == [] and state.scan("cert/") == []


def test_unreachable_certcentral_is_retryable(tls: TlsMaterial, tmp_path: Path, app: DigiCertApp) -> None:
    with FakeServer(app, tls) as server:
        gateway = build(server, tls, tmp_path)
    assert not gateway.check().ok
    with pytest.raises(CAUnavailableError) as caught:
        gateway.issue(_request()[0])
    assert caught.value.data["request_sent"] is False
    # Nothing reached the CA, so the key is free: nothing is left reserved.
    assert gateway.context.state.scan("order/") == []


def test_bad_profile_options_and_reasons_are_named(
    server: FakeServer, tls: TlsMaterial, tmp_path: Path
) -> None:
    gateway = build(server, tls, tmp_path)
    request, _ = new_issue_request(NAMES)
    odd = IssueRequest(
        csr_pem=request.csr_pem, names=NAMES, idempotency_key="odd", profile={"product": "ssl_plus"}
    )
    with pytest.raises(CARejectedError) as caught:
        gateway.issue(odd)
    assert caught.value.field == "profile.product"
    unknown_product = IssueRequest(
        csr_pem=request.csr_pem, names=NAMES, idempotency_key="p", profile={"product_name_id": "ssl_gold"}
    )
    with pytest.raises(CARejectedError, match="not enabled"):
        gateway.issue(unknown_product)
    issued = gateway.issue(request)
    assert issued.certificate_pem is not None
    with pytest.raises(InvalidInputError) as reason:
        gateway.revoke(
            RevokeRequest(certificate_pem=issued.certificate_pem, reason=RevocationReason.CA_COMPROMISE)
        )
    assert reason.value.field == "reason"


def test_revoke_by_serial_and_list_in_pages(
    app: DigiCertApp, server: FakeServer, tls: TlsMaterial, tmp_path: Path
) -> None:
    gateway = build(server, tls, tmp_path)
    serials = []
    for index in range(3):
        result = issue_and_collect(gateway, new_issue_request(NAMES, idempotency_key=f"k{index}")[0])
        assert result.serial is not None
        serials.append(int(result.serial, 16))
    revoked = gateway.revoke(RevokeRequest(serial=f"{serials[0]:x}", reason=RevocationReason.SUPERSEDED))
    assert int(revoked.serial, 16) == serials[0] and not revoked.already_revoked
    order = next(
        o for o in app.orders.values() if o.certificate and o.certificate.serial_number == serials[0]
    )
    assert order.status == "revoked" and order.revocation["reason"] == "superseded"

    seen: list[int] = []
    cursor = None
    fresh = build(server, tls, tmp_path / "other")  # no local records: every PEM is downloaded
    for _ in range(5):
        page = fresh.list_issued(ListIssuedRequest(limit=1, cursor=cursor))
        seen += [int(c.serial, 16) for c in page.certificates]
        for certificate in page.certificates:
            assert load_certificate(certificate.certificate_pem).serial_number == int(certificate.serial, 16)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == serials[1:]  # the revoked one is no longer an issued order
    with pytest.raises(InvalidInputError):
        fresh.list_issued(ListIssuedRequest(cursor="not-a-cursor"))


def test_the_fake_speaks_the_documented_api(
    server: FakeServer, tls: TlsMaterial, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The calls of a documented CertCentral integration, made with plain requests."""
    # requests lets these variables override a session's own ``verify``.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    bundle = tmp_path / "ca.pem"
    bundle.write_text(tls.ca_pem)
    session = requests.Session()
    session.verify = str(bundle)
    session.headers.update({"X-DC-DEVKEY": API_KEY, "Content-Type": "application/json"})
    base = f"{server.base_url}/services/v2"
    request, _ = new_issue_request(("api.example.test",))
    with session:
        order = {
            "certificate": {
                "common_name": "api.example.test",
                "csr": request.csr_pem.decode(),
                "signature_hash": "sha256",
                "server_platform": {"id": -1},
            },
            "organization": {"id": 112233},
            "validity_years": 1,
        }
        placed = session.post(f"{base}/order/certificate/ssl_plus", json=order)
        assert placed.status_code == 201
        details = session.get(f"{base}/order/certificate/{placed.json()['id']}").json()
        assert details["status"] == "issued"
        certificate_id = details["certificate"]["id"]
        chain = session.get(f"{base}/certificate/{certificate_id}/download/format/pem_all")
        assert chain.text.count("BEGIN CERTIFICATE") == 3
        revoked = session.put(f"{base}/certificate/{certificate_id}/revoke", json={"comments": "test"})
        assert revoked.status_code == 201 and revoked.json()["status"] == "pending"
        denied = requests.get(f"{base}/user/me", headers={"X-DC-DEVKEY": "wrong"}, verify=str(bundle))
        assert denied.status_code == 401 and denied.json()["errors"][0]["code"] == "access_denied"
