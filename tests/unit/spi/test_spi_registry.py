"""The connector registry: loading from real entry points, load failures as state, capability checks,
config validation naming the field, and the JSON schema the API exposes.

Third-party plugins are simulated by a real installed-style distribution (a ``.dist-info`` directory
with ``entry_points.txt``) written under ``tmp_path`` and put on ``sys.path``.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, SecretStr

from sslclm.errors import ConnectorLoadError, InvalidInputError, NotFoundError, NotSupportedError
from sslclm.spi import (
    CAGateway,
    Capability,
    ChainRequest,
    ChainResult,
    CheckRequest,
    CheckResult,
    ConnectorConfig,
    ConnectorKind,
    IssueRequest,
    IssueResult,
    Notification,
    Notifier,
    RevokeRequest,
    SendResult,
)
from sslclm.spi.base import CHECK
from sslclm.spi.ca import CHAIN
from sslclm.spi.registry import ConnectorRegistry, call, require_capability, validate_connector_class
from sslclm.spi.testing import memory_context

PLUGIN = "sslclm_fake_plugins"

PLUGIN_SOURCE = """
from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, Field, SecretStr

from sslclm.spi import (
    CAGateway, Capability, CertificateStore, ChainResult, CheckResult, ConnectorConfig, IssueResult,
    Notifier, SendResult,
)


class GoodConfig(ConnectorConfig):
    url: str = Field(description="Where the CA lives.")
    api_key: SecretStr


class Good(CAGateway):
    type_key: ClassVar[str] = "fake-good"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.ISSUE})
    Config: ClassVar[type[BaseModel]] = GoodConfig

    def check(self, request=None):
        return CheckResult(ok=True, message="fine")

    def get_chain(self, request=None):
        return ChainResult(chain_pem=())

    def issue(self, request):
        return IssueResult.pending("ref-" + request.idempotency_key)


class MissingRevoke(Good):
    type_key: ClassVar[str] = "fake-missing-revoke"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.ISSUE, Capability.REVOKE})


class AsyncWithoutIssue(Good):
    type_key: ClassVar[str] = "fake-async-only"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.ASYNC_ISSUE})

    def collect(self, request):
        return IssueResult.pending("again")


class Dup(Good):
    type_key: ClassVar[str] = "fake-dup"


class OtherDup(Good):
    type_key: ClassVar[str] = "fake-dup"


class NoChain(CAGateway):
    type_key: ClassVar[str] = "fake-no-chain"

    def check(self, request=None):
        return CheckResult(ok=True, message="fine")


class StoreThatIssues(CertificateStore):
    type_key: ClassVar[str] = "fake-store"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.ISSUE})

    def check(self, request=None):
        return CheckResult(ok=True, message="fine")


class Pager(Notifier):
    type_key: ClassVar[str] = "fake-pager"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.SEND})

    def check(self, request=None):
        return CheckResult(ok=True, message="fine")

    def send(self, notification):
        return SendResult(delivered=True, message_id=notification.event)
"""

ENTRY_POINTS = """
[sslclm.ca_gateways]
fake-good = sslclm_fake_plugins.plugins:Good
fake-missing-revoke = sslclm_fake_plugins.plugins:MissingRevoke
fake-async-only = sslclm_fake_plugins.plugins:AsyncWithoutIssue
fake-no-chain = sslclm_fake_plugins.plugins:NoChain
fake-renamed = sslclm_fake_plugins.plugins:Good
Fake_Bad_Key = sslclm_fake_plugins.plugins:Good
fake-broken-import = sslclm_fake_plugins.broken:Gateway
fake-missing-class = sslclm_fake_plugins.plugins:DoesNotExist
fake-not-a-class = sslclm_fake_plugins.plugins:GoodConfig
fake-dup = sslclm_fake_plugins.plugins:Dup

[sslclm.cert_stores]
fake-store = sslclm_fake_plugins.plugins:StoreThatIssues

[sslclm.notifiers]
fake-pager = sslclm_fake_plugins.plugins:Pager
"""

SECOND_DIST_ENTRY_POINTS = """
[sslclm.ca_gateways]
fake-dup = sslclm_fake_plugins.plugins:OtherDup
"""


def _write_dist(site: Path, name: str, entry_points: str) -> None:
    dist_info = site / f"{name}-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site = tmp_path / "site"
    package = site / PLUGIN
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "plugins.py").write_text(PLUGIN_SOURCE)
    (package / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    _write_dist(site, "fake_plugins", ENTRY_POINTS)
    _write_dist(site, "other_fake_plugins", SECOND_DIST_ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    yield site
    import sys

    for module in [m for m in sys.modules if m == PLUGIN or m.startswith(f"{PLUGIN}.")]:
        del sys.modules[module]


@pytest.fixture
def registry(plugin_site: Path) -> ConnectorRegistry:
    return ConnectorRegistry.from_entry_points()


def _failures(registry: ConnectorRegistry) -> dict[str, str]:
    return {f.type_key: f.error for f in registry.failures}


def test_builtin_local_ca_loads_from_its_entry_point() -> None:
    registry = ConnectorRegistry.from_entry_points()
    local = registry.get(ConnectorKind.CA_GATEWAY, "local")
    assert local.distribution == "sslclm"
    assert local.source == "sslclm.connectors.local_ca:LocalCAGateway"
    assert {Capability.ISSUE, Capability.REVOKE, Capability.LIST} <= local.capabilities
    assert not [f for f in registry.failures if f.distribution == "sslclm"]


def test_broken_plugins_become_failures_not_crashes(registry: ConnectorRegistry) -> None:
    failures = _failures(registry)
    assert failures["fake-broken-import"] == "RuntimeError: boom at import"
    assert "DoesNotExist" in failures["fake-missing-class"]
    assert "is not a subclass of sslclm.spi.ca.CAGateway" in failures["fake-not-a-class"]
    assert "type_key is 'fake-good' but it is registered as 'fake-renamed'" in failures["fake-renamed"]
    assert "not kebab-case" in failures["Fake_Bad_Key"]
    assert "async-issue without issue" in failures["fake-async-only"]
    assert "abstract methods unimplemented: get_chain" in failures["fake-no-chain"]
    assert "a cert-store cannot have: issue" in failures["fake-store"]
    # The loaded ones are still there, beside the built-in.
    loaded = {t.type_key for t in registry.types()}
    assert {"fake-good", "fake-pager", "local"} <= loaded


def test_declared_but_unimplemented_capability_is_a_load_failure(registry: ConnectorRegistry) -> None:
    assert _failures(registry)["fake-missing-revoke"] == (
        "MissingRevoke declares but does not implement: revoke (revoke)"
    )
    with pytest.raises(NotFoundError) as caught:
        registry.get(ConnectorKind.CA_GATEWAY, "fake-missing-revoke")
    assert "failed to load: MissingRevoke declares but does not implement" in caught.value.message


def test_second_distribution_claiming_a_type_key_fails(registry: ConnectorRegistry) -> None:
    # Whichever distribution is found first keeps the key; the other is shown as a failure.
    loaded = registry.get(ConnectorKind.CA_GATEWAY, "fake-dup")
    failure = next(f for f in registry.failures if f.type_key == "fake-dup")
    assert {loaded.distribution, failure.distribution} == {"fake_plugins", "other_fake_plugins"}
    assert failure.error == f"type key already provided by {loaded.source} ({loaded.distribution})"


def test_describe_is_json_with_schemas_and_failures(registry: ConnectorRegistry) -> None:
    described = json.loads(json.dumps(registry.describe()))
    by_type = {t["type"]: t for t in described["types"]}
    good = by_type["fake-good"]
    assert good["kind"] == "ca-gateway" and good["capabilities"] == ["issue"]
    api_key = good["config_schema"]["properties"]["api_key"]
    assert api_key["writeOnly"] is True and api_key["format"] == "password"
    assert good["config_schema"]["required"] == ["url", "api_key"]
    local = by_type["local"]["config_schema"]["properties"]
    assert local["key_type"]["enum"] == ["EC-P256", "EC-P384", "RSA-2048", "RSA-3072", "RSA-4096"]
    assert local["key_type"]["default"] == "EC-P256"
    assert {f["type"] for f in described["failures"]} >= {"fake-broken-import", "fake-missing-revoke"}
    notifiers = registry.describe(ConnectorKind.NOTIFIER)
    # Only notifiers (the built-in ones and the fake), and none of them failed.
    assert "fake-pager" in [t["type"] for t in notifiers["types"]]
    assert all(t["kind"] == "notifier" for t in notifiers["types"])
    assert notifiers["failures"] == []


def test_undeclared_capability_raises_not_supported_501(registry: ConnectorRegistry, tmp_path: Path) -> None:
    gateway = registry.build_ca_gateway(
        "fake-good", {"url": "https://ca.example", "api_key": "s3cret"}, memory_context(tmp_path)
    )
    revoke = RevokeRequest(serial="01")
    with pytest.raises(NotSupportedError) as caught:
        call(gateway, Capability.REVOKE, revoke)
    assert caught.value.http_status == 501
    assert caught.value.to_problem()["status"] == 501
    assert caught.value.data == {"type_key": "fake-good", "capability": "revoke"}
    with pytest.raises(NotSupportedError):
        gateway.revoke(revoke)  # the default body refuses too, for direct callers
    with pytest.raises(NotSupportedError):
        require_capability(type(gateway), Capability.LIST)
    issued = call(
        gateway, Capability.ISSUE, IssueRequest(csr_pem=b"x", names=("a.test",), idempotency_key="k")
    )
    assert isinstance(issued, IssueResult) and issued.pending_ref == "ref-k"


def test_notifier_call_goes_through_the_guard(registry: ConnectorRegistry, tmp_path: Path) -> None:
    pager = registry.build_notifier("fake-pager", {}, memory_context(tmp_path))
    sent = call(pager, Capability.SEND, Notification(event="certificate.expiring", subject="s", body="b"))
    assert sent == SendResult(delivered=True, message_id="certificate.expiring")
    assert pager.check().ok


@pytest.mark.parametrize(
    ("config", "field", "fragment"),
    [
        ({"default_validity_days": "ninety"}, "config.default_validity_days", "valid integer"),
        ({"key_type": "DSA-1024"}, "config.key_type", "'EC-P256'"),
        ({"colour": "blue"}, "config.colour", "Extra inputs are not permitted"),
        ({"max_validity_days": 30, "default_validity_days": 90}, "config.default_validity_days", "exceed"),
        ({"crl_url": "ftp://host/crl"}, "config.crl_url", "http"),
        ({"root_validity_days": 0}, "config.root_validity_days", "greater than or equal"),
    ],
)
def test_config_errors_name_the_field(
    config: dict[str, Any], field: str, fragment: str, tmp_path: Path
) -> None:
    registry = ConnectorRegistry.from_entry_points()
    with pytest.raises(InvalidInputError) as caught:
        registry.build_ca_gateway("local", config, memory_context(tmp_path))
    error = caught.value
    assert error.field == field
    assert error.http_status == 422
    assert error.message.startswith(f"{field}: ")
    assert fragment in error.message
    assert error.data["errors"][0]["field"] == field


def test_config_errors_never_echo_the_input(registry: ConnectorRegistry, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as caught:
        registry.build_ca_gateway(
            "fake-good", {"url": "https://ca", "api_key": ["hunter2-secret"]}, memory_context(tmp_path)
        )
    assert caught.value.field == "config.api_key"
    assert "hunter2" not in json.dumps(caught.value.to_problem())


def test_missing_required_field_is_named(registry: ConnectorRegistry, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as caught:
        registry.build_ca_gateway("fake-good", {"api_key": "k"}, memory_context(tmp_path))
    assert caught.value.field == "config.url"
    assert "Field required" in caught.value.message


def test_secrets_stay_hidden_in_a_built_connector(registry: ConnectorRegistry, tmp_path: Path) -> None:
    gateway = registry.build_ca_gateway(
        "fake-good", {"url": "https://ca", "api_key": "hunter2-secret"}, memory_context(tmp_path)
    )
    assert "hunter2" not in repr(gateway.config)
    api_key = gateway.config.api_key  # type: ignore[attr-defined]
    assert isinstance(api_key, SecretStr) and api_key.get_secret_value() == "hunter2-secret"


@pytest.mark.parametrize(
    ("kind", "type_key"),
    [(ConnectorKind.CA_GATEWAY, "no-such-ca"), (ConnectorKind.CA_GATEWAY, "fake-broken-import")],
)
def test_unavailable_type_is_invalid_input_on_type(
    registry: ConnectorRegistry, kind: ConnectorKind, type_key: str, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInputError) as caught:
        registry.build(kind, type_key, {}, memory_context(tmp_path))
    assert caught.value.field == "type"


def test_config_must_be_an_object(tmp_path: Path) -> None:
    registry = ConnectorRegistry.from_entry_points()
    with pytest.raises(InvalidInputError) as caught:
        registry.build_ca_gateway("local", ["not", "a", "dict"], memory_context(tmp_path))  # type: ignore[arg-type]
    assert caught.value.field == "config"


class _Direct(CAGateway):
    type_key: ClassVar[str] = "direct"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.ISSUE, Capability.ARI})
    Config: ClassVar[type[BaseModel]] = ConnectorConfig

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        return CheckResult(ok=True, message="fine")

    def get_chain(self, request: ChainRequest = CHAIN) -> ChainResult:
        return ChainResult(chain_pem=())

    def issue(self, request: IssueRequest) -> IssueResult:
        return IssueResult.pending("x")


def test_register_checks_the_class_directly() -> None:
    registry = ConnectorRegistry()
    with pytest.raises(ConnectorLoadError) as caught:
        registry.register(ConnectorKind.CA_GATEWAY, "direct", _Direct)
    assert caught.value.message == "_Direct declares but does not implement: ari (renewal_info)"
    with pytest.raises(ConnectorLoadError):
        validate_connector_class(ConnectorKind.NOTIFIER, "direct", _Direct)
    assert registry.types() == [] and registry.failures == []


def test_build_accepts_a_validated_model(tmp_path: Path) -> None:
    registry = ConnectorRegistry.from_entry_points()
    model = registry.validate_config(ConnectorKind.CA_GATEWAY, "local", {"key_type": "RSA-2048"})
    gateway = registry.build_ca_gateway("local", model, memory_context(tmp_path))
    assert gateway.type_key == "local" and gateway.config is model
    with pytest.raises(InvalidInputError) as caught:
        registry.build_ca_gateway("local", ConnectorConfig(), memory_context(tmp_path))
    assert caught.value.field == "config"


def test_notifier_kind_guards_its_own_method(tmp_path: Path) -> None:
    class Silent(Notifier):
        type_key: ClassVar[str] = "silent"

        def check(self, request: CheckRequest = CHECK) -> CheckResult:
            return CheckResult(ok=True, message="fine")

    registry = ConnectorRegistry()
    registry.register(ConnectorKind.NOTIFIER, "silent", Silent)
    silent = registry.build_notifier("silent", {}, memory_context(tmp_path))
    with pytest.raises(NotSupportedError):
        call(silent, Capability.SEND, Notification(event="e", subject="s", body="b"))
