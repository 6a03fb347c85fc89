"""The ``step-ca`` CA gateway against a real step-ca (built from Debian's Go sources): the SPI
conformance suite, then the provisioner key in its three forms, fingerprint pinning, validity,
revocation, renewal over mutual TLS, refused tokens and an unreachable CA."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from sslclm.connectors.step_ca import StepCaGateway
from sslclm.errors import (
    CARejectedError,
    CAUnavailableError,
    ConnectorError,
    InvalidInputError,
    WrongPasswordError,
)
from sslclm.pki import extract_info, load_certificate, private_key_to_pem, public_key_sha256
from sslclm.spi import (
    Capability,
    ConnectorContext,
    ConnectorKind,
    IssueRequest,
    RevocationReason,
    RevokeRequest,
)
from sslclm.spi.registry import ConnectorRegistry
from sslclm.spi.testing import (
    CAGatewayConformance,
    assert_valid_issuance,
    memory_context,
    new_csr,
    new_issue_request,
)
from tests.support.certs import make_ca, make_leaf
from tests.support.pebble import free_port
from tests.support.step_ca import StepCA, new_provisioner, run_step_ca

# The module's step-ca is built (once, minutes on a cold cache) while its first test sets up; only the
# test functions themselves are held to the usual timeout.
pytestmark = pytest.mark.timeout(300, func_only=True)


@pytest.fixture(scope="module")
def step_ca(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StepCA]:
    with run_step_ca(tmp_path_factory.mktemp("step-ca")) as running:
        yield running


def build(context: ConnectorContext, config: dict[str, Any]) -> StepCaGateway:
    gateway = ConnectorRegistry.from_entry_points().build_ca_gateway("step-ca", config, context)
    assert isinstance(gateway, StepCaGateway)
    return gateway


def gateway_for(step_ca: StepCA, tmp_path: Path, **overrides: Any) -> StepCaGateway:
    return build(memory_context(tmp_path / f"gw-{uuid.uuid4().hex[:8]}"), step_ca.config(**overrides))


def unique(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}.step.test"


class TestStepCaConformance(CAGatewayConformance):
    names = ("conformance.step.test", "www.conformance.step.test", "192.0.2.10")

    @pytest.fixture
    def ca_gateway(self, step_ca: StepCA, tmp_path: Path) -> StepCaGateway:
        return gateway_for(step_ca, tmp_path)


def test_the_entry_point_declares_issue_and_revoke_only() -> None:
    registry = ConnectorRegistry.from_entry_points()
    described = registry.get(ConnectorKind.CA_GATEWAY, "step-ca").describe()
    assert described["capabilities"] == sorted([Capability.ISSUE.value, Capability.REVOKE.value])
    schema = described["config_schema"]
    for secret in ("provisioner_jwk", "provisioner_password"):
        assert json.dumps(schema["properties"][secret]).count('"writeOnly": true') == 1


def test_check_reports_the_ca_and_the_provisioner(step_ca: StepCA, tmp_path: Path) -> None:
    result = gateway_for(step_ca, tmp_path).check()
    assert result.ok, result.message
    assert result.details["health"] == "ok"
    assert result.details["kid"] == step_ca.provisioner.kid
    assert result.details["provisioner_claims"]["maxTLSCertDuration"] == "2160h0m0s"


def test_tokens_carry_the_claims_step_ca_checks(step_ca: StepCA, tmp_path: Path) -> None:
    gateway = gateway_for(step_ca, tmp_path)
    names = ["a.step.test", "10.0.0.1"]
    first = gateway._token("/1.0/sign", "a.step.test", names)
    second = gateway._token("/1.0/sign", "a.step.test", names)
    public = ECKey.import_key(step_ca.provisioner.public_jwk())
    decoded = jwt.decode(first, public, algorithms=["ES256"])
    assert decoded.header == {"alg": "ES256", "kid": step_ca.provisioner.kid, "typ": "JWT"}
    claims = decoded.claims
    assert claims["iss"] == step_ca.provisioner.name
    assert claims["sub"] == "a.step.test"
    assert claims["aud"] == f"{step_ca.url}/1.0/sign"
    assert claims["sans"] == names
    assert claims["nbf"] == claims["iat"]
    assert claims["exp"] - claims["iat"] == 300
    assert claims["jti"] != jwt.decode(second, public, algorithms=["ES256"]).claims["jti"]


@pytest.mark.parametrize("source", ["configured", "fetched from the CA"])
def test_an_encrypted_provisioner_key_opens_with_its_password(
    step_ca: StepCA, tmp_path: Path, source: str
) -> None:
    encrypted = step_ca.provisioner.encrypted_key() if source == "configured" else None
    gateway = gateway_for(
        step_ca,
        tmp_path,
        provisioner_jwk=None,
        provisioner_kid=None,
        provisioner_password=step_ca.provisioner.password,
        provisioner_encrypted_key=encrypted,
    )
    assert gateway.check().ok
    request, key = new_issue_request([unique("encrypted")])
    assert_valid_issuance(gateway, request, key, gateway.issue(request))
    assert gateway.provisioner_key().kid == step_ca.provisioner.kid


def test_a_wrong_provisioner_password_is_reported(step_ca: StepCA, tmp_path: Path) -> None:
    gateway = gateway_for(step_ca, tmp_path, provisioner_jwk=None, provisioner_password="not the password")
    result = gateway.check()
    assert not result.ok
    assert "password" in result.message
    request, _ = new_issue_request([unique("wrong-password")])
    with pytest.raises(WrongPasswordError) as caught:
        gateway.issue(request)
    assert caught.value.field == "provisioner_password"


def test_a_root_pinned_by_fingerprint_is_bootstrapped_once(step_ca: StepCA, tmp_path: Path) -> None:
    context = memory_context(tmp_path / "pinned")
    config = step_ca.config(
        root_pem=None,
        root_fingerprint=":".join(step_ca.root_fingerprint[i : i + 2] for i in range(0, 64, 2)).upper(),
    )
    gateway = build(context, config)
    assert gateway.check().ok
    assert context.state.get("root") == step_ca.root_pem
    request, key = new_issue_request([unique("pinned")])
    result = gateway.issue(request)
    assert_valid_issuance(gateway, request, key, result, trust_anchors=[step_ca.root_pem])
    assert gateway.get_chain().root_pem == step_ca.root_pem


def test_a_root_that_does_not_match_the_pin_is_refused(step_ca: StepCA, tmp_path: Path) -> None:
    wrong = "ab" * 32
    gateway = gateway_for(step_ca, tmp_path, root_pem=None, root_fingerprint=wrong)
    result = gateway.check()
    assert not result.ok
    request, _ = new_issue_request([unique("mispinned")])
    with pytest.raises(CARejectedError):  # step-ca has no root with that fingerprint: 404
        gateway.issue(request)
    other_root = make_ca("Some Other Root").pem.decode()
    gateway = gateway_for(step_ca, tmp_path, root_pem=other_root)
    result = gateway.check()
    assert not result.ok and "TLS" in result.message
    with pytest.raises(CAUnavailableError, match="root_pem"):
        gateway.issue(request)
    combined = gateway_for(
        step_ca, tmp_path, root_pem=step_ca.root_pem.decode() + other_root, root_fingerprint=wrong
    )
    with pytest.raises(ConnectorError, match="fingerprint") as caught:
        combined.issue(request)
    assert caught.value.field == "root_fingerprint"


def test_root_pem_may_name_a_file(step_ca: StepCA, tmp_path: Path) -> None:
    gateway = gateway_for(step_ca, tmp_path, root_pem=str(step_ca.root_path))
    assert gateway.check().ok
    missing = gateway_for(step_ca, tmp_path, root_pem=str(tmp_path / "missing.pem"))
    result = missing.check()
    assert not result.ok and "cannot read root_pem" in result.message


def test_validity_follows_the_request_then_the_config_then_the_provisioner(
    step_ca: StepCA, tmp_path: Path
) -> None:
    def lifetime(gateway: StepCaGateway, days: int | None) -> dt.timedelta:
        csr, _ = new_csr([name := unique("validity")])
        request = IssueRequest(
            csr_pem=csr, names=(name,), validity_days=days, idempotency_key=str(uuid.uuid4())
        )
        result = gateway.issue(request)
        assert result.certificate_pem is not None
        info = extract_info(load_certificate(result.certificate_pem))
        return info.not_after - info.not_before

    plain = gateway_for(step_ca, tmp_path)
    configured = gateway_for(step_ca, tmp_path, default_validity_hours=36)
    backdate = dt.timedelta(minutes=1)  # step-ca backdates notBefore by a minute
    assert lifetime(plain, 2) == dt.timedelta(days=2) + backdate
    assert lifetime(configured, None) == dt.timedelta(hours=36) + backdate
    assert lifetime(plain, None) == dt.timedelta(days=30) + backdate  # defaultTLSCertDuration


def test_a_validity_beyond_the_provisioner_maximum_is_rejected_with_its_message(
    step_ca: StepCA, tmp_path: Path
) -> None:
    csr, _ = new_csr([name := unique("too-long")])
    request = IssueRequest(csr_pem=csr, names=(name,), validity_days=200, idempotency_key=str(uuid.uuid4()))
    with pytest.raises(CARejectedError, match="authorized maximum") as caught:
        gateway_for(step_ca, tmp_path).issue(request)
    assert caught.value.data["http_status_code"] == 403


def test_names_and_common_name_must_match_the_csr(step_ca: StepCA, tmp_path: Path) -> None:
    gateway = gateway_for(step_ca, tmp_path)
    csr, _ = new_csr(["one.step.test"])
    other_names = IssueRequest(csr_pem=csr, names=("two.step.test",), idempotency_key=str(uuid.uuid4()))
    with pytest.raises(CARejectedError, match="the CSR asks for") as caught:
        gateway.issue(other_names)
    assert caught.value.field == "names"
    other_cn = IssueRequest(
        csr_pem=csr, names=("one.step.test",), common_name="else.step.test", idempotency_key=str(uuid.uuid4())
    )
    with pytest.raises(CARejectedError, match="common name") as caught:
        gateway.issue(other_cn)
    assert caught.value.field == "common_name"


def test_a_csr_without_common_name_gets_the_requested_one(step_ca: StepCA, tmp_path: Path) -> None:
    csr, key = new_csr([name := unique("no-cn")], common_name="")
    request = IssueRequest(csr_pem=csr, names=(name,), common_name=name, idempotency_key=str(uuid.uuid4()))
    gateway = gateway_for(step_ca, tmp_path)
    info = assert_valid_issuance(gateway, request, key, gateway.issue(request))
    assert info.common_name == name


def test_an_idempotency_key_reused_with_another_csr_is_rejected(step_ca: StepCA, tmp_path: Path) -> None:
    gateway = gateway_for(step_ca, tmp_path)
    first, _ = new_issue_request([name := unique("reuse")], idempotency_key="same-key")
    gateway.issue(first)
    second, _ = new_issue_request([name], idempotency_key="same-key")
    with pytest.raises(CARejectedError, match="different CSR"):
        gateway.issue(second)


def test_expired_tokens_and_foreign_keys_are_refused(step_ca: StepCA, tmp_path: Path) -> None:
    request, _ = new_issue_request([unique("refused")])
    late = build(
        memory_context(tmp_path / "late", clock=lambda: dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)),
        step_ca.config(),
    )
    with pytest.raises(CARejectedError) as caught:
        late.issue(request)
    assert caught.value.data["http_status_code"] == 401
    assert not caught.value.retryable

    impostor = new_provisioner(step_ca.provisioner.name)
    forged = gateway_for(step_ca, tmp_path, provisioner_jwk=impostor.private_jwk)
    with pytest.raises(CARejectedError) as caught:
        forged.issue(request)
    assert caught.value.data["http_status_code"] == 401
    result = forged.check()
    assert not result.ok and "not the key of provisioner" in result.message

    unknown = gateway_for(step_ca, tmp_path, provisioner="nobody@example.test")
    with pytest.raises(CARejectedError):
        unknown.issue(request)
    result = unknown.check()
    assert not result.ok and "no provisioner named" in result.message


def test_revoke_by_serial_then_again_then_renewal_is_refused(step_ca: StepCA, tmp_path: Path) -> None:
    gateway = gateway_for(step_ca, tmp_path)
    request, key = new_issue_request([unique("revoke")])
    issued = gateway.issue(request)
    assert issued.serial is not None and issued.certificate_pem is not None
    first = gateway.revoke(RevokeRequest(serial=issued.serial, reason=RevocationReason.SUPERSEDED))
    assert first.serial == issued.serial and not first.already_revoked
    again = gateway.revoke(RevokeRequest(certificate_pem=issued.certificate_pem))
    assert again.already_revoked
    # step-ca now refuses to renew it: the revocation is in its database, not just acknowledged.
    with pytest.raises(CARejectedError) as caught:
        gateway.renew(issued.certificate_pem, private_key_to_pem(key))
    assert caught.value.data["http_status_code"] == 401


def test_a_certificate_from_another_connection_of_the_same_ca_can_be_revoked(
    step_ca: StepCA, tmp_path: Path
) -> None:
    request, _ = new_issue_request([unique("elsewhere")])
    issued = gateway_for(step_ca, tmp_path).issue(request)
    assert issued.certificate_pem is not None
    fresh = gateway_for(step_ca, tmp_path)
    with pytest.raises(CARejectedError, match="pass the certificate"):
        fresh.revoke(RevokeRequest(serial=issued.serial))
    # Known by its issuer: step-ca 0.19 publishes no intermediates, so the chain of one issuance
    # through the fresh connection is what lets it recognise its CA.
    other, _ = new_issue_request([unique("warm-up")])
    fresh.issue(other)
    assert not fresh.revoke(RevokeRequest(certificate_pem=issued.certificate_pem)).already_revoked


def test_renewal_over_mutual_tls_keeps_key_and_names(step_ca: StepCA, tmp_path: Path) -> None:
    gateway = gateway_for(step_ca, tmp_path)
    names = [unique("renew"), "192.0.2.44"]
    request, key = new_issue_request(names)
    issued = gateway.issue(request)
    assert issued.certificate_pem is not None
    renewed = gateway.renew(issued.certificate_pem, private_key_to_pem(key), issued.chain_pem)
    assert renewed.serial != issued.serial
    old = extract_info(load_certificate(issued.certificate_pem))
    info = assert_valid_issuance(gateway, request, key, renewed)
    assert info.public_key_sha256 == public_key_sha256(key)
    assert info.not_after >= old.not_after
    assert set(info.sans) == set(old.sans)
    assert renewed.serial is not None
    # The renewed certificate is remembered, so it can be revoked by serial.
    assert not gateway.revoke(RevokeRequest(serial=renewed.serial)).already_revoked


def test_renewal_with_a_foreign_certificate_or_the_wrong_key_is_refused(
    step_ca: StepCA, tmp_path: Path
) -> None:
    gateway = gateway_for(step_ca, tmp_path)
    foreign = make_leaf(make_ca("Not step-ca"), "foreign.step.test")
    with pytest.raises(CARejectedError, match="client certificate"):
        gateway.renew(foreign.pem, foreign.key_pem)
    request, _ = new_issue_request([unique("wrong-key")])
    issued = gateway.issue(request)
    assert issued.certificate_pem is not None
    with pytest.raises(InvalidInputError) as caught:
        gateway.renew(issued.certificate_pem, foreign.key_pem)
    assert caught.value.field == "key_pem"
    assert list((gateway.context.data_dir / "mtls").iterdir()) == []  # no key left on disk


def test_an_unreachable_ca_is_unavailable(step_ca: StepCA, tmp_path: Path) -> None:
    gateway = gateway_for(step_ca, tmp_path, ca_url=f"https://127.0.0.1:{free_port()}")
    result = gateway.check()
    assert not result.ok and "cannot reach" in result.message
    request, _ = new_issue_request([unique("unreachable")])
    with pytest.raises(CAUnavailableError) as caught:
        gateway.issue(request)
    assert caught.value.retryable
    with pytest.raises(CAUnavailableError):
        gateway.get_chain()
