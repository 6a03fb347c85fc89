"""Conformance suites every CA gateway and certificate store runs, built-in or third-party.

Use it by subclassing in a test module and providing a ``ca_gateway`` fixture that returns a gateway
ready to issue (its CA running, credentials in place)::

    from sslclm.spi.testing import CAGatewayConformance, memory_context

    class TestMyGateway(CAGatewayConformance):
        names = ("www.example.test",)          # names this CA will certify

        @pytest.fixture
        def ca_gateway(self, tmp_path):
            return MyGateway(MyGateway.Config(url=...), memory_context(tmp_path))

Optionally override the ``ca_trust_anchors`` fixture when ``get_chain`` cannot offer a root (e.g. an
ACME CA), and ``collect_timeout`` for slow asynchronous CAs. Capability-specific cases assert the
capability when it is declared and assert ``NotSupportedError`` when it is not, so every case runs
for every gateway. The helper functions can also be used on their own.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import ClassVar

import pytest

from sslclm.errors import (
    CARejectedError,
    ConflictError,
    ConnectorError,
    InvalidInputError,
    NotFoundError,
    NotSupportedError,
    SslClmError,
)
from sslclm.pki import (
    CertificateInfo,
    SigningKey,
    build_csr,
    certificate_to_pem,
    create_ca,
    generate_private_key,
    parse_certificate,
    public_key_sha256,
)
from sslclm.pki.ca_tools import csr_to_pem, normalize_names, verify_server_path
from sslclm.pki.envelope import Envelope, generate_kek
from sslclm.spi.ca import CAGateway
from sslclm.spi.capabilities import Capability, ConnectorKind
from sslclm.spi.context import Clock, ConnectorContext, EnvelopeSealer, MemoryStateStore, StateStore, utcnow
from sslclm.spi.registry import require_capability, validate_connector_class
from sslclm.spi.store import (
    AddRequest,
    AddResult,
    CertificateStore,
    CreateRequest,
    InventoryRequest,
    ReloadRequest,
    RemoveRequest,
    StoreEntry,
)
from sslclm.spi.types import (
    CollectRequest,
    IssueRequest,
    IssueResult,
    IssueStatus,
    ListIssuedRequest,
    RenewalInfoRequest,
    RevocationReason,
    RevokeRequest,
)

DEFAULT_NAMES = ("conformance.sslclm.test", "www.conformance.sslclm.test")


def memory_context(
    data_dir: Path,
    *,
    connection_id: str = "conformance",
    envelope: Envelope | None = None,
    state: StateStore | None = None,
    clock: Clock = utcnow,
) -> ConnectorContext:
    """A context with an in-memory state store and a real AES-GCM envelope (a fresh key if none given)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return ConnectorContext(
        connection_id=connection_id,
        state=state if state is not None else MemoryStateStore(),
        secrets=EnvelopeSealer(envelope or Envelope(generate_kek()), connection_id),
        data_dir=data_dir,
        logger=logging.getLogger(f"sslclm.connector.{connection_id}"),
        clock=clock,
    )


def new_csr(
    names: Sequence[str], *, key_type: str = "EC-P256", common_name: str | None = None
) -> tuple[bytes, SigningKey]:
    """A fresh key and a PEM CSR for it asking for ``names`` (DNS names and IP addresses)."""
    key = generate_private_key(key_type)
    dns, ips = _split_names(names)
    cn = common_name if common_name is not None else (names[0] if names and len(names[0]) <= 64 else None)
    return csr_to_pem(build_csr(key, cn, dns, ips)), key


def _split_names(names: Sequence[str]) -> tuple[list[str], list[str]]:
    dns: list[str] = []
    ips: list[str] = []
    for name in names:
        try:
            ips.append(str(ipaddress.ip_address(name)))
        except ValueError:
            dns.append(name)
    return dns, ips


def new_issue_request(
    names: Sequence[str], *, key_type: str = "EC-P256", idempotency_key: str | None = None
) -> tuple[IssueRequest, SigningKey]:
    csr_pem, key = new_csr(names, key_type=key_type)
    request = IssueRequest(
        csr_pem=csr_pem, names=tuple(names), idempotency_key=idempotency_key or f"conformance-{uuid.uuid4()}"
    )
    return request, key


def issue_and_collect(
    gateway: CAGateway,
    request: IssueRequest,
    *,
    timeout: float = 120.0,
    sleep: Callable[[float], None] = time.sleep,
) -> IssueResult:
    """Issue, then poll ``collect`` while the answer is pending (only a gateway declaring ASYNC_ISSUE may
    answer pending). Fails the test when the certificate does not arrive within ``timeout`` seconds.
    """
    result = gateway.issue(request)
    deadline = time.monotonic() + timeout
    while result.status is IssueStatus.PENDING:
        assert Capability.ASYNC_ISSUE in gateway.capabilities, (
            f"{gateway.type_key} answered pending but does not declare async-issue"
        )
        assert result.pending_ref, "a pending result must carry a reference"
        if time.monotonic() > deadline:
            pytest.fail(f"{gateway.type_key}: certificate still pending after {timeout} s")
        wait = result.retry_after.total_seconds() if result.retry_after else 1.0
        sleep(max(0.05, min(wait, 5.0)))
        result = gateway.collect(
            CollectRequest(pending_ref=result.pending_ref, idempotency_key=request.idempotency_key)
        )
    return result


def _leaf_info(result: IssueResult) -> CertificateInfo:
    assert result.status is IssueStatus.ISSUED and result.certificate_pem
    return parse_certificate(_pem_to_der(result.certificate_pem))


def _pem_to_der(pem: bytes) -> bytes:
    lines = [line for line in pem.strip().splitlines() if line and not line.startswith(b"-----")]
    return base64.b64decode(b"".join(lines))


def assert_valid_issuance(
    gateway: CAGateway,
    request: IssueRequest,
    key: SigningKey,
    result: IssueResult,
    *,
    trust_anchors: Sequence[bytes] = (),
    at: datetime | None = None,
) -> CertificateInfo:
    """The certificate certifies ``key`` for exactly the requested names and validates (RFC 5280, TLS
    server policy) through the result's chain and ``get_chain`` to the CA's root or ``trust_anchors``.
    """
    info = _leaf_info(result)
    assert info.public_key_sha256 == public_key_sha256(key), "the certificate is not for the CSR's key"
    dns, ips = _split_names(request.names)
    expected = {f"DNS:{name}" for name in normalize_names(dns)} | {f"IP:{ip}" for ip in ips}
    issued = {"DNS:" + san[4:].lower() if san.startswith("DNS:") else san for san in info.sans}
    assert issued == expected, f"names differ: issued {sorted(issued)}, requested {sorted(expected)}"
    if result.serial is not None:
        assert int(result.serial, 16) == int(info.serial, 16), "result.serial is not the certificate's serial"
    chain = gateway.get_chain()
    roots = list(trust_anchors) or ([chain.root_pem] if chain.root_pem else [])
    if not roots:
        pytest.fail(f"{gateway.type_key}: get_chain offers no root; override the ca_trust_anchors fixture")
    intermediates = list(dict.fromkeys([*result.chain_pem, *chain.chain_pem]))
    assert result.certificate_pem is not None
    verify_server_path(
        result.certificate_pem,
        intermediates_pem=intermediates,
        roots_pem=roots,
        name=request.names[0],
        at=at or gateway.context.now(),
    )
    return info


def assert_rejected(call: Callable[[], object]) -> SslClmError:
    """The call fails with CARejectedError or InvalidInputError (a non-retryable error naming the
    problem), not with a generic exception or a retryable connector error.
    """
    with pytest.raises(SslClmError) as caught:
        call()
    error = caught.value
    assert isinstance(error, CARejectedError | InvalidInputError), (
        f"expected CARejectedError or InvalidInputError, got {type(error).__name__}: {error}"
    )
    if isinstance(error, ConnectorError):
        assert not error.retryable, "a rejection must not be retryable"
    return error


def tamper_csr(csr_pem: bytes) -> bytes:
    """The same CSR with one bit of its signature flipped, so it parses but does not verify."""
    der = bytearray(_pem_to_der(csr_pem))
    der[-1] ^= 0x01
    body = base64.encodebytes(bytes(der))
    return b"-----BEGIN CERTIFICATE REQUEST-----\n" + body + b"-----END CERTIFICATE REQUEST-----\n"


def _assert_not_supported(gateway: CAGateway, capability: Capability, call: Callable[[], object]) -> None:
    with pytest.raises(NotSupportedError) as caught:
        require_capability(gateway, capability)
    assert caught.value.http_status == 501
    with pytest.raises(NotSupportedError):
        call()


class CAGatewayConformance:
    """The conformance cases; subclass as ``Test<Something>`` and provide a ``ca_gateway`` fixture."""

    names: ClassVar[tuple[str, ...]] = DEFAULT_NAMES
    collect_timeout: ClassVar[float] = 120.0

    @pytest.fixture
    def ca_trust_anchors(self) -> tuple[bytes, ...]:
        return ()

    def _issue(
        self, gateway: CAGateway, request: IssueRequest, anchors: Sequence[bytes], key: SigningKey
    ) -> tuple[IssueResult, CertificateInfo]:
        result = issue_and_collect(gateway, request, timeout=self.collect_timeout)
        return result, assert_valid_issuance(gateway, request, key, result, trust_anchors=anchors)

    def test_class_passes_registry_checks(self, ca_gateway: CAGateway) -> None:
        validate_connector_class(ConnectorKind.CA_GATEWAY, ca_gateway.type_key, type(ca_gateway))
        assert Capability.ISSUE in ca_gateway.capabilities
        json.dumps(type(ca_gateway).Config.model_json_schema())

    def test_check_reports_ok(self, ca_gateway: CAGateway) -> None:
        result = ca_gateway.check()
        assert result.ok, result.message
        json.dumps(dict(result.details), default=str)

    def test_issue_returns_a_certificate_that_chains_to_the_ca(
        self, ca_gateway: CAGateway, ca_trust_anchors: tuple[bytes, ...]
    ) -> None:
        request, key = new_issue_request(self.names)
        self._issue(ca_gateway, request, ca_trust_anchors, key)

    def test_issue_with_an_rsa_key(self, ca_gateway: CAGateway, ca_trust_anchors: tuple[bytes, ...]) -> None:
        request, key = new_issue_request(self.names, key_type="RSA-2048")
        self._issue(ca_gateway, request, ca_trust_anchors, key)

    def test_same_idempotency_key_returns_the_same_certificate(
        self, ca_gateway: CAGateway, ca_trust_anchors: tuple[bytes, ...]
    ) -> None:
        request, key = new_issue_request(self.names)
        _, info = self._issue(ca_gateway, request, ca_trust_anchors, key)
        again = issue_and_collect(ca_gateway, request, timeout=self.collect_timeout)
        assert _leaf_info(again).fingerprint_sha256 == info.fingerprint_sha256, "issued twice for one key"

    def test_distinct_idempotency_keys_issue_distinct_certificates(self, ca_gateway: CAGateway) -> None:
        first_request, _ = new_issue_request(self.names)
        second_request, _ = new_issue_request(self.names)
        first = _leaf_info(issue_and_collect(ca_gateway, first_request, timeout=self.collect_timeout))
        second = _leaf_info(issue_and_collect(ca_gateway, second_request, timeout=self.collect_timeout))
        assert first.serial != second.serial

    def test_unparsable_csr_is_rejected(self, ca_gateway: CAGateway) -> None:
        request = IssueRequest(
            csr_pem=b"-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgQ1NS\n-----END CERTIFICATE REQUEST-----\n",
            names=self.names,
            idempotency_key=f"conformance-{uuid.uuid4()}",
        )
        assert_rejected(lambda: ca_gateway.issue(request))

    def test_csr_whose_signature_does_not_verify_is_rejected(self, ca_gateway: CAGateway) -> None:
        good, _ = new_issue_request(self.names)
        bad = IssueRequest(
            csr_pem=tamper_csr(good.csr_pem), names=self.names, idempotency_key=f"conformance-{uuid.uuid4()}"
        )
        assert_rejected(lambda: ca_gateway.issue(bad))

    def test_collect(self, ca_gateway: CAGateway) -> None:
        bogus = CollectRequest(pending_ref=f"unknown-{uuid.uuid4()}", idempotency_key="unknown")
        if Capability.ASYNC_ISSUE in ca_gateway.capabilities:
            assert_rejected(lambda: ca_gateway.collect(bogus))
        else:
            _assert_not_supported(ca_gateway, Capability.ASYNC_ISSUE, lambda: ca_gateway.collect(bogus))

    def test_revoke(self, ca_gateway: CAGateway, ca_trust_anchors: tuple[bytes, ...]) -> None:
        request, key = new_issue_request(self.names)
        result, info = self._issue(ca_gateway, request, ca_trust_anchors, key)
        assert result.certificate_pem is not None
        revoke = RevokeRequest(certificate_pem=result.certificate_pem, reason=RevocationReason.KEY_COMPROMISE)
        if Capability.REVOKE not in ca_gateway.capabilities:
            _assert_not_supported(ca_gateway, Capability.REVOKE, lambda: ca_gateway.revoke(revoke))
            return
        first = ca_gateway.revoke(revoke)
        assert int(first.serial, 16) == int(info.serial, 16)
        assert not first.already_revoked
        again = ca_gateway.revoke(revoke)
        assert again.already_revoked, "revoking twice must succeed and say it was already revoked"

    def test_revoking_a_foreign_certificate_is_rejected(self, ca_gateway: CAGateway) -> None:
        _, foreign = create_ca("Not This CA")
        revoke = RevokeRequest(certificate_pem=certificate_to_pem(foreign))
        if Capability.REVOKE not in ca_gateway.capabilities:
            _assert_not_supported(ca_gateway, Capability.REVOKE, lambda: ca_gateway.revoke(revoke))
            return
        assert_rejected(lambda: ca_gateway.revoke(revoke))

    def test_list_issued(self, ca_gateway: CAGateway) -> None:
        listing = ListIssuedRequest(limit=50)
        if Capability.LIST not in ca_gateway.capabilities:
            _assert_not_supported(ca_gateway, Capability.LIST, lambda: ca_gateway.list_issued(listing))
            return
        request, _ = new_issue_request(self.names)
        wanted = int(
            _leaf_info(issue_and_collect(ca_gateway, request, timeout=self.collect_timeout)).serial, 16
        )
        cursor: str | None = None
        seen = 0
        for _ in range(10_000):
            page = ca_gateway.list_issued(ListIssuedRequest(limit=50, cursor=cursor))
            seen += len(page.certificates)
            if any(int(c.serial, 16) == wanted for c in page.certificates):
                return
            if page.next_cursor is None:
                break
            assert page.next_cursor != cursor, "the cursor must advance"
            cursor = page.next_cursor
        pytest.fail(f"the issued serial {wanted:x} is not among the {seen} listed certificates")

    def test_renewal_info(self, ca_gateway: CAGateway, ca_trust_anchors: tuple[bytes, ...]) -> None:
        request, key = new_issue_request(self.names)
        result, info = self._issue(ca_gateway, request, ca_trust_anchors, key)
        assert result.certificate_pem is not None
        ask = RenewalInfoRequest(certificate_pem=result.certificate_pem, chain_pem=result.chain_pem)
        if Capability.ARI not in ca_gateway.capabilities:
            _assert_not_supported(ca_gateway, Capability.ARI, lambda: ca_gateway.renewal_info(ask))
            return
        window = ca_gateway.renewal_info(ask)
        assert info.not_before <= window.window_start <= window.window_end <= info.not_after


# --- certificate stores ----------------------------------------------------------------------------


def new_store_material(
    name: str = "store.conformance.sslclm.test", *, ca: tuple[SigningKey, object] | None = None
) -> tuple[bytes, tuple[bytes, ...], bytes]:
    """A fresh server certificate (PEM), its chain (the issuing CA) and its private key (PEM)."""
    from cryptography import x509

    from sslclm.pki import issue_server_certificate, private_key_to_pem

    ca_key, ca_cert = ca if ca is not None else create_ca("Store Conformance CA")
    assert isinstance(ca_cert, x509.Certificate)
    key, cert = issue_server_certificate(ca_key, ca_cert, hostnames=[name], valid_days=30)
    return certificate_to_pem(cert), (certificate_to_pem(ca_cert),), private_key_to_pem(key)


def new_add_request(alias: str, *, overwrite: bool = True, name: str | None = None) -> AddRequest:
    cert, chain, key = new_store_material(name or f"{alias}.conformance.sslclm.test")
    return AddRequest(
        alias=alias, certificate_pem=cert, chain_pem=chain, private_key_pem=key, overwrite=overwrite
    )


def _same_pem(a: bytes, b: bytes) -> bool:
    return _pem_to_der(a) == _pem_to_der(b)


def find_entry(store: CertificateStore, alias: str) -> StoreEntry | None:
    """The inventory entry under ``alias``, walking every page."""
    cursor: str | None = None
    for _ in range(10_000):
        page = store.inventory(InventoryRequest(cursor=cursor, limit=100))
        for entry in page.entries:
            if entry.alias == alias:
                return entry
        if page.next_cursor is None:
            return None
        assert page.next_cursor != cursor, "the cursor must advance"
        cursor = page.next_cursor
    return None


class CertificateStoreConformance:
    """The store conformance cases; subclass as ``Test<Something>`` and provide a ``cert_store`` fixture
    returning a store that is ready (its directory, keystore or service exists and is empty).

    ``alias_prefix`` keeps the aliases of one run apart when the store is shared.
    """

    alias_prefix: ClassVar[str] = "conf"

    def _alias(self, suffix: str) -> str:
        return f"{self.alias_prefix}-{suffix}-{uuid.uuid4().hex[:8]}"

    def _add(self, store: CertificateStore, request: AddRequest) -> AddResult:
        return store.add(request)

    def test_class_passes_registry_checks(self, cert_store: CertificateStore) -> None:
        validate_connector_class(ConnectorKind.CERT_STORE, cert_store.type_key, type(cert_store))
        assert Capability.ADD in cert_store.capabilities, "a certificate store can be deployed to"
        json.dumps(type(cert_store).Config.model_json_schema())

    def test_check_reports_ok(self, cert_store: CertificateStore) -> None:
        result = cert_store.check()
        assert result.ok, result.message

    def test_added_certificate_is_listed_with_its_chain(self, cert_store: CertificateStore) -> None:
        request = new_add_request(self._alias("list"))
        result = self._add(cert_store, request)
        assert result.alias == request.alias and not result.replaced
        if Capability.INVENTORY not in cert_store.capabilities:
            _assert_store_unsupported(
                cert_store, Capability.INVENTORY, lambda: cert_store.inventory(InventoryRequest())
            )
            return
        entry = find_entry(cert_store, request.alias)
        assert entry is not None, f"alias {request.alias} not in the inventory"
        assert _same_pem(entry.certificate_pem, request.certificate_pem)
        if entry.chain_pem:
            assert [_pem_to_der(c) for c in entry.chain_pem] == [_pem_to_der(c) for c in request.chain_pem]

    def test_adding_again_replaces_and_is_harmless(self, cert_store: CertificateStore) -> None:
        alias = self._alias("again")
        first = new_add_request(alias)
        self._add(cert_store, first)
        assert cert_store.add(first).replaced, "the same content again must succeed and say it replaced"
        second = new_add_request(alias)
        assert cert_store.add(second).replaced
        if Capability.INVENTORY in cert_store.capabilities:
            entry = find_entry(cert_store, alias)
            assert entry is not None and _same_pem(entry.certificate_pem, second.certificate_pem)

    def test_add_without_overwrite_conflicts(self, cert_store: CertificateStore) -> None:
        alias = self._alias("conflict")
        self._add(cert_store, new_add_request(alias))
        with pytest.raises(ConflictError):
            cert_store.add(new_add_request(alias, overwrite=False))

    def test_unusable_certificate_is_rejected(self, cert_store: CertificateStore) -> None:
        good = new_add_request(self._alias("bad"))
        bad = AddRequest(
            alias=good.alias, certificate_pem=b"not a certificate", private_key_pem=good.private_key_pem
        )
        with pytest.raises(InvalidInputError):
            cert_store.add(bad)
        if Capability.INVENTORY in cert_store.capabilities:
            assert find_entry(cert_store, good.alias) is None, "a refused add must leave nothing behind"

    def test_remove(self, cert_store: CertificateStore) -> None:
        alias = self._alias("remove")
        if Capability.REMOVE not in cert_store.capabilities:
            _assert_store_unsupported(
                cert_store, Capability.REMOVE, lambda: cert_store.remove(RemoveRequest(alias=alias))
            )
            return
        self._add(cert_store, new_add_request(alias))
        assert cert_store.remove(RemoveRequest(alias=alias)).alias == alias
        if Capability.INVENTORY in cert_store.capabilities:
            assert find_entry(cert_store, alias) is None
        with pytest.raises(NotFoundError):
            cert_store.remove(RemoveRequest(alias=alias))

    def test_inventory_pages(self, cert_store: CertificateStore) -> None:
        if Capability.INVENTORY not in cert_store.capabilities:
            _assert_store_unsupported(
                cert_store, Capability.INVENTORY, lambda: cert_store.inventory(InventoryRequest())
            )
            return
        aliases = {self._alias(f"page{n}") for n in range(3)}
        for alias in aliases:
            self._add(cert_store, new_add_request(alias))
        seen: list[str] = []
        cursor: str | None = None
        for _ in range(10_000):
            page = cert_store.inventory(InventoryRequest(cursor=cursor, limit=2))
            assert len(page.entries) <= 2
            seen += [entry.alias for entry in page.entries]
            if page.next_cursor is None:
                break
            assert page.next_cursor != cursor, "the cursor must advance"
            cursor = page.next_cursor
        assert aliases <= set(seen)
        assert len(seen) == len(set(seen)), "an entry was listed twice"

    def test_create(self, cert_store: CertificateStore) -> None:
        if Capability.CREATE not in cert_store.capabilities:
            _assert_store_unsupported(
                cert_store, Capability.CREATE, lambda: cert_store.create(CreateRequest())
            )
            return
        assert cert_store.create(CreateRequest()).created is False, "the fixture's store already exists"

    def test_reload(self, cert_store: CertificateStore) -> None:
        if Capability.RELOAD not in cert_store.capabilities:
            _assert_store_unsupported(
                cert_store, Capability.RELOAD, lambda: cert_store.reload(ReloadRequest())
            )
            return
        cert_store.reload(ReloadRequest())


def _assert_store_unsupported(
    store: CertificateStore, capability: Capability, call: Callable[[], object]
) -> None:
    with pytest.raises(NotSupportedError) as caught:
        require_capability(store, capability)
    assert caught.value.http_status == 501
    with pytest.raises(NotSupportedError):
        call()
