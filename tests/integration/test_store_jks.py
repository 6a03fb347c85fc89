"""The jks store on real keystores, read back and made by keytool; a deployment through the workflow."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sslclm.connectors.jks import JksStore
from sslclm.core.platform import Platform
from sslclm.deployments.tasks import fingerprint_of
from sslclm.errors import ConnectorError, InvalidInputError, NotFoundError
from sslclm.jobs.registry import load_task_modules
from sslclm.jobs.worker import Worker
from sslclm.pki import load_bundle, public_key_sha256
from sslclm.spi.capabilities import ConnectorKind
from sslclm.spi.registry import ConnectorRegistry
from sslclm.spi.store import CreateRequest, InventoryRequest, RemoveRequest
from sslclm.spi.testing import CertificateStoreConformance, memory_context, new_add_request
from tests.conftest import ApiUser

STOREPASS = "changeit-jks"
API = "/api/v1"


def make_store(path: Path, **config: object) -> JksStore:
    values = {"path": str(path), "store_password": STOREPASS, **config}
    return JksStore(JksStore.Config.model_validate(values), memory_context(path.parent.parent / "ctx"))


def keytool(*args: str) -> str:
    done = subprocess.run(["keytool", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def keytool_list(path: Path, storetype: str = "JKS") -> str:
    return keytool("-list", "-v", "-storetype", storetype, "-keystore", str(path), "-storepass", STOREPASS)


def listed_entries(listing: str) -> dict[str, str]:
    """{alias: entry type} from ``keytool -list -v``."""
    aliases = re.findall(r"^Alias name: (.+)$", listing, re.MULTILINE)
    kinds = re.findall(r"^Entry type: (.+)$", listing, re.MULTILINE)
    return dict(zip(aliases, kinds, strict=True))


def keytool_genkeypair(path: Path, alias: str, storetype: str = "JKS") -> None:
    keytool(
        *("-genkeypair", "-alias", alias, "-keyalg", "EC", "-groupname", "secp256r1"),
        *("-dname", f"CN={alias}.example.test", "-validity", "30", "-storetype", storetype),
        *("-keystore", str(path), "-storepass", STOREPASS, "-keypass", STOREPASS),
    )


@pytest.fixture
def keystore_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "java"
    directory.mkdir()
    return directory


class TestJksConformance(CertificateStoreConformance):
    @pytest.fixture
    def cert_store(self, keystore_dir: Path) -> JksStore:
        store = make_store(keystore_dir / "server.jks")
        assert store.create(CreateRequest()).created
        return store


def test_entry_point_loads() -> None:
    registry = ConnectorRegistry.from_entry_points()
    assert registry.get(ConnectorKind.CERT_STORE, "jks").cls is JksStore


def test_keytool_reads_the_private_key_entry_and_chain(keystore_dir: Path) -> None:
    path = keystore_dir / "server.jks"
    store = make_store(path)
    store.add(new_add_request("tomcat"))
    listing = keytool_list(path)
    assert listed_entries(listing) == {"tomcat": "PrivateKeyEntry"}
    assert "Certificate chain length: 2" in listing
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_separate_key_password_is_what_java_decrypts_with(keystore_dir: Path) -> None:
    path = keystore_dir / "server.jks"
    store = make_store(path, key_password="key-secret")
    request = new_add_request("app")
    store.add(request)
    exported = keystore_dir / "app.p12"
    keytool(
        *("-importkeystore", "-srckeystore", str(path), "-srcstoretype", "JKS", "-srcstorepass", STOREPASS),
        *("-srcalias", "app", "-srckeypass", "key-secret", "-destkeystore", str(exported)),
        *("-deststoretype", "PKCS12", "-deststorepass", "export-pass", "-noprompt"),
    )
    pem = subprocess.run(
        ["openssl", "pkcs12", "-in", str(exported), "-passin", "pass:export-pass", "-nodes"],
        capture_output=True,
        check=True,
    ).stdout
    bundle = load_bundle(pem)
    leaf = load_bundle(request.certificate_pem).certificates[0]
    assert bundle.certificates[0] == leaf
    assert [public_key_sha256(k) for k in bundle.private_keys] == [public_key_sha256(leaf)]


def test_adds_to_a_keystore_made_by_keytool_and_keeps_its_entries(keystore_dir: Path) -> None:
    path = keystore_dir / "existing.jks"
    keytool_genkeypair(path, "original")
    ca_pem = new_add_request("unused").chain_pem[0]
    (keystore_dir / "ca.pem").write_bytes(ca_pem)
    keytool(
        *("-importcert", "-noprompt", "-alias", "partner-ca", "-file", str(keystore_dir / "ca.pem")),
        *("-storetype", "JKS", "-keystore", str(path), "-storepass", STOREPASS),
    )
    before = listed_entries(keytool_list(path))
    store = make_store(path)
    assert store.check().ok
    assert not store.add(new_add_request("deployed")).replaced
    after = listed_entries(keytool_list(path))
    assert after == {**before, "deployed": "PrivateKeyEntry"}
    assert after["original"] == "PrivateKeyEntry" and after["partner-ca"] == "trustedCertEntry"
    inventory = {e.alias: e for e in store.inventory(InventoryRequest()).entries}
    assert set(inventory) == {"original", "partner-ca", "deployed"}
    assert inventory["partner-ca"].details["entry_type"] == "trusted-certificate"
    assert not inventory["partner-ca"].has_private_key and inventory["original"].has_private_key
    # keytool's own key entry still decrypts with its password after our rewrite.
    keytool(
        *("-certreq", "-alias", "original", "-keystore", str(path), "-storetype", "JKS"),
        *("-storepass", STOREPASS, "-keypass", STOREPASS, "-file", str(keystore_dir / "req.csr")),
    )
    store.remove(RemoveRequest(alias="deployed"))
    assert listed_entries(keytool_list(path)) == before


def test_concurrent_adds_lose_no_entry(keystore_dir: Path) -> None:
    """Read-modify-write under the directory lock: parallel deployments each keep the others' entries."""
    path = keystore_dir / "shared.jks"
    requests = [new_add_request(f"svc{n}") for n in range(12)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda request: make_store(path).add(request), requests))
    listed = listed_entries(keytool_list(path))
    assert listed == {f"svc{n}": "PrivateKeyEntry" for n in range(12)}


def test_replace_keeps_previous_file_and_restores_it(keystore_dir: Path) -> None:
    path = keystore_dir / "server.jks"
    store = make_store(path)
    first, second = new_add_request("api"), new_add_request("api")
    store.add(first)
    before = path.read_bytes()
    assert store.add(second).replaced
    assert (keystore_dir / "server.jks.previous").read_bytes() == before
    assert store.restore_previous("api")
    entry = store.read_entry("API")  # aliases match case-insensitively, as in Java
    assert entry is not None and fingerprint_of(entry.certificate_pem) == fingerprint_of(
        first.certificate_pem
    )


def test_wrong_password_leaves_the_keystore_untouched(keystore_dir: Path) -> None:
    path = keystore_dir / "server.jks"
    keytool_genkeypair(path, "original")
    before = path.read_bytes()
    store = make_store(path, store_password="not-the-password")
    with pytest.raises(ConnectorError) as caught:
        store.add(new_add_request("new"))
    assert "wrong keystore password" in caught.value.message and not caught.value.retryable
    assert path.read_bytes() == before and not (keystore_dir / "server.jks.previous").exists()
    check = store.check()
    assert not check.ok and "wrong keystore password" in check.message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xfe\xed\xfe\xed\x00\x00\x00\x02\x00\x00\x00\x05truncated", "corrupt Java keystore"),
        (b"this is not a keystore at all", "not a JKS or JCEKS keystore"),
    ],
)
def test_corrupt_keystore_is_refused_and_kept(keystore_dir: Path, content: bytes, message: str) -> None:
    path = keystore_dir / "server.jks"
    path.write_bytes(content)
    store = make_store(path)
    with pytest.raises(ConnectorError) as caught:
        store.add(new_add_request("new"))
    assert message in caught.value.message and not caught.value.retryable
    assert path.read_bytes() == content
    assert not store.check().ok


def test_pkcs12_keystore_is_pointed_at_the_pkcs12_store(keystore_dir: Path) -> None:
    path = keystore_dir / "default.p12"
    keytool_genkeypair(path, "original", storetype="PKCS12")
    with pytest.raises(ConnectorError, match="use the pkcs12 store"):
        make_store(path).inventory(InventoryRequest())


def test_jceks_is_listed_but_not_written(keystore_dir: Path) -> None:
    path = keystore_dir / "legacy.jceks"
    keytool_genkeypair(path, "original", storetype="JCEKS")
    before = path.read_bytes()
    store = make_store(path)
    assert "JCEKS" in store.check().message
    entries = store.inventory(InventoryRequest()).entries
    assert [(e.alias, e.has_private_key) for e in entries] == [("original", True)]
    with pytest.raises(ConnectorError, match="JCEKS keystore: it can be listed but not written"):
        store.add(new_add_request("new"))
    assert path.read_bytes() == before


@pytest.fixture
def immutable_dir(keystore_dir: Path) -> Iterator[Path]:
    """Unwritable even for root (the tests run as root, so a mode alone would not stop the write)."""
    subprocess.run(["chattr", "+i", str(keystore_dir)], check=True)
    try:
        yield keystore_dir
    finally:
        subprocess.run(["chattr", "-i", str(keystore_dir)], check=True)


def test_read_only_directory_fails_cleanly(immutable_dir: Path) -> None:
    store = make_store(immutable_dir / "server.jks")
    with pytest.raises(ConnectorError) as caught:
        store.add(new_add_request("ro"))
    assert str(immutable_dir) in caught.value.message and not caught.value.retryable
    assert list(immutable_dir.iterdir()) == []
    assert not store.check().ok


def test_remove_of_an_unknown_alias(keystore_dir: Path) -> None:
    store = make_store(keystore_dir / "server.jks")
    with pytest.raises(NotFoundError):
        store.remove(RemoveRequest(alias="ghost"))
    store.add(new_add_request("present"))
    with pytest.raises(NotFoundError):
        store.remove(RemoveRequest(alias="ghost"))


def test_bad_alias_and_config(keystore_dir: Path) -> None:
    store = make_store(keystore_dir / "server.jks")
    request = new_add_request("x")
    with pytest.raises(InvalidInputError) as caught:
        store.add(type(request)(alias=" padded", certificate_pem=request.certificate_pem))
    assert caught.value.field == "alias"
    assert not (keystore_dir / "server.jks").exists()
    for bad, message in [({"path": "rel.jks"}, "absolute"), ({"store_password": ""}, "must not be empty")]:
        with pytest.raises(ValueError, match=message):
            JksStore.Config.model_validate(
                {"path": str(keystore_dir / "a.jks"), "store_password": "x", **bad}
            )


# --- one deployment through the workflow -----------------------------------------------------------


def run_jobs(platform: Platform) -> None:
    load_task_modules()
    Worker(platform, concurrency=2, poll_interval=0.05).run_until_idle(timeout=60)


def test_bound_managed_certificate_deploys_to_a_jks_store(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform, keystore_dir: Path
) -> None:
    admin, operator = api_users["admin"].headers, api_users["operator"].headers
    ca = client.post(
        f"{API}/ca-connections", json={"name": "internal", "type": "local", "config": {}}, headers=admin
    )
    assert ca.status_code == 201, ca.text
    profile = {"name": "web", "ca_connection": "internal", "validity_days": 30}
    assert client.post(f"{API}/profiles", json=profile, headers=admin).status_code == 201
    managed = client.post(
        f"{API}/managed-certificates",
        json={"dns_names": ["app.example.com"], "profile": "web"},
        headers=admin,
    )
    assert managed.status_code == 202, managed.text
    run_jobs(platform)
    path = keystore_dir / "tomcat.jks"
    keytool_genkeypair(path, "existing")
    config = {"path": str(path), "store_password": STOREPASS}
    store = client.post(
        f"{API}/stores", json={"name": "tomcat", "type": "jks", "config": config}, headers=admin
    )
    assert store.status_code == 201, store.text
    assert STOREPASS not in store.text  # the password is sealed, never echoed
    bound = client.post(
        f"{API}/bindings",
        json={"managed_certificate": str(managed.json()["id"]), "store": "tomcat", "alias": "app"},
        headers=operator,
    )
    assert bound.status_code == 201, bound.text
    run_jobs(platform)
    binding = client.get(f"{API}/bindings/{bound.json()['id']}", headers=operator).json()
    assert binding["status"] == "deployed", binding
    assert listed_entries(keytool_list(path)) == {"existing": "PrivateKeyEntry", "app": "PrivateKeyEntry"}
    entry = make_store(path).read_entry("app")
    assert entry is not None and fingerprint_of(entry.certificate_pem) == binding["last_deployed_fingerprint"]
