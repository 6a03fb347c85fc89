"""The pkcs12 store on a real directory, read back with openssl and keytool; bad input changes nothing."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sslclm.connectors.pkcs12 import Pkcs12Store
from sslclm.errors import ConflictError, ConnectorError, InvalidInputError
from sslclm.pki import load_bundle, public_key_sha256
from sslclm.spi.capabilities import ConnectorKind
from sslclm.spi.registry import ConnectorRegistry
from sslclm.spi.store import AddRequest, InventoryRequest
from sslclm.spi.testing import CertificateStoreConformance, memory_context, new_add_request

PASSWORD = "changeit-p12"


def make_store(tmp_path: Path, **config: object) -> Pkcs12Store:
    directory = tmp_path / "keystores"
    directory.mkdir(exist_ok=True)
    values = {"directory": str(directory), "password": PASSWORD, **config}
    return Pkcs12Store(Pkcs12Store.Config.model_validate(values), memory_context(tmp_path / "ctx"))


def openssl_dump(path: Path, password: str = PASSWORD, *extra: str) -> str:
    done = subprocess.run(
        ["openssl", "pkcs12", "-in", str(path), "-passin", f"pass:{password}", "-nodes", *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


class TestPkcs12Conformance(CertificateStoreConformance):
    @pytest.fixture
    def cert_store(self, tmp_path: Path) -> Pkcs12Store:
        return make_store(tmp_path)


def test_entry_point_loads() -> None:
    registry = ConnectorRegistry.from_entry_points()
    assert registry.get(ConnectorKind.CERT_STORE, "pkcs12").cls is Pkcs12Store


def test_openssl_reads_back_certificate_chain_and_matching_key(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    request = new_add_request("tomcat")
    store.add(request)
    path = tmp_path / "keystores" / "tomcat.p12"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    dumped = openssl_dump(path).encode()
    bundle = load_bundle(dumped)
    leaf = load_bundle(request.certificate_pem).certificates[0]
    assert leaf in bundle.certificates and len(bundle.certificates) == 2
    assert [public_key_sha256(key) for key in bundle.private_keys] == [public_key_sha256(leaf)]
    assert b"friendlyName: tomcat" in dumped
    info = subprocess.run(
        ["openssl", "pkcs12", "-in", str(path), "-passin", f"pass:{PASSWORD}", "-info", "-noout"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    assert "AES-256-CBC" in info and "sha256" in info.lower(), info


def test_keytool_lists_the_alias(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.add(new_add_request("java-app"))
    path = tmp_path / "keystores" / "java-app.p12"
    listed = subprocess.run(
        ["keytool", "-list", "-v", "-storetype", "PKCS12", "-keystore", str(path), "-storepass", PASSWORD],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Alias name: java-app" in listed
    assert "Entry type: PrivateKeyEntry" in listed
    assert "Certificate chain length: 2" in listed


def test_legacy_encryption_for_old_readers(tmp_path: Path) -> None:
    store = make_store(tmp_path, legacy_encryption=True)
    store.add(new_add_request("old-java"))
    path = tmp_path / "keystores" / "old-java.p12"
    info = subprocess.run(
        ["openssl", "pkcs12", "-in", str(path), "-passin", f"pass:{PASSWORD}", "-info", "-noout", "-legacy"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    assert "3DES" in info or "pbeWithSHA1And3-KeyTripleDES-CBC" in info, info
    assert load_bundle(openssl_dump(path, PASSWORD, "-legacy").encode()).private_keys


def test_replace_keeps_previous_file_and_restores_it(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    first, second = new_add_request("api"), new_add_request("api")
    store.add(first)
    path = tmp_path / "keystores" / "api.p12"
    before = path.read_bytes()
    assert store.add(second).replaced
    assert (tmp_path / "keystores" / "api.p12.previous").read_bytes() == before
    entry = store.read_entry("api")
    assert entry is not None and entry.certificate_pem == second.certificate_pem
    assert store.restore_previous("api")
    entry = store.read_entry("api")
    assert entry is not None and entry.certificate_pem == first.certificate_pem
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_adds_to_a_keystore_made_by_openssl(tmp_path: Path) -> None:
    """A file someone made with openssl under the same password is replaced, and keeps its name."""
    store = make_store(tmp_path)
    material = new_add_request("legacy-app")
    work = tmp_path / "pem"
    work.mkdir()
    (work / "cert.pem").write_bytes(material.certificate_pem)
    (work / "key.pem").write_bytes(material.private_key_pem or b"")
    target = tmp_path / "keystores" / "legacy-app.p12"
    subprocess.run(
        [
            *("openssl", "pkcs12", "-export", "-in", str(work / "cert.pem"), "-inkey", str(work / "key.pem")),
            *("-name", "legacy-app", "-out", str(target), "-passout", f"pass:{PASSWORD}"),
        ],
        check=True,
        capture_output=True,
    )
    entry = store.read_entry("legacy-app")
    assert entry is not None and entry.details["friendly_name"] == "legacy-app"
    newer = new_add_request("legacy-app")
    assert store.add(newer).replaced
    assert (
        load_bundle(openssl_dump(target).encode()).certificates[0]
        == (load_bundle(newer.certificate_pem).certificates[0])
    )


def test_wrong_password_leaves_the_file_untouched(tmp_path: Path) -> None:
    make_store(tmp_path, password="the-real-one").add(new_add_request("svc"))
    path = tmp_path / "keystores" / "svc.p12"
    before = path.read_bytes()
    store = make_store(tmp_path, password="not-the-real-one")
    with pytest.raises(ConnectorError) as caught:
        store.add(new_add_request("svc"))
    assert "wrong keystore password" in caught.value.message and not caught.value.retryable
    assert path.read_bytes() == before
    assert not (path.parent / "svc.p12.previous").exists()
    check = store.check()
    assert not check.ok and "wrong keystore password" in check.message


def test_corrupt_keystore_is_refused_and_kept(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.add(new_add_request("broken"))
    path = tmp_path / "keystores" / "broken.p12"
    truncated = path.read_bytes()[:200]
    path.write_bytes(truncated)
    with pytest.raises(ConnectorError) as caught:
        store.add(new_add_request("broken"))
    assert "cannot read keystore" in caught.value.message and not caught.value.retryable
    assert path.read_bytes() == truncated
    assert store.inventory(InventoryRequest()).entries == ()  # skipped, not fatal


@pytest.fixture
def immutable_directory(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody may write into, root included (the tests run as root, so a mode is not enough)."""
    directory = tmp_path / "keystores"
    directory.mkdir()
    subprocess.run(["chattr", "+i", str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_read_only_directory_fails_cleanly(tmp_path: Path, immutable_directory: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(ConnectorError) as caught:
        store.add(new_add_request("ro"))
    assert str(immutable_directory) in caught.value.message and not caught.value.retryable
    assert list(immutable_directory.iterdir()) == []
    assert not store.check().ok


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"alias": "../escape"}, "alias"),
        ({"private_key_pem": None}, "private_key_pem"),
        (
            {"private_key_pem": b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
            "private_key_pem",
        ),
        ({"chain_pem": (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",)}, "chain_pem"),
    ],
)
def test_bad_add_requests_name_the_field(tmp_path: Path, change: dict, field: str) -> None:
    store = make_store(tmp_path)
    good = new_add_request("good")
    values = {
        "alias": good.alias,
        "certificate_pem": good.certificate_pem,
        "chain_pem": good.chain_pem,
        "private_key_pem": good.private_key_pem,
        **change,
    }
    with pytest.raises(InvalidInputError) as caught:
        store.add(AddRequest(**values))
    assert caught.value.field == field
    assert list((tmp_path / "keystores").iterdir()) == []


def test_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    one, other = new_add_request("one"), new_add_request("other")
    mixed = AddRequest(
        alias="one", certificate_pem=one.certificate_pem, private_key_pem=other.private_key_pem
    )
    with pytest.raises(InvalidInputError, match="not the key of the certificate"):
        store.add(mixed)


def test_add_without_overwrite_leaves_existing_file(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.add(new_add_request("keep"))
    before = (tmp_path / "keystores" / "keep.p12").read_bytes()
    with pytest.raises(ConflictError):
        store.add(new_add_request("keep", overwrite=False))
    assert (tmp_path / "keystores" / "keep.p12").read_bytes() == before


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"directory": "relative/dir"}, "absolute"),
        ({"password": ""}, "must not be empty"),
        ({"mode": "0644"}, "readable or writable by others"),
        ({"file_name": "fixed.p12"}, "{alias}"),
    ],
)
def test_bad_config_is_refused(tmp_path: Path, config: dict, message: str) -> None:
    values = {"directory": str(tmp_path), "password": PASSWORD, **config}
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        Pkcs12Store.Config.model_validate(values)
