"""The pem-files store on a real directory: conformance, atomic replace, modes, rollback, bad input."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from sslclm.connectors.pem_files import PemFilesStore
from sslclm.errors import ConnectorError, InvalidInputError
from sslclm.pki import load_bundle
from sslclm.spi.capabilities import ConnectorKind
from sslclm.spi.registry import ConnectorRegistry
from sslclm.spi.testing import CertificateStoreConformance, memory_context, new_add_request


def make_store(tmp_path: Path, **config: object) -> PemFilesStore:
    directory = tmp_path / "certs"
    directory.mkdir(exist_ok=True)
    return PemFilesStore(
        PemFilesStore.Config.model_validate({"directory": str(directory), **config}),
        memory_context(tmp_path / "ctx"),
    )


class TestPemFilesConformance(CertificateStoreConformance):
    @pytest.fixture
    def cert_store(self, tmp_path: Path) -> PemFilesStore:
        return make_store(tmp_path)


def test_files_modes_and_content(tmp_path: Path) -> None:
    store = make_store(tmp_path, mode="0640", group="0")
    request = new_add_request("www")
    store.add(request)
    directory = tmp_path / "certs"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()}
    assert modes == {"www.crt": 0o640, "www.key": 0o600, "www.chain.pem": 0o640, "www.fullchain.pem": 0o640}
    assert (directory / "www.key").stat().st_gid == 0
    full = load_bundle((directory / "www.fullchain.pem").read_bytes())
    assert len(full.certificates) == 2
    assert load_bundle((directory / "www.key").read_bytes()).private_keys


def test_replace_keeps_previous_set_and_restores_it(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    first, second = new_add_request("api"), new_add_request("api")
    store.add(first)
    directory = tmp_path / "certs"
    store.add(second)
    assert (directory / "api.crt").read_bytes() == second.certificate_pem
    assert (directory / "api.crt.previous").read_bytes() == first.certificate_pem
    assert stat.S_IMODE((directory / "api.key.previous").stat().st_mode) == 0o600
    assert store.restore_previous("api")
    assert (directory / "api.crt").read_bytes() == first.certificate_pem
    assert (directory / "api.key").read_bytes() == first.private_key_pem
    store.restore_previous("api")  # a retried rollback gives the same files
    assert (directory / "api.crt").read_bytes() == first.certificate_pem
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_restore_after_first_add_removes_the_files(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    store.add(new_add_request("fresh"))
    store.restore_previous("fresh")
    assert list((tmp_path / "certs").iterdir()) == []


def test_missing_directory_fails_without_leaving_files(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    (tmp_path / "certs").rmdir()
    with pytest.raises(ConnectorError) as caught:
        store.add(new_add_request("x"))
    assert "does not exist" in caught.value.message and caught.value.retryable is False
    assert not store.check().ok


def test_unwritable_target_leaves_previous_files(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    first = new_add_request("site")
    store.add(first)
    # A directory standing where the chain file goes makes the rename fail after the others staged.
    directory = tmp_path / "certs"
    (directory / "site.chain.pem").unlink()
    (directory / "site.chain.pem").mkdir()
    with pytest.raises(ConnectorError):
        store.add(new_add_request("site"))
    assert (directory / "site.crt").read_bytes() == first.certificate_pem
    assert (directory / "site.key").read_bytes() == first.private_key_pem
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"key_mode": "0644"}, "key_mode"),
        ({"mode": "99"}, "mode"),
        ({"directory": "relative/dir"}, "directory"),
        ({"key_file": "../{alias}.key"}, "key_file"),
    ],
)
def test_bad_config_is_refused(tmp_path: Path, config: dict[str, str], field: str) -> None:
    registry = ConnectorRegistry.from_entry_points()
    with pytest.raises(InvalidInputError) as caught:
        registry.validate_config(
            ConnectorKind.CERT_STORE, "pem-files", {"directory": str(tmp_path), **config}
        )
    assert field in str(caught.value.message) + str(caught.value.field)


def test_alias_cannot_escape_the_directory(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    good = new_add_request("ok")
    with pytest.raises(InvalidInputError):
        store.add(
            type(good)(
                alias="../etc/x", certificate_pem=good.certificate_pem, private_key_pem=good.private_key_pem
            )
        )
