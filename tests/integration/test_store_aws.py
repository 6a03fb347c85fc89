"""The aws-acm and aws-secrets-manager stores against moto's server over HTTP, driven by boto3.

Conformance, re-import keeping ARN and tags, paging over service pages, versions and rollback,
refused credentials, an unreachable endpoint, a deployment through the workflow and a store scan.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from sslclm.connectors.aws import AcmStore, SecretsManagerStore
from sslclm.connectors.aws.client import ALIAS_TAG
from sslclm.connectors.aws.paging import decode_cursor
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.deployments.tasks import fingerprint_of
from sslclm.errors import ConnectorError, InvalidInputError, NotFoundError
from sslclm.inventory.models import Certificate, Sighting
from sslclm.jobs.registry import load_task_modules
from sslclm.jobs.worker import Worker
from sslclm.pki import load_bundle
from sslclm.spi.capabilities import ConnectorKind
from sslclm.spi.registry import ConnectorRegistry
from sslclm.spi.store import InventoryRequest, RemoveRequest
from sslclm.spi.testing import CertificateStoreConformance, find_entry, memory_context, new_add_request
from tests.conftest import ApiUser
from tests.support.moto_server import REGION, free_port, moto_server, reset, store_config

API = "/api/v1"


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


@pytest.fixture
def aws(moto_url: str) -> str:
    reset(moto_url)
    return moto_url


def boto(url: str, service: str) -> Any:
    return boto3.client(
        service, region_name=REGION, endpoint_url=url, aws_access_key_id="x", aws_secret_access_key="x"
    )


def acm_store(url: str, tmp_path: Path, **config: object) -> AcmStore:
    return AcmStore(
        AcmStore.Config.model_validate(store_config(url, **config)), memory_context(tmp_path / "acm")
    )


def secrets_store(url: str, tmp_path: Path, **config: object) -> SecretsManagerStore:
    return SecretsManagerStore(
        SecretsManagerStore.Config.model_validate(store_config(url, **config)),
        memory_context(tmp_path / "sm"),
    )


def get_current(sm: Any, name: str) -> str:
    # Asks for the stage by name: moto answers an unlabelled read with the newest version even after
    # AWSCURRENT was moved back, where AWS answers with the AWSCURRENT version.
    value: str = sm.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")["SecretString"]
    return value


class TestAcmConformance(CertificateStoreConformance):
    @pytest.fixture
    def cert_store(self, aws: str, tmp_path: Path) -> AcmStore:
        return acm_store(aws, tmp_path)


class TestSecretsManagerConformance(CertificateStoreConformance):
    @pytest.fixture
    def cert_store(self, aws: str, tmp_path: Path) -> SecretsManagerStore:
        return secrets_store(aws, tmp_path)


class TestSecretsManagerPemBundleConformance(CertificateStoreConformance):
    @pytest.fixture
    def cert_store(self, aws: str, tmp_path: Path) -> SecretsManagerStore:
        return secrets_store(aws, tmp_path, value_format="pem-bundle", secret_name="tls/{alias}.pem")


# --- ACM -------------------------------------------------------------------------------------------


def test_acm_reimport_keeps_the_arn_and_the_tags(aws: str, tmp_path: Path) -> None:
    store = acm_store(aws, tmp_path, tags={"team": "web"})
    first, second = new_add_request("www"), new_add_request("www")
    assert not store.add(first).replaced
    arn = store.find_arn("www")
    assert arn is not None
    assert store.add(second).replaced
    acm = boto(aws, "acm")
    listed = acm.list_certificates(Includes={"keyTypes": ["EC_prime256v1"]})["CertificateSummaryList"]
    assert [summary["CertificateArn"] for summary in listed] == [arn], "a re-import keeps the one ARN"
    tags = {tag["Key"]: tag["Value"] for tag in acm.list_tags_for_certificate(CertificateArn=arn)["Tags"]}
    assert tags[ALIAS_TAG] == "www" and tags["team"] == "web"
    served = acm.get_certificate(CertificateArn=arn)
    assert fingerprint_of(served["Certificate"].encode()) == fingerprint_of(second.certificate_pem)
    assert fingerprint_of(served["CertificateChain"].encode()) == fingerprint_of(second.chain_pem[0])


def test_acm_finds_an_alias_by_its_tag_when_the_arn_is_not_remembered(aws: str, tmp_path: Path) -> None:
    writer = acm_store(aws, tmp_path / "a", page_size=2)
    requests = {alias: new_add_request(alias) for alias in ("one", "two", "three", "four", "five")}
    for request in requests.values():
        writer.add(request)
    # A second worker's instance, with empty state: it walks the account's pages and reads the tags.
    reader = acm_store(aws, tmp_path / "b", page_size=2)
    entry = reader.read_entry("four")
    assert entry is not None
    assert fingerprint_of(entry.certificate_pem) == fingerprint_of(requests["four"].certificate_pem)
    assert reader.find_arn("absent") is None
    reader.remove(RemoveRequest(alias="four"))
    assert writer.read_entry("four") is None, "the remembered ARN of a deleted certificate is dropped"


def test_acm_lists_certificates_it_did_not_import_under_their_id(aws: str, tmp_path: Path) -> None:
    request = new_add_request("foreign")
    arn = boto(aws, "acm").import_certificate(
        Certificate=request.certificate_pem, PrivateKey=request.private_key_pem
    )["CertificateArn"]
    entry = find_entry(acm_store(aws, tmp_path), arn.rsplit("/", 1)[-1])
    assert entry is not None and entry.details["arn"] == arn


def test_acm_refuses_a_certificate_without_its_key(aws: str, tmp_path: Path) -> None:
    good = new_add_request("nokey")
    with pytest.raises(InvalidInputError) as caught:
        acm_store(aws, tmp_path).add(type(good)(alias="nokey", certificate_pem=good.certificate_pem))
    assert caught.value.field == "private_key_pem"


# --- Secrets Manager -------------------------------------------------------------------------------


def test_secret_value_formats(aws: str, tmp_path: Path) -> None:
    sm = boto(aws, "secretsmanager")
    request = new_add_request("api")
    secrets_store(aws, tmp_path, tags={"env": "prod"}).add(request)
    value = json.loads(sm.get_secret_value(SecretId="sslclm/api")["SecretString"])
    assert value == {
        "certificate": request.certificate_pem.decode(),
        "chain": request.chain_pem[0].decode(),
        "private_key": request.private_key_pem.decode() if request.private_key_pem else None,
    }
    tags = {tag["Key"]: tag["Value"] for tag in sm.describe_secret(SecretId="sslclm/api")["Tags"]}
    assert tags["env"] == "prod" and tags[ALIAS_TAG] == "api"

    no_key = secrets_store(aws, tmp_path, secret_name="public/{alias}", include_private_key=False)
    assert no_key.needs_private_key is False
    no_key.add(
        type(request)(alias="api", certificate_pem=request.certificate_pem, chain_pem=request.chain_pem)
    )
    assert "private_key" not in json.loads(sm.get_secret_value(SecretId="public/api")["SecretString"])

    bundle = secrets_store(aws, tmp_path, secret_name="{alias}.pem", value_format="pem-bundle")
    bundle.add(request)
    loaded = load_bundle(sm.get_secret_value(SecretId="api.pem")["SecretString"].encode())
    assert len(loaded.certificates) == 2 and loaded.private_keys


def test_secret_versions_and_restore_previous(aws: str, tmp_path: Path) -> None:
    store = secrets_store(aws, tmp_path)
    sm = boto(aws, "secretsmanager")
    first, second = new_add_request("app"), new_add_request("app")
    store.add(first)
    store.add(second)

    def current() -> str:
        return fingerprint_of(json.loads(get_current(sm, "sslclm/app"))["certificate"].encode())

    previous = sm.get_secret_value(SecretId="sslclm/app", VersionStage="AWSPREVIOUS")["SecretString"]
    assert fingerprint_of(json.loads(previous)["certificate"].encode()) == fingerprint_of(
        first.certificate_pem
    )
    assert store.restore_previous("app")
    assert current() == fingerprint_of(first.certificate_pem)
    assert not store.restore_previous("app"), "a retried rollback changes nothing"
    assert current() == fingerprint_of(first.certificate_pem)
    # The next deployment after a rollback and its own rollback work the same way.
    third = new_add_request("app")
    store.add(third)
    assert current() == fingerprint_of(third.certificate_pem)
    assert store.restore_previous("app")
    assert current() == fingerprint_of(first.certificate_pem)

    # A secret created by the deployment being rolled back held nothing before: it goes away.
    store.add(new_add_request("fresh"))
    assert store.restore_previous("fresh")
    assert store.read_entry("fresh") is None
    assert not sm.list_secrets(Filters=[{"Key": "name", "Values": ["sslclm/fresh"]}])["SecretList"]


def test_removed_secret_waits_out_its_recovery_window(aws: str, tmp_path: Path) -> None:
    store = secrets_store(aws, tmp_path, recovery_window_days=7)
    sm = boto(aws, "secretsmanager")
    store.add(new_add_request("gone"))
    store.remove(RemoveRequest(alias="gone"))
    described = sm.describe_secret(SecretId="sslclm/gone")
    assert described.get("DeletedDate") is not None, "deletion is scheduled, not immediate"
    with pytest.raises(NotFoundError):
        store.remove(RemoveRequest(alias="gone"))
    assert find_entry(store, "gone") is None
    sm.restore_secret(SecretId="sslclm/gone")  # within the window the operator can still bring it back
    assert store.read_entry("gone") is not None

    forced = secrets_store(aws, tmp_path, force_delete_without_recovery=True)
    forced.remove(RemoveRequest(alias="gone"))
    assert not sm.list_secrets(IncludePlannedDeletion=True)["SecretList"]


def test_inventory_walks_several_service_pages(aws: str, tmp_path: Path) -> None:
    store = secrets_store(aws, tmp_path, page_size=2)
    aliases = {f"paged{n}" for n in range(5)}
    for alias in aliases:
        store.add(new_add_request(alias))
    sm = boto(aws, "secretsmanager")
    sm.create_secret(
        Name="sslclm/not-a-certificate", SecretString="hunter2", Tags=[{"Key": ALIAS_TAG, "Value": "x"}]
    )
    sm.create_secret(Name="other/elsewhere", SecretString="{}")
    seen: list[str] = []
    tokens = set()
    cursor: str | None = None
    while True:
        page = store.inventory(InventoryRequest(cursor=cursor, limit=100))
        assert len(page.entries) <= 2
        seen += [entry.alias for entry in page.entries]
        if page.next_cursor is None:
            break
        tokens.add(decode_cursor(page.next_cursor).token)
        cursor = page.next_cursor
    assert sorted(seen) == sorted(aliases)
    assert len(tokens) >= 2, "the listing took several Secrets Manager pages (NextToken)"


# --- credentials, reachability, roles, config ------------------------------------------------------


@pytest.mark.parametrize("make", [acm_store, secrets_store])
def test_refused_credentials_are_a_final_error_naming_them(tmp_path: Path, make: Any) -> None:
    with moto_server(tmp_path / "auth.log", authenticate=True) as url:
        store = make(url, tmp_path)
        with pytest.raises(ConnectorError) as caught:
            store.add(new_add_request("denied"))
        check = store.check()
    assert caught.value.retryable is False
    assert "refused the credentials" in caught.value.message
    assert "InvalidClientTokenId" in caught.value.message
    assert not check.ok and "InvalidClientTokenId" in check.message
    assert "wJalr" not in caught.value.message + check.message, "the secret key is never shown"


@pytest.mark.parametrize("make", [acm_store, secrets_store])
def test_unreachable_endpoint_is_retryable(tmp_path: Path, make: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    store = make(url, tmp_path, connect_timeout=1, read_timeout=1, max_attempts=1)
    with pytest.raises(ConnectorError) as caught:
        store.add(new_add_request("nowhere"))
    assert caught.value.retryable is True
    assert "127.0.0.1" in caught.value.message
    assert not store.check().ok


def test_assumed_role(aws: str, tmp_path: Path) -> None:
    store = secrets_store(aws, tmp_path, role_arn="arn:aws:iam::123456789012:role/deployer")
    store.add(new_add_request("via-role"))
    assert store.read_entry("via-role") is not None
    assert store.check().ok


@pytest.mark.parametrize(
    ("type_key", "config", "field"),
    [
        ("aws-acm", {"region": "Europe"}, "region"),
        ("aws-acm", {"region": "eu-west-1", "access_key_id": "AKIA"}, "secret_access_key"),
        ("aws-acm", {"region": "eu-west-1", "endpoint_url": "localhost:4566"}, "endpoint"),
        ("aws-acm", {"region": "eu-west-1", "tags": {"aws:owner": "x"}}, "tag"),
        ("aws-secrets-manager", {"region": "eu-west-1", "secret_name": "certs/static"}, "secret_name"),
        ("aws-secrets-manager", {"region": "eu-west-1", "recovery_window_days": 3}, "recovery_window_days"),
        ("aws-secrets-manager", {"region": "eu-west-1", "value_format": "pfx"}, "value_format"),
    ],
)
def test_bad_config_is_refused(type_key: str, config: dict[str, object], field: str) -> None:
    registry = ConnectorRegistry.from_entry_points()
    with pytest.raises(InvalidInputError) as caught:
        registry.validate_config(ConnectorKind.CERT_STORE, type_key, config)
    assert field in str(caught.value.message) + str(caught.value.field) + str(caught.value.data)


# --- through the platform --------------------------------------------------------------------------


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
        json={"dns_names": ["shop.example.com"], "profile": "web"},
        headers=admin,
    )
    assert created.status_code == 202, created.text
    run_jobs(platform)
    managed_id: int = created.json()["id"]
    return managed_id


def test_deploy_renew_and_undeploy_through_secrets_manager(
    aws: str, client: TestClient, api_users: dict[str, ApiUser], platform: Platform, managed: int
) -> None:
    admin, operator = api_users["admin"].headers, api_users["operator"].headers
    store = client.post(
        f"{API}/stores",
        json={"name": "aws-secrets", "type": "aws-secrets-manager", "config": store_config(aws)},
        headers=admin,
    )
    assert store.status_code == 201, store.text
    assert "wJalr" not in store.text, "the secret key is masked"
    assert client.post(f"{API}/stores/aws-secrets/check", headers=admin).json()["ok"] is True
    bound = client.post(
        f"{API}/bindings",
        json={"managed_certificate": str(managed), "store": "aws-secrets", "alias": "shop"},
        headers=operator,
    )
    assert bound.status_code == 201, bound.text
    run_jobs(platform)
    binding = client.get(f"{API}/bindings/{bound.json()['id']}", headers=operator).json()
    assert binding["status"] == "deployed", binding
    sm = boto(aws, "secretsmanager")
    value = json.loads(sm.get_secret_value(SecretId="sslclm/shop")["SecretString"])
    assert fingerprint_of(value["certificate"].encode()) == binding["last_deployed_fingerprint"]
    assert load_bundle(value["private_key"].encode()).private_keys, "the secret holds the key"

    renewed = client.post(f"{API}/managed-certificates/{managed}/renew", headers=operator)
    assert renewed.status_code == 202
    run_jobs(platform)
    after = client.get(f"{API}/bindings/{bound.json()['id']}", headers=operator).json()
    assert after["status"] == "deployed"
    assert after["last_deployed_fingerprint"] != binding["last_deployed_fingerprint"]
    previous = json.loads(
        sm.get_secret_value(SecretId="sslclm/shop", VersionStage="AWSPREVIOUS")["SecretString"]
    )
    assert fingerprint_of(previous["certificate"].encode()) == binding["last_deployed_fingerprint"]

    assert client.post(f"{API}/bindings/{bound.json()['id']}/undeploy", headers=operator).status_code == 202
    run_jobs(platform)
    assert (
        client.get(f"{API}/bindings/{bound.json()['id']}", headers=operator).json()["status"] == "undeployed"
    )
    assert sm.describe_secret(SecretId="sslclm/shop").get("DeletedDate") is not None


def test_deployment_with_refused_credentials_fails_with_the_reason(
    tmp_path: Path, client: TestClient, api_users: dict[str, ApiUser], platform: Platform, managed: int
) -> None:
    with moto_server(tmp_path / "auth.log", authenticate=True) as url:
        store = {"name": "locked", "type": "aws-acm", "config": store_config(url, max_attempts=1)}
        assert client.post(f"{API}/stores", json=store, headers=api_users["admin"].headers).status_code == 201
        bound = client.post(
            f"{API}/bindings",
            json={"managed_certificate": str(managed), "store": "locked", "alias": "shop"},
            headers=api_users["operator"].headers,
        )
        assert bound.status_code == 201, bound.text
        run_jobs(platform)
    binding = client.get(f"{API}/bindings/{bound.json()['id']}", headers=api_users["operator"].headers).json()
    assert binding["status"] == "failed"
    assert "refused the credentials" in binding["error"] and "InvalidClientTokenId" in binding["error"]


def test_store_scan_puts_acm_certificates_into_the_inventory(
    aws: str, tmp_path: Path, client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    direct = acm_store(aws, tmp_path)
    requests = [new_add_request(f"scanned{n}") for n in range(3)]
    for request in requests:
        direct.add(request)
    admin = api_users["admin"].headers
    store = {"name": "acm-prod", "type": "aws-acm", "config": store_config(aws, page_size=2)}
    assert client.post(f"{API}/stores", json=store, headers=admin).status_code == 201
    scan = client.post(f"{API}/stores/acm-prod/scan", headers=admin)
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
        assert (location, kind, source) == (f"acm-prod/{request.alias}", "store", "store:aws-acm")
