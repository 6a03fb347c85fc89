"""An initial load builds the certificates' random-keyed indexes at its end, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.schema import DropIndex

from sslclm.audit.service import AuditContext
from sslclm.core.migrate import upgrade_database
from sslclm.core.platform import Platform
from sslclm.inventory import initial_load
from sslclm.inventory.importer import import_paths
from sslclm.inventory.initial_load import (
    DEFERRED_INDEXES,
    deferred_indexes,
    indexes_built_at_end,
    initial_load_lock,
)
from sslclm.inventory.models import Certificate
from tests.support.certs import make_ca, make_leaf

CTX = AuditContext(actor="test")


def certificate_indexes(platform: Platform) -> set[str]:
    with platform.engine.connect() as connection:
        return {str(index["name"]) for index in inspect(connection).get_indexes("certificates")}


def drop_deferred_indexes(platform: Platform) -> None:
    """What an initial load leaves behind if its process dies before the end."""
    with platform.engine.begin() as connection:
        for index in deferred_indexes():
            connection.execute(DropIndex(index))


def write_leaves(directory: Path, count: int, prefix: str) -> Path:
    root = make_ca(f"{prefix} Root")
    directory.mkdir(parents=True)
    for i in range(count):
        (directory / f"{prefix}{i}.pem").write_bytes(make_leaf(root, f"{prefix}{i}.example.com").pem)
    return directory


def import_watching_indexes(platform: Platform, directory: Path) -> tuple[int, list[set[str]]]:
    """Imports ``directory``; returns how many certificates went in and the indexes after each batch."""
    seen: list[set[str]] = []
    summary = import_paths(
        platform, [directory], CTX, workers=1, progress=lambda _: seen.append(certificate_indexes(platform))
    )
    return summary.imported, seen


def test_an_import_into_a_young_inventory_builds_the_indexes_at_its_end(
    platform: Platform, tmp_path: Path
) -> None:
    assert certificate_indexes(platform) >= set(DEFERRED_INDEXES)
    imported, seen_during = import_watching_indexes(platform, write_leaves(tmp_path / "certs", 12, "young"))
    assert imported == 12
    # While the batches were written, the four were gone; the fingerprint's and public key's stayed.
    assert seen_during and all(not (names & set(DEFERRED_INDEXES)) for names in seen_during)
    kept = {"ix_certificates_public_key_sha256", "ix_certificates_updated_at_id"}
    assert all(kept <= names for names in seen_during)
    assert certificate_indexes(platform) >= set(DEFERRED_INDEXES)
    # The rebuilt indexes answer: a lookup by serial and the expiry order use them.
    with platform.sessions() as session:
        serial = session.execute(select(Certificate.serial).limit(1)).scalar_one()
        assert session.execute(select(Certificate.id).where(Certificate.serial == serial)).first()
        by_expiry = select(Certificate.not_after).order_by(Certificate.not_after)
        expiries = session.execute(by_expiry).scalars().all()
        assert expiries == sorted(expiries) and len(expiries) == 12


def test_an_import_into_a_larger_inventory_keeps_its_indexes(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_paths(platform, [write_leaves(tmp_path / "first", 3, "first")], CTX, workers=1)
    monkeypatch.setattr(initial_load, "INITIAL_LOAD_MAX_ROWS", 3)
    imported, seen_during = import_watching_indexes(platform, write_leaves(tmp_path / "second", 4, "second"))
    assert imported == 4
    assert seen_during and all(names >= set(DEFERRED_INDEXES) for names in seen_during)


def test_a_failed_import_still_builds_the_indexes(platform: Platform, tmp_path: Path) -> None:
    def interrupt(_: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        certs = write_leaves(tmp_path / "certs", 3, "cut")
        import_paths(platform, [certs], CTX, workers=1, progress=interrupt)
    assert certificate_indexes(platform) >= set(DEFERRED_INDEXES)


def test_the_next_start_builds_indexes_a_dead_import_left_out(platform: Platform) -> None:
    drop_deferred_indexes(platform)
    assert not certificate_indexes(platform) & set(DEFERRED_INDEXES)
    upgrade_database(platform.engine)
    assert certificate_indexes(platform) >= set(DEFERRED_INDEXES)


def test_a_start_beside_a_running_initial_load_leaves_the_indexes_to_it(platform: Platform) -> None:
    drop_deferred_indexes(platform)
    with initial_load_lock(platform.engine) as held:
        assert held
        # Another process starting now (a CLI command beside the import) must not build them.
        upgrade_database(platform.engine)
        assert not certificate_indexes(platform) & set(DEFERRED_INDEXES)
        with indexes_built_at_end(platform.engine) as dropped:
            assert not dropped  # a second import leaves them to the load that runs
    upgrade_database(platform.engine)
    assert certificate_indexes(platform) >= set(DEFERRED_INDEXES)
