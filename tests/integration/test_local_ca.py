"""The built-in ``local`` CA gateway: the SPI conformance suite, then what is particular to it —
the hierarchy created once and sealed with the real envelope, profile options, CRLs, listing."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

from sslclm.connectors.local_ca import LocalCAConfig, LocalCAGateway
from sslclm.errors import CARejectedError, ConnectorError, InvalidInputError
from sslclm.pki.ca_tools import read_crl
from sslclm.pki.envelope import Envelope, generate_kek
from sslclm.spi import (
    CertificatePurpose,
    ConnectorContext,
    IssueRequest,
    ListIssuedRequest,
    MemoryStateStore,
    RevocationReason,
    RevokeRequest,
)
from sslclm.spi.registry import ConnectorRegistry
from sslclm.spi.testing import CAGatewayConformance, memory_context, new_csr, new_issue_request

CRL_URL = "http://127.0.0.1:8443/api/v1/ca/conn-1/crl"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _gateway(context: ConnectorContext, **config: Any) -> LocalCAGateway:
    gateway = ConnectorRegistry.from_entry_points().build_ca_gateway("local", config, context)
    assert isinstance(gateway, LocalCAGateway)
    return gateway


class TestLocalCAConformance(CAGatewayConformance):
    @pytest.fixture
    def ca_gateway(self, tmp_path: Path) -> LocalCAGateway:
        return _gateway(memory_context(tmp_path, connection_id="conn-1"), crl_url=CRL_URL)


class TestLocalCAConformanceRSA(CAGatewayConformance):
    names = ("rsa.example.test", "192.0.2.10")

    @pytest.fixture
    def ca_gateway(self, tmp_path: Path) -> LocalCAGateway:
        return _gateway(memory_context(tmp_path), key_type="RSA-2048")


def _certificate(pem: bytes | None) -> x509.Certificate:
    assert pem is not None
    return x509.load_pem_x509_certificate(pem)


def test_hierarchy_is_created_once_and_sealed(tmp_path: Path) -> None:
    envelope = Envelope(generate_kek())
    state = MemoryStateStore()
    first = _gateway(memory_context(tmp_path, envelope=envelope, state=state))
    assert first.check().message == "the root and issuing CA will be created on first use"
    assert state.get("ca") is None  # check creates nothing
    chain = first.get_chain()
    root = _certificate(chain.root_pem)
    issuing = _certificate(chain.chain_pem[0])
    assert issuing.issuer == root.subject
    assert root.subject.rfc4514_string() == "CN=SSL-CLM Local Root CA"
    assert issuing.subject.rfc4514_string() == "CN=SSL-CLM Local Issuing CA"
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
    assert issuing.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert root.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]

    stored = json.loads(state.get("ca") or b"")
    assert b"PRIVATE KEY" not in (state.get("ca") or b"")
    assert stored["root_key"] and stored["issuing_key"]

    # Another instance (another worker) over the same state sees the same CA.
    again = _gateway(memory_context(tmp_path, envelope=envelope, state=state))
    assert again.get_chain() == chain
    checked = again.check()
    assert checked.ok and checked.details["issuing_subject"] == "CN=SSL-CLM Local Issuing CA"


def test_another_master_key_cannot_use_the_ca(tmp_path: Path) -> None:
    state = MemoryStateStore()
    _gateway(memory_context(tmp_path, state=state)).get_chain()
    stranger = _gateway(memory_context(tmp_path, state=state))  # a fresh, different master key
    checked = stranger.check()
    assert not checked.ok and "cannot be decrypted" in checked.message
    request, _ = new_issue_request(("a.example.test",))
    with pytest.raises(ConnectorError) as caught:
        stranger.issue(request)
    assert not caught.value.retryable


def test_concurrent_first_use_creates_a_single_hierarchy(tmp_path: Path) -> None:
    envelope = Envelope(generate_kek())
    state = MemoryStateStore()
    gateways = [_gateway(memory_context(tmp_path, envelope=envelope, state=state)) for _ in range(6)]
    roots: list[bytes | None] = []
    barrier = threading.Barrier(len(gateways))

    def first_use(gateway: LocalCAGateway) -> None:
        barrier.wait()
        roots.append(gateway.get_chain().root_pem)

    threads = [threading.Thread(target=first_use, args=(g,)) for g in gateways]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(roots) == 6 and len(set(roots)) == 1


def test_rsa_hierarchy_when_configured(tmp_path: Path) -> None:
    gateway = _gateway(memory_context(tmp_path), key_type="RSA-3072", name="Acme Lab")
    root = _certificate(gateway.get_chain().root_pem)
    assert root.public_key().key_size == 3072  # type: ignore[union-attr]
    assert root.subject.rfc4514_string() == "CN=Acme Lab Root CA"


def test_issued_certificate_follows_the_request(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    gateway = _gateway(memory_context(tmp_path, clock=clock), crl_url=CRL_URL)
    csr_pem, _ = new_csr(("svc.example.test",))
    result = gateway.issue(
        IssueRequest(
            csr_pem=csr_pem,
            names=("svc.example.test",),
            idempotency_key="profile-1",
            validity_days=30,
            purposes=(CertificatePurpose.SERVER_AUTH, CertificatePurpose.CLIENT_AUTH),
        )
    )
    cert = _certificate(result.certificate_pem)
    assert cert.not_valid_after_utc == clock.now + timedelta(days=30)
    assert cert.not_valid_before_utc <= clock.now
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [p.full_name[0].value for p in points if p.full_name] == [CRL_URL]
    assert cert.subject.rfc4514_string() == "CN=svc.example.test"
    assert result.chain_pem == (gateway.get_chain().chain_pem[0],)


def test_default_validity_and_client_only_certificates(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    gateway = _gateway(memory_context(tmp_path, clock=clock), default_validity_days=7)
    csr_pem, _ = new_csr((), common_name="agent-42")
    result = gateway.issue(
        IssueRequest(
            csr_pem=csr_pem,
            common_name="agent-42",
            idempotency_key="agent",
            purposes=(CertificatePurpose.CLIENT_AUTH,),
        )
    )
    cert = _certificate(result.certificate_pem)
    assert cert.not_valid_after_utc == clock.now + timedelta(days=7)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.subject.rfc4514_string() == "CN=agent-42"
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_oid(ExtensionOID.CRL_DISTRIBUTION_POINTS)


def _issue_request(csr_names: tuple[str, ...], **overrides: Any) -> Callable[[], IssueRequest]:
    def build() -> IssueRequest:
        csr_pem, _ = new_csr(csr_names)
        values: dict[str, Any] = {"csr_pem": csr_pem, "names": csr_names, "idempotency_key": "bad"}
        values.update(overrides)
        return IssueRequest(**values)

    return build


@pytest.mark.parametrize(
    ("build", "field", "message"),
    [
        (
            _issue_request(("a.example.test",), validity_days=400),
            "validity_days",
            "exceeds this CA's maximum",
        ),
        (
            _issue_request(("a.example.test",), names=("a.example.test", "b.example.test")),
            "names",
            "the CSR asks for ['a.example.test'] but the request is for",
        ),
        (_issue_request(("a.example.test",), names=("bad name!",)), "names", "not a DNS name or IP address"),
        (
            lambda: IssueRequest(csr_pem=b"garbage", names=("a.example.test",), idempotency_key="x"),
            "csr_pem",
            "not a valid PEM or DER certificate signing request",
        ),
    ],
)
def test_rejections_name_the_field(
    build: Callable[[], IssueRequest], field: str, message: str, tmp_path: Path
) -> None:
    gateway = _gateway(memory_context(tmp_path))
    with pytest.raises(CARejectedError) as caught:
        gateway.issue(build())
    assert caught.value.field == field
    assert message in caught.value.message
    assert caught.value.http_status == 422 and not caught.value.retryable


def test_tampered_csr_says_the_signature_does_not_verify(tmp_path: Path) -> None:
    from sslclm.spi.testing import tamper_csr

    gateway = _gateway(memory_context(tmp_path))
    request, _ = new_issue_request(("a.example.test",))
    with pytest.raises(CARejectedError) as caught:
        gateway.issue(
            IssueRequest(csr_pem=tamper_csr(request.csr_pem), names=request.names, idempotency_key="t")
        )
    assert caught.value.message == "CSR signature does not verify"
    assert caught.value.field == "csr_pem"


def test_idempotency_key_reused_for_another_csr_is_rejected(tmp_path: Path) -> None:
    gateway = _gateway(memory_context(tmp_path))
    first, _ = new_issue_request(("a.example.test",), idempotency_key="same")
    second, _ = new_issue_request(("a.example.test",), idempotency_key="same")
    gateway.issue(first)
    with pytest.raises(CARejectedError) as caught:
        gateway.issue(second)
    assert caught.value.field == "idempotency_key"


def test_retry_after_a_crash_between_writes_completes_the_record(tmp_path: Path) -> None:
    state = MemoryStateStore()
    gateway = _gateway(memory_context(tmp_path, state=state))
    request, _ = new_issue_request(("a.example.test",))
    issued = gateway.issue(request)
    assert issued.serial is not None
    # Simulate a worker that died after recording the idempotency entry but before the serial entry.
    assert state.delete(f"cert/{int(issued.serial, 16):040x}")
    again = gateway.issue(request)
    assert again.certificate_pem == issued.certificate_pem
    assert state.get(f"cert/{int(issued.serial, 16):040x}") is not None
    assert gateway.revoke(RevokeRequest(serial=issued.serial)).serial == issued.serial


def test_crl_lists_revoked_serials_and_verifies_with_the_ca_key(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    gateway = _gateway(memory_context(tmp_path, clock=clock), crl_url=CRL_URL, crl_validity_hours=24)
    results = [gateway.issue(new_issue_request((f"h{i}.example.test",))[0]) for i in range(3)]
    serials = [int(r.serial or "", 16) for r in results]
    issuing_pem = gateway.get_chain().chain_pem[0]

    empty = read_crl(gateway.crl_der(), issuing_pem)
    assert empty.signature_valid and empty.revoked == {}

    clock.now += timedelta(minutes=5)
    revoked = gateway.revoke(
        RevokeRequest(certificate_pem=results[0].certificate_pem, reason=RevocationReason.KEY_COMPROMISE)
    )
    assert revoked.revoked_at == clock.now and not revoked.already_revoked
    gateway.revoke(RevokeRequest(serial=f"{serials[2]:X}", reason=RevocationReason.UNSPECIFIED))
    clock.now += timedelta(minutes=1)
    again = gateway.revoke(RevokeRequest(serial=f"{serials[0]:x}", reason=RevocationReason.SUPERSEDED))
    assert again.already_revoked and again.revoked_at == clock.now - timedelta(minutes=1)

    facts = read_crl(gateway.crl_der(), issuing_pem)
    assert facts.signature_valid
    assert facts.revoked == {serials[0]: 1, serials[2]: 0}  # key compromise; unspecified has no reason
    assert facts.issuer == "CN=SSL-CLM Local Issuing CA"
    assert facts.this_update == clock.now
    assert facts.next_update == clock.now + timedelta(hours=24)
    assert facts.crl_number is not None and empty.crl_number is not None
    assert facts.crl_number > empty.crl_number
    # The root did not sign it: the signature check is real.
    assert not read_crl(gateway.crl_der(), gateway.get_chain().root_pem or b"").signature_valid


def test_revoking_unknown_serial_is_rejected(tmp_path: Path) -> None:
    gateway = _gateway(memory_context(tmp_path))
    with pytest.raises(CARejectedError) as caught:
        gateway.revoke(RevokeRequest(serial="abcdef"))
    assert caught.value.field == "serial"


def test_list_issued_pages_through_everything_with_revocation_status(tmp_path: Path) -> None:
    clock = FakeClock(datetime(2026, 3, 1, 9, 0, tzinfo=UTC))
    gateway = _gateway(memory_context(tmp_path, clock=clock))
    issued = []
    for i in range(7):
        issued.append(gateway.issue(new_issue_request((f"l{i}.example.test",))[0]))
        clock.now += timedelta(hours=1)
    gateway.revoke(RevokeRequest(serial=issued[3].serial, reason=RevocationReason.SUPERSEDED))

    seen: dict[str | None, Any] = {}
    cursor = None
    pages = 0
    while True:
        page = gateway.list_issued(ListIssuedRequest(limit=3, cursor=cursor))
        pages += 1
        seen.update({c.serial: c for c in page.certificates})
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 3
    assert set(seen) == {r.serial for r in issued}
    assert seen[issued[3].serial].revocation_reason is RevocationReason.SUPERSEDED
    assert seen[issued[0].serial].revoked_at is None

    recent = gateway.list_issued(ListIssuedRequest(issued_since=datetime(2026, 3, 1, 14, 0, tzinfo=UTC)))
    assert {c.serial for c in recent.certificates} == {issued[5].serial, issued[6].serial}
    with pytest.raises(InvalidInputError) as caught:
        gateway.list_issued(ListIssuedRequest(cursor="not-a-cursor"))
    assert caught.value.field == "cursor"


def test_config_schema_documents_the_fields() -> None:
    schema = LocalCAConfig.model_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) >= {"key_type", "crl_url", "max_validity_days", "default_validity_days"}
    assert all(prop.get("description") for prop in schema["properties"].values())
