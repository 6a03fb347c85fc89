"""The ``azure-keyvault`` store against a fake Key Vault and Microsoft Entra ID over real TLS on loopback.

No Key Vault emulator exists, so :mod:`tests.support.fakes.azure_keyvault` follows the documented REST API;
the connector drives it through the real Azure SDK (``azure-keyvault-certificates``,
``azure-keyvault-secrets``, ``azure-identity`` over MSAL), challenge flow and token endpoint included.
"""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient
from fastapi.testclient import TestClient
from sqlalchemy import select

from sslclm.connectors.azure_keyvault import AzureKeyVaultStore
from sslclm.connectors.azure_keyvault.store import ALIAS_TAG, RESTORED_TAG
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.deployments.tasks import fingerprint_of
from sslclm.errors import ConflictError, ConnectorError, InvalidInputError, NotFoundError
from sslclm.inventory.models import Certificate, Sighting
from sslclm.jobs.registry import load_task_modules
from sslclm.jobs.worker import Worker
from sslclm.pki import load_bundle
from sslclm.spi.capabilities import ConnectorKind
from sslclm.spi.registry import ConnectorRegistry
from sslclm.spi.store import AddRequest, InventoryRequest, RemoveRequest
from sslclm.spi.testing import (
    CertificateStoreConformance,
    find_entry,
    memory_context,
    new_add_request,
)
from tests.conftest import ApiUser
from tests.support.fakes.azure_keyvault import AzureCloud, running_key_vault

API = "/api/v1"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzureCloud]:
    with running_key_vault(tmp_path_factory.mktemp("azure")) as running:
        yield running


@pytest.fixture
def own_cloud(tmp_path: Path) -> Iterator[AzureCloud]:
    """A vault of the test's own (the platform tests run once per database with the same aliases)."""
    with running_key_vault(tmp_path / "azure") as running:
        yield running


def store_config(cloud: AzureCloud, **overrides: Any) -> dict[str, Any]:
    return {
        "vault_url": cloud.vault_url,
        "tenant_id": cloud.tenant_id,
        "client_id": cloud.client_id,
        "client_secret": cloud.client_secret,
        "authority_host": cloud.authority_host,
        # The fake's authority is no host Microsoft Entra knows, and the vault's challenge names
        # https://vault.azure.net while the vault answers at 127.0.0.1: both SDK options exist for this.
        "disable_instance_discovery": True,
        "verify_challenge_resource": False,
        "ca_bundle": cloud.ca_bundle,
        "max_retries": 0,
        **overrides,
    }


def make_store(cloud: AzureCloud, tmp_path: Path, **overrides: Any) -> AzureKeyVaultStore:
    config = AzureKeyVaultStore.Config.model_validate(store_config(cloud, **overrides))
    return AzureKeyVaultStore(config, memory_context(tmp_path / "ctx"))


@contextmanager
def socket_port() -> Iterator[int]:
    """A loopback port bound but never listened on, so connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def fingerprint(pem: bytes) -> bytes:
    return load_bundle(pem).ders[0]


class TestAzureKeyVaultConformance(CertificateStoreConformance):
    alias_prefix = "conf"

    @pytest.fixture
    def cert_store(self, cloud: AzureCloud, tmp_path: Path) -> AzureKeyVaultStore:
        return make_store(cloud, tmp_path)


def test_registered_under_its_type_key(cloud: AzureCloud) -> None:
    registry = ConnectorRegistry.from_entry_points()
    config = registry.validate_config(ConnectorKind.CERT_STORE, "azure-keyvault", store_config(cloud))
    assert isinstance(config, AzureKeyVaultStore.Config)
    assert cloud.client_secret not in repr(config)


def test_challenge_then_client_credentials_token(own_cloud: AzureCloud, tmp_path: Path) -> None:
    # A vault of its own: the SDK caches each vault's challenge for the whole process.
    cloud = own_cloud
    challenges, seen = cloud.vault.challenges, len(cloud.entra.requests)
    store = make_store(cloud, tmp_path)
    assert store.check().ok
    assert cloud.vault.challenges == challenges + 1, "the first request elicits the Bearer challenge"
    asked = cloud.entra.requests[seen:]
    tenant = cloud.tenant_id
    assert ("GET", f"/{tenant}/v2.0/.well-known/openid-configuration") in asked
    assert ("POST", f"/{tenant}/oauth2/v2.0/token") in asked
    assert store.check().ok
    assert cloud.vault.challenges == challenges + 1, "the token is cached and reused"


def test_pfx_imported_with_alias_tag_and_readable_key(cloud: AzureCloud, tmp_path: Path) -> None:
    store = make_store(cloud, tmp_path)
    request = new_add_request("shop.example_com")
    store.add(request)
    name = store.certificate_name("shop.example_com")
    assert name == "shop-example-com"
    assert name in cloud.vault.names()
    # Read back with the SDK's own secret client: the version's secret is the PFX with key and chain.
    credential = ClientSecretCredential(
        cloud.tenant_id,
        cloud.client_id,
        cloud.client_secret,
        authority=cloud.authority_host,
        disable_instance_discovery=True,
        connection_verify=cloud.ca_bundle,
    )
    secrets = SecretClient(
        cloud.vault_url,
        credential,
        api_version="7.5",
        verify_challenge_resource=False,
        connection_verify=cloud.ca_bundle,
    )
    secret = secrets.get_secret(name)
    assert secret.properties.content_type == "application/x-pkcs12"
    assert secret.value is not None
    bundle = load_bundle(base64.b64decode(secret.value))
    assert bundle.ders[0] == fingerprint(request.certificate_pem)
    assert fingerprint(request.chain_pem[0]) in bundle.ders
    assert bundle.private_keys, "the PFX in the vault has no key"
    assert secret.properties.tags is not None and secret.properties.tags[ALIAS_TAG] == "shop.example_com"
    entry = store.read_entry("shop.example_com")
    assert entry is not None and entry.has_private_key
    assert entry.details["name"] == name


def test_versions_and_restore_previous(cloud: AzureCloud, tmp_path: Path) -> None:
    store = make_store(cloud, tmp_path)
    alias = "rollback"
    first, second = new_add_request(alias), new_add_request(alias)
    store.add(first)
    assert store.add(second).replaced
    name = store.certificate_name(alias)
    assert cloud.vault.version_count(name) == 2
    entry = store.read_entry(alias)
    assert entry is not None and fingerprint(entry.certificate_pem) == fingerprint(second.certificate_pem)

    assert store.restore_previous(alias)
    entry = store.read_entry(alias)
    assert entry is not None and fingerprint(entry.certificate_pem) == fingerprint(first.certificate_pem)
    assert RESTORED_TAG in entry.details["tags"]
    assert cloud.vault.version_count(name) == 3  # Key Vault keeps every version; the old one came back

    assert store.restore_previous(alias)  # a retried rollback changes nothing
    assert cloud.vault.version_count(name) == 3
    again = store.read_entry(alias)
    assert again is not None and fingerprint(again.certificate_pem) == fingerprint(first.certificate_pem)

    third = new_add_request(alias)  # after a restore, the next deployment and its rollback work as before
    store.add(third)
    assert store.restore_previous(alias)
    entry = store.read_entry(alias)
    assert entry is not None and fingerprint(entry.certificate_pem) == fingerprint(first.certificate_pem)


def test_restore_after_the_first_add_removes_the_certificate(cloud: AzureCloud, tmp_path: Path) -> None:
    store = make_store(cloud, tmp_path, purge_on_remove=True)
    store.add(new_add_request("fresh"))
    assert store.restore_previous("fresh")
    assert store.read_entry("fresh") is None
    assert "fresh" not in cloud.vault.names() and "fresh" not in cloud.vault.deleted_names()
    assert store.restore_previous("fresh") is False


def test_remove_soft_deletes_or_purges(cloud: AzureCloud, tmp_path: Path) -> None:
    keep = make_store(cloud, tmp_path)
    keep.add(new_add_request("soft"))
    keep.remove(RemoveRequest(alias="soft"))
    assert "soft" in cloud.vault.deleted_names()
    with pytest.raises(ConnectorError) as caught:  # Key Vault keeps the name until it is purged
        keep.add(new_add_request("soft"))
    assert "deleted but recoverable" in caught.value.message and not caught.value.retryable

    purge = make_store(cloud, tmp_path, purge_on_remove=True)
    purge.add(new_add_request("hard"))
    purge.remove(RemoveRequest(alias="hard"))
    assert "hard" not in cloud.vault.deleted_names()
    purge.add(new_add_request("hard"))  # the name is free again at once
    with pytest.raises(NotFoundError):
        purge.remove(RemoveRequest(alias="absent"))


def test_aliases_that_map_to_one_name_are_refused(cloud: AzureCloud, tmp_path: Path) -> None:
    store = make_store(cloud, tmp_path)
    store.add(new_add_request("api.example"))
    with pytest.raises(ConflictError) as caught:
        store.add(new_add_request("api_example"))
    assert "api-example" in caught.value.message
    assert store.read_entry("api_example") is None


def test_name_prefix_and_too_long_alias(cloud: AzureCloud, tmp_path: Path) -> None:
    store = make_store(cloud, tmp_path, name_prefix="prod-")
    store.add(new_add_request("web"))
    assert "prod-web" in cloud.vault.names()
    entry = find_entry(store, "web")
    assert entry is not None and entry.details["name"] == "prod-web"
    with pytest.raises(InvalidInputError) as caught:
        store.add(new_add_request("x" * 130, name="long.example.test"))
    assert caught.value.field == "alias"


def test_key_is_required_and_must_match(cloud: AzureCloud, tmp_path: Path) -> None:
    store = make_store(cloud, tmp_path)
    good, other = new_add_request("keyless"), new_add_request("other")
    with pytest.raises(InvalidInputError, match="private key"):
        store.add(AddRequest(alias="keyless", certificate_pem=good.certificate_pem))
    with pytest.raises(InvalidInputError, match="does not belong"):
        store.add(
            AddRequest(
                alias="keyless", certificate_pem=good.certificate_pem, private_key_pem=other.private_key_pem
            )
        )
    assert store.read_entry("keyless") is None


def test_password_less_pfx(cloud: AzureCloud, tmp_path: Path) -> None:
    store = make_store(cloud, tmp_path, protect_pfx=False)
    request = new_add_request("open-pfx")
    store.add(request)
    entry = store.read_entry("open-pfx")
    assert entry is not None and fingerprint(entry.certificate_pem) == fingerprint(request.certificate_pem)


def test_inventory_pages_follow_next_link(cloud: AzureCloud, tmp_path: Path) -> None:
    store = make_store(cloud, tmp_path, name_prefix="paging-")
    for n in range(4):
        store.add(new_add_request(f"p{n}"))
    cursors: list[str] = []
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = store.inventory(InventoryRequest(cursor=cursor, limit=3))
        assert len(page.entries) <= 3
        seen += [entry.alias for entry in page.entries]
        if page.next_cursor is None:
            break
        cursors.append(page.next_cursor)
        cursor = page.next_cursor
    assert {f"p{n}" for n in range(4)} <= set(seen)
    assert cursors and all("$skiptoken=" in c for c in cursors)
    assert len(seen) == len(set(seen))


def test_wrong_client_secret_is_a_clear_non_retryable_error(cloud: AzureCloud, tmp_path: Path) -> None:
    store = make_store(cloud, tmp_path, client_secret="not-the-secret")
    with pytest.raises(ConnectorError) as caught:
        store.add(new_add_request("denied"))
    assert "credentials refused" in caught.value.message
    assert "AADSTS7000215" in caught.value.message
    assert caught.value.retryable is False
    assert "not-the-secret" not in caught.value.message
    check = store.check()
    assert not check.ok and "credentials refused" in check.message


def test_vault_access_denied_is_a_clear_non_retryable_error(cloud: AzureCloud, tmp_path: Path) -> None:
    store = make_store(cloud, tmp_path)
    cloud.vault.forbidden_clients.add(cloud.client_id)
    try:
        with pytest.raises(ConnectorError) as caught:
            store.inventory(InventoryRequest())
    finally:
        cloud.vault.forbidden_clients.clear()
    assert "credentials refused by the vault (HTTP 403" in caught.value.message
    assert caught.value.retryable is False


@pytest.mark.parametrize("kind", ["429", "503"])
def test_throttling_and_outages_are_retryable(cloud: AzureCloud, tmp_path: Path, kind: str) -> None:
    store = make_store(cloud, tmp_path)
    store.check()  # the challenge and the token are behind us: the fault hits the call itself
    if kind == "429":
        cloud.vault.fail_next("429", path="/certificates")
    else:
        cloud.vault.fail_next("status", status=503, path="/certificates")
    with pytest.raises(ConnectorError) as caught:
        store.inventory(InventoryRequest())
    assert caught.value.retryable is True
    assert f"HTTP {kind}" in caught.value.message


def test_sdk_retries_a_throttled_call_by_itself(cloud: AzureCloud, tmp_path: Path) -> None:
    store = make_store(cloud, tmp_path, max_retries=2)
    store.check()
    cloud.vault.fail_next("429", path="/certificates", retry_after=0)
    assert store.check().ok


@pytest.mark.parametrize("setting", ["vault_url", "authority_host"])
def test_unreachable_vault_or_authority_is_retryable(cloud: AzureCloud, tmp_path: Path, setting: str) -> None:
    store = make_store(cloud, tmp_path, **{setting: "https://127.0.0.1:9"}, timeout_seconds=2)
    with pytest.raises(ConnectorError) as caught:
        store.add(new_add_request("nowhere"))
    assert caught.value.retryable is True
    assert "cannot reach" in caught.value.message
    assert "credentials refused" not in caught.value.message
    assert not store.check().ok


def test_untrusted_vault_certificate_names_the_setting(cloud: AzureCloud, tmp_path: Path) -> None:
    store = make_store(cloud, tmp_path, ca_bundle=None)
    result = store.check()
    assert not result.ok
    assert "ca_bundle" in result.message


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"vault_url": "http://vault.example"}, "vault_url"),
        ({"authority_host": "login.microsoftonline.com"}, "authority_host"),
        ({"name_prefix": "bad_prefix"}, "name_prefix"),
        ({"api_version": "2016-10-01"}, "api_version"),
        ({"ca_bundle": "relative.pem"}, "ca_bundle"),
    ],
)
def test_bad_config_is_refused(cloud: AzureCloud, overrides: dict[str, Any], field: str) -> None:
    registry = ConnectorRegistry.from_entry_points()
    with pytest.raises(InvalidInputError) as caught:
        registry.validate_config(ConnectorKind.CERT_STORE, "azure-keyvault", store_config(cloud, **overrides))
    assert field in str(caught.value.message) + str(caught.value.field)


# --- through the platform: deployment workflow and store scan ------------------------------------------


def run_jobs(platform: Platform) -> None:
    load_task_modules()
    Worker(platform, concurrency=2, poll_interval=0.05).run_until_idle(timeout=60)


@pytest.fixture
def managed(client: TestClient, api_users: dict[str, ApiUser], platform: Platform) -> int:
    admin = api_users["admin"].headers
    ca = {"name": "internal", "type": "local", "config": {}}
    assert client.post(f"{API}/ca-connections", json=ca, headers=admin).status_code == 201
    profile = {"name": "web", "ca_connection": "internal", "validity_days": 30}
    assert client.post(f"{API}/profiles", json=profile, headers=admin).status_code == 201
    created = client.post(
        f"{API}/managed-certificates",
        json={"dns_names": ["www.example.com"], "profile": "web"},
        headers=admin,
    )
    assert created.status_code == 202, created.text
    run_jobs(platform)
    managed_id: int = created.json()["id"]
    return managed_id


def _add_vault_store(client: TestClient, admin: dict[str, str], cloud: AzureCloud, name: str) -> None:
    created = client.post(
        f"{API}/stores",
        json={"name": name, "type": "azure-keyvault", "config": store_config(cloud)},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    assert cloud.client_secret not in created.text, "the client secret is masked"


def _held(cloud: AzureCloud, tmp_path: Path, alias: str) -> str | None:
    entry = make_store(cloud, tmp_path / "reader").read_entry(alias)
    return fingerprint_of(entry.certificate_pem) if entry else None


def test_deploy_renew_redeploy_and_undeploy_to_key_vault(
    own_cloud: AzureCloud,
    tmp_path: Path,
    client: TestClient,
    api_users: dict[str, ApiUser],
    platform: Platform,
    managed: int,
) -> None:
    admin, operator = api_users["admin"].headers, api_users["operator"].headers
    _add_vault_store(client, admin, own_cloud, "vault")
    check = client.post(f"{API}/stores/vault/check", headers=admin)
    assert check.json()["ok"] is True, check.text
    bound = client.post(
        f"{API}/bindings",
        json={"managed_certificate": str(managed), "store": "vault", "alias": "www.example.com"},
        headers=operator,
    )
    assert bound.status_code == 201, bound.text
    run_jobs(platform)
    binding = client.get(f"{API}/bindings/{bound.json()['id']}", headers=operator).json()
    assert binding["status"] == "deployed", binding
    assert own_cloud.vault.names() == ["www-example-com"]
    assert _held(own_cloud, tmp_path, "www.example.com") == binding["last_deployed_fingerprint"]

    # A renewal deploys a new version by itself; Key Vault keeps the old one.
    assert client.post(f"{API}/managed-certificates/{managed}/renew", headers=operator).status_code == 202
    run_jobs(platform)
    renewed = client.get(f"{API}/bindings/{bound.json()['id']}", headers=operator).json()
    assert renewed["status"] == "deployed", renewed
    assert renewed["last_deployed_fingerprint"] != binding["last_deployed_fingerprint"]
    assert _held(own_cloud, tmp_path, "www.example.com") == renewed["last_deployed_fingerprint"]
    assert own_cloud.vault.version_count("www-example-com") == 2

    again = client.post(f"{API}/bindings/{bound.json()['id']}/redeploy", headers=operator)
    assert again.status_code == 202, again.text
    run_jobs(platform)
    redeployed = client.get(f"{API}/bindings/{bound.json()['id']}", headers=operator).json()
    assert redeployed["status"] == "deployed"
    assert _held(own_cloud, tmp_path, "www.example.com") == renewed["last_deployed_fingerprint"]

    removed = client.post(f"{API}/bindings/{bound.json()['id']}/undeploy", headers=operator)
    assert removed.status_code == 202
    run_jobs(platform)
    final = client.get(f"{API}/bindings/{bound.json()['id']}", headers=operator).json()
    assert final["status"] == "undeployed"
    assert own_cloud.vault.names() == [] and own_cloud.vault.deleted_names() == ["www-example-com"]


def test_failed_verification_restores_the_previous_version(
    own_cloud: AzureCloud,
    tmp_path: Path,
    client: TestClient,
    api_users: dict[str, ApiUser],
    platform: Platform,
    managed: int,
) -> None:
    admin, operator = api_users["admin"].headers, api_users["operator"].headers
    operators_own = new_add_request("www")
    make_store(own_cloud, tmp_path / "direct").add(operators_own)
    _add_vault_store(client, admin, own_cloud, "vault")
    with socket_port() as port:  # nothing answers there: the endpoint check fails
        bound = client.post(
            f"{API}/bindings",
            json={
                "managed_certificate": str(managed),
                "store": "vault",
                "alias": "www",
                "options": {"verify_timeout": 0.5},
                "verify": {"host": "127.0.0.1", "port": port},
            },
            headers=operator,
        )
        assert bound.status_code == 201, bound.text
        run_jobs(platform)
    binding = client.get(f"{API}/bindings/{bound.json()['id']}", headers=operator).json()
    assert binding["status"] == "failed", binding
    assert "restored" in binding["error"], binding["error"]
    assert _held(own_cloud, tmp_path, "www") == fingerprint_of(operators_own.certificate_pem)
    assert own_cloud.vault.version_count("www") == 3  # the operator's, the platform's, the operator's again


def test_refused_credentials_fail_the_deployment_with_the_reason(
    own_cloud: AzureCloud, client: TestClient, api_users: dict[str, ApiUser], platform: Platform, managed: int
) -> None:
    admin, operator = api_users["admin"].headers, api_users["operator"].headers
    config = store_config(own_cloud, client_secret="revoked-secret")
    created = client.post(
        f"{API}/stores", json={"name": "locked", "type": "azure-keyvault", "config": config}, headers=admin
    )
    assert created.status_code == 201, created.text
    check = client.post(f"{API}/stores/locked/check", headers=admin).json()
    assert check["ok"] is False and "credentials refused" in check["message"]
    bound = client.post(
        f"{API}/bindings",
        json={"managed_certificate": str(managed), "store": "locked", "alias": "www"},
        headers=operator,
    )
    assert bound.status_code == 201, bound.text
    run_jobs(platform)
    binding = client.get(f"{API}/bindings/{bound.json()['id']}", headers=operator).json()
    assert binding["status"] == "failed"
    assert "credentials refused" in binding["error"] and "AADSTS7000215" in binding["error"]
    assert "revoked-secret" not in binding["error"]
    assert own_cloud.vault.names() == []


def test_store_scan_puts_vault_certificates_into_the_inventory(
    own_cloud: AzureCloud,
    tmp_path: Path,
    client: TestClient,
    api_users: dict[str, ApiUser],
    platform: Platform,
) -> None:
    direct = make_store(own_cloud, tmp_path / "direct")
    requests = [new_add_request(f"scanned.{n}") for n in range(3)]
    for request in requests:
        direct.add(request)
    admin = api_users["admin"].headers
    _add_vault_store(client, admin, own_cloud, "vault-prod")
    scan = client.post(f"{API}/stores/vault-prod/scan", headers=admin)
    assert scan.status_code == 202, scan.text
    run_jobs(platform)
    with session_scope(platform.sessions) as session:
        rows = session.execute(
            select(Certificate.fingerprint_sha256, Sighting.location, Sighting.kind, Sighting.source).join(
                Sighting, Sighting.certificate_id == Certificate.id
            )
        ).all()
    found = {fingerprint: (location, kind, source) for fingerprint, location, kind, source in rows}
    for request in requests:
        location, kind, source = found[fingerprint_of(request.certificate_pem)]
        assert (location, kind, source) == (f"vault-prod/{request.alias}", "store", "store:azure-keyvault")
