"""The ``acme`` CA gateway against the real Pebble ACME server with real http-01 validation: the SPI
conformance suite, then the platform's responder and a webroot, failed validation, refused names,
revocation with a reason, idempotent and resumed orders, and an unreachable server."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sslclm.connectors.acme import AcmeGateway
from sslclm.connectors.acme.transport import call
from sslclm.errors import CARejectedError, CAUnavailableError, InvalidInputError, NotSupportedError
from sslclm.pki import load_certificate
from sslclm.pki.envelope import Envelope, generate_kek
from sslclm.spi import (
    Capability,
    ConnectorContext,
    ConnectorKind,
    IssueRequest,
    MemoryStateStore,
    RenewalInfoRequest,
    RevocationReason,
    RevokeRequest,
)
from sslclm.spi.registry import ConnectorRegistry, require_capability
from sslclm.spi.testing import (
    CAGatewayConformance,
    assert_valid_issuance,
    memory_context,
    new_csr,
    new_issue_request,
)
from tests.support.pebble import AcmeLab, acme_lab, free_port

BLOCKED = "blocked.acme.test"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AcmeLab]:
    with acme_lab(tmp_path_factory.mktemp("pebble"), blocklist=[BLOCKED]) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh_challenge_server(lab: AcmeLab) -> Iterator[None]:
    lab.challenges.reset()
    yield
    lab.challenges.reset()


def build(context: ConnectorContext, config: dict[str, Any]) -> AcmeGateway:
    gateway = ConnectorRegistry.from_entry_points().build_ca_gateway("acme", config, context)
    assert isinstance(gateway, AcmeGateway)
    return gateway


def responder_gateway(lab: AcmeLab, tmp_path: Path, **overrides: Any) -> AcmeGateway:
    """A gateway whose http-01 answers come from its own responder, served on Pebble's http port."""
    gateway = build(memory_context(tmp_path / "acme"), lab.config(**overrides))
    lab.challenges.lookup = gateway.http01_response
    return gateway


def unique(label: str) -> str:
    # Pebble reuses valid authorizations, so names are fresh per test to make it validate again.
    return f"{label}-{uuid.uuid4().hex[:10]}.acme.test"


def account_orders(gateway: AcmeGateway) -> list[str]:
    """The orders Pebble holds for the gateway's account (RFC 8555 7.1.2.1)."""
    session = gateway.account.session()
    try:
        nonce_url = session.directory["newNonce"]
        assert session.net.account is not None
        account = call(
            "fetch account",
            lambda: session.net.post(session.net.account.uri, None, new_nonce_url=nonce_url).json(),
        )
        listing = call(
            "list orders", lambda: session.net.post(account["orders"], None, new_nonce_url=nonce_url)
        )
        return list(listing.json()["orders"])
    finally:
        session.close()


class TestAcmeConformance(CAGatewayConformance):
    @pytest.fixture
    def ca_gateway(self, lab: AcmeLab, tmp_path: Path) -> AcmeGateway:
        return responder_gateway(lab, tmp_path)

    def test_renewal_info(self, ca_gateway: AcmeGateway, ca_trust_anchors: tuple[bytes, ...]) -> None:
        """Pebble 2.4 has no renewalInfo: the gateway says so instead of inventing a window (the
        window itself is tested against a server that offers ARI in test_acme_ari)."""
        assert Capability.ARI in ca_gateway.capabilities
        request, key = new_issue_request(self.names)
        result, _ = self._issue(ca_gateway, request, ca_trust_anchors, key)
        assert result.certificate_pem is not None
        with pytest.raises(NotSupportedError, match="renewal information"):
            ca_gateway.renewal_info(RenewalInfoRequest(certificate_pem=result.certificate_pem))


def test_issue_through_the_platform_responder(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = responder_gateway(lab, tmp_path)
    names = (unique("www"), unique("api"), "127.0.0.1")
    request, key = new_issue_request(names)
    result = gateway.issue(request)
    info = assert_valid_issuance(gateway, request, key, result, trust_anchors=[lab.pebble.root_pem()])
    assert result.chain_pem, "the chain of the order comes with the certificate"
    # Pebble really fetched the tokens from loopback, and the responder forgot them afterwards.
    assert lab.challenges.fetched
    assert all(gateway.http01_response(token) is None for token in lab.challenges.fetched)
    assert lab.pebble.cert_status(info.serial)["Status"] == "Valid"


def test_issue_through_a_webroot(lab: AcmeLab, tmp_path: Path) -> None:
    webroot = tmp_path / "www"
    tokens = webroot / ".well-known" / "acme-challenge"
    seen: list[str] = []

    def serve(token: str) -> bytes | None:
        path = tokens / token
        if not path.exists():
            return None
        seen.append(token)
        return path.read_bytes()

    lab.challenges.lookup = serve
    gateway = build(
        memory_context(tmp_path / "acme"), lab.config(http01={"mode": "webroot", "webroot": str(webroot)})
    )
    request, key = new_issue_request((unique("static"),))
    result = gateway.issue(request)
    assert_valid_issuance(gateway, request, key, result, trust_anchors=[lab.pebble.root_pem()])
    assert seen, "Pebble read the token file"
    assert list(tokens.iterdir()) == [], "token files are removed after validation"


def test_failed_validation_is_rejected_naming_the_challenge(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = responder_gateway(lab, tmp_path)
    lab.challenges.lookup = lambda token: b"not-the-key-authorization"
    name = unique("wrong")
    request, _ = new_issue_request((name,))
    with pytest.raises(CARejectedError) as caught:
        gateway.issue(request)
    error = caught.value
    assert not error.retryable
    assert f"validation of {name} failed: http-01 challenge" in error.message
    assert "not-the-key-authorization" in error.message  # Pebble's own explanation
    assert error.data["challenge"] == "http-01"
    assert error.data["acme_error"] == "unauthorized"


def test_a_retry_after_failed_validation_places_a_new_order(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = responder_gateway(lab, tmp_path)
    lab.challenges.lookup = lambda token: b"wrong"
    request, key = new_issue_request((unique("again"),))
    with pytest.raises(CARejectedError):
        gateway.issue(request)
    (_, record), *_ = gateway.context.state.scan("order/")
    failed = json.loads(record)["url"]
    assert _order_status(gateway, failed) == "invalid"
    lab.challenges.lookup = gateway.http01_response  # the operator fixed the web server
    result = gateway.issue(request)
    assert_valid_issuance(gateway, request, key, result, trust_anchors=[lab.pebble.root_pem()])
    # Pebble lists only the usable orders: the new, valid one.
    assert [url for url in account_orders(gateway) if url != failed] == account_orders(gateway)
    assert [_order_status(gateway, url) for url in account_orders(gateway)] == ["valid"]


def _order_status(gateway: AcmeGateway, url: str) -> str:
    session = gateway.account.session()
    try:
        return str(session.get_order(url).status.name)
    finally:
        session.close()


def test_a_name_the_ca_refuses_is_rejected(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = responder_gateway(lab, tmp_path)
    request, _ = new_issue_request((BLOCKED,))
    with pytest.raises(CARejectedError, match="forbidden by policy") as caught:
        gateway.issue(request)
    assert caught.value.data["acme_error"] == "rejectedIdentifier"


def test_a_wildcard_cannot_use_http01(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = responder_gateway(lab, tmp_path)
    base = unique("wild")
    request, _ = new_issue_request((f"*.{base}",))
    with pytest.raises(CARejectedError, match=r"no http-01 challenge .* wildcard names need dns-01"):
        gateway.issue(request)


def test_csr_names_must_match_the_request(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = responder_gateway(lab, tmp_path)
    csr, _ = new_csr((unique("one"),))
    request = IssueRequest(csr_pem=csr, names=(unique("other"),), idempotency_key="mismatch")
    with pytest.raises(CARejectedError, match="the CSR asks for") as caught:
        gateway.issue(request)
    assert caught.value.field == "names"


def test_same_key_gives_the_same_certificate_from_one_order(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = responder_gateway(lab, tmp_path)
    request, _ = new_issue_request((unique("once"),))
    first = gateway.issue(request)
    second = gateway.issue(request)
    assert first == second
    assert len(account_orders(gateway)) == 1
    other_csr, _ = new_csr(request.names)
    reuse = IssueRequest(csr_pem=other_csr, names=request.names, idempotency_key=request.idempotency_key)
    with pytest.raises(CARejectedError, match="already used for a different CSR"):
        gateway.issue(reuse)


def test_a_retry_resumes_the_order_an_interrupted_attempt_placed(lab: AcmeLab, tmp_path: Path) -> None:
    """The first worker gives up while Pebble is still validating (the web server answers slowly); a
    second worker with the same state resumes that order rather than placing another."""
    state, envelope = MemoryStateStore(), Envelope(generate_kek())

    def worker(timeout: float) -> AcmeGateway:
        context = memory_context(tmp_path / "acme", state=state, envelope=envelope)
        return build(context, lab.config(order_timeout_seconds=timeout))

    impatient, patient = worker(1.0), worker(60.0)
    lab.challenges.lookup = impatient.http01_response
    lab.challenges.delay = 3.0
    request, key = new_issue_request((unique("resume"),))
    with pytest.raises(CAUnavailableError, match="a retry resumes it") as caught:
        impatient.issue(request)
    assert caught.value.retryable
    result = patient.issue(request)
    assert_valid_issuance(patient, request, key, result, trust_anchors=[lab.pebble.root_pem()])
    assert len(account_orders(patient)) == 1


def test_concurrent_issuance_with_distinct_keys(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = responder_gateway(lab, tmp_path)
    requests = [new_issue_request((unique(f"par{i}"),)) for i in range(3)]
    serials: list[str] = []
    errors: list[BaseException] = []

    def run(request: IssueRequest) -> None:
        try:
            serials.append(str(gateway.issue(request).serial))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(request,)) for request, _ in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert len(set(serials)) == 3


@pytest.mark.parametrize(
    ("reason", "by_serial"),
    [(RevocationReason.KEY_COMPROMISE, False), (RevocationReason.SUPERSEDED, True)],
)
def test_revoke_with_a_reason(
    lab: AcmeLab, tmp_path: Path, reason: RevocationReason, by_serial: bool
) -> None:
    gateway = responder_gateway(lab, tmp_path)
    request, _ = new_issue_request((unique("revoke"),))
    issued = gateway.issue(request)
    assert issued.certificate_pem is not None and issued.serial is not None
    revoke = (
        RevokeRequest(serial=issued.serial, reason=reason)
        if by_serial
        else RevokeRequest(certificate_pem=issued.certificate_pem, reason=reason)
    )
    result = gateway.revoke(revoke)
    assert result.serial == issued.serial and not result.already_revoked
    status = lab.pebble.cert_status(issued.serial)
    assert status["Status"] == "Revoked"
    assert status["Reason"] == reason.code
    assert gateway.revoke(revoke).already_revoked


def test_revoking_an_unknown_serial_is_rejected(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = responder_gateway(lab, tmp_path)
    with pytest.raises(CARejectedError, match="no certificate with serial abc123"):
        gateway.revoke(RevokeRequest(serial="ABC123"))


def test_get_chain_from_the_management_api_and_from_the_last_order(lab: AcmeLab, tmp_path: Path) -> None:
    managed = responder_gateway(lab, tmp_path)
    chain = managed.get_chain()
    assert chain.root_pem is not None
    assert load_certificate(chain.root_pem).subject == load_certificate(lab.pebble.root_pem()).subject

    plain = build(memory_context(tmp_path / "plain"), lab.config(management_url=None))
    lab.challenges.lookup = plain.http01_response
    assert plain.get_chain().chain_pem == ()
    request, _ = new_issue_request((unique("chain"),))
    issued = plain.issue(request)
    assert plain.get_chain().chain_pem == issued.chain_pem
    issuer = load_certificate(issued.chain_pem[0]).subject
    assert issuer == load_certificate(chain.chain_pem[0]).subject


def test_check_reports_the_directory_and_the_account(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = responder_gateway(lab, tmp_path)
    before = gateway.check()
    assert before.ok and "registered on first use" in before.message
    assert before.details["terms_of_service"]
    assert before.details["renewal_info"] is False
    gateway.issue(new_issue_request((unique("check"),))[0])
    after = gateway.check()
    assert after.ok and after.details["account_status"] == "valid", after.message


def test_terms_of_service_must_be_agreed(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = responder_gateway(lab, tmp_path, terms_of_service_agreed=False)
    assert not gateway.check().ok
    with pytest.raises(CARejectedError, match="terms of service") as caught:
        gateway.issue(new_issue_request((unique("tos"),))[0])
    assert caught.value.field == "terms_of_service_agreed"


def test_an_unreachable_server_is_unavailable(lab: AcmeLab, tmp_path: Path) -> None:
    config = lab.config(directory_url=f"https://127.0.0.1:{free_port()}/dir", request_timeout_seconds=3)
    gateway = build(memory_context(tmp_path / "acme"), config)
    with pytest.raises(CAUnavailableError, match="cannot reach the ACME server") as caught:
        gateway.issue(new_issue_request((unique("down"),))[0])
    assert caught.value.retryable
    result = gateway.check()
    assert not result.ok and "cannot reach" in result.message


def test_an_untrusted_server_certificate_is_reported(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = build(memory_context(tmp_path / "acme"), lab.config(ca_bundle=None))
    with pytest.raises(CAUnavailableError, match="check ca_bundle"):
        gateway.issue(new_issue_request((unique("tls"),))[0])


def test_ca_bundle_as_pem_text(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = responder_gateway(lab, tmp_path, ca_bundle=lab.pebble.ca_bundle.read_text())
    assert gateway.check().ok


def test_the_account_key_is_sealed_and_reused(lab: AcmeLab, tmp_path: Path) -> None:
    state, envelope = MemoryStateStore(), Envelope(generate_kek())
    context = memory_context(tmp_path / "acme", state=state, envelope=envelope)
    gateway = build(context, lab.config())
    lab.challenges.lookup = gateway.http01_response
    gateway.issue(new_issue_request((unique("key"),))[0])
    sealed = state.get("account/key")
    assert sealed is not None and b"PRIVATE" not in sealed
    again = build(memory_context(tmp_path / "acme", state=state, envelope=envelope), lab.config())
    assert again.check().details["account_status"] == "valid"
    assert len(account_orders(again)) == 1, "the second instance uses the same account"


def test_an_account_the_server_forgot_is_registered_again(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = responder_gateway(lab, tmp_path)
    gateway.issue(new_issue_request((unique("first"),))[0])
    (url_key, url), *_ = gateway.context.state.scan("account/url/")
    # As after a server reset: the stored account URL names no account any more.
    gateway.context.state.put(url_key, url.rsplit(b"/", 1)[0] + b"/0000000000000000")
    request, key = new_issue_request((unique("again"),))
    result = gateway.issue(request)
    assert_valid_issuance(gateway, request, key, result, trust_anchors=[lab.pebble.root_pem()])
    assert gateway.context.state.get(url_key) == url, "the key's existing account was found again"


def test_undeclared_capabilities_are_refused(lab: AcmeLab, tmp_path: Path) -> None:
    gateway = responder_gateway(lab, tmp_path)
    with pytest.raises(NotSupportedError):
        require_capability(gateway, Capability.LIST)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"directory_url": "http://acme.example/dir"}, "config.directory_url"),
        ({"contact_emails": ["not-an-email"]}, "config.contact_emails"),
        ({"eab_kid": "kid-1"}, "config"),
        ({"eab_kid": "kid-1", "eab_hmac_key": "!!!"}, "config.eab_hmac_key"),
        ({"challenge": "dns-01"}, "config"),
        ({"http01": {"mode": "webroot"}}, "config.http01"),
        ({"http01": {"mode": "webroot", "webroot": "relative/dir"}}, "config.http01.webroot"),
        ({"ca_bundle": "relative.pem"}, "config.ca_bundle"),
        ({"dns01": {"provider": {"kind": "carrier-pigeon"}}}, "config.dns01.provider"),
        (
            {
                "dns01": {
                    "provider": {
                        "kind": "rfc2136",
                        "server": "ns",
                        "zone": "example.com",
                        "tsig_key_name": "k",
                        "tsig_secret": "%%%",
                    }
                }
            },
            "config.dns01.provider.rfc2136.tsig_secret",
        ),
        ({"dns01": {"provider": {"kind": "hook", "command": []}}}, "config.dns01.provider.hook.command"),
        ({"surprise": 1}, "config.surprise"),
    ],
)
def test_bad_config_names_the_field(config: dict[str, Any], field: str) -> None:
    full = {"directory_url": "https://acme.example/dir", **config}
    with pytest.raises(InvalidInputError) as caught:
        ConnectorRegistry.from_entry_points().validate_config(ConnectorKind.CA_GATEWAY, "acme", full)
    assert caught.value.field == field, caught.value.message
    assert "%%%" not in caught.value.message


def test_secrets_stay_out_of_the_config_repr() -> None:
    model = ConnectorRegistry.from_entry_points().validate_config(
        ConnectorKind.CA_GATEWAY,
        "acme",
        {"directory_url": "https://acme.example/dir", "eab_kid": "kid", "eab_hmac_key": "c2VjcmV0"},
    )
    assert "c2VjcmV0" not in repr(model)
    schema = type(model).model_json_schema()
    assert "eab_hmac_key" in schema["properties"]
