"""An initial load builds the certificates' random-keyed indexes at its end, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.schema import DropConstraint, DropIndex

from sslclm.audit.service import AuditContext
from sslclm.core.migrate import upgrade_database
from sslclm.core.platform import Platform
from sslclm.inventory import initial_load
from sslclm.inventory.importer import import_paths
from sslclm.inventory.initial_load import (
    DEFERRED_FOREIGN_KEYS,
    DEFERRED_INDEXES,
    deferred_foreign_keys,
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


def foreign_keys(platform: Platform) -> set[str]:
    with platform.engine.connect() as connection:
        inspector = inspect(connection)
        return {
            str(fk["name"])
            for table in ("certificates", "sightings")
            for fk in inspector.get_foreign_keys(table)
        }


# SQLite cannot drop a constraint: there an initial load keeps its foreign keys.
ON_POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


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


@ON_POSTGRESQL
def test_an_initial_load_on_postgresql_checks_its_foreign_keys_at_its_end(
    platform: Platform, tmp_path: Path
) -> None:
    assert foreign_keys(platform) >= set(DEFERRED_FOREIGN_KEYS)
    seen: list[set[str]] = []
    certs = write_leaves(tmp_path / "certs", 5, "keys")
    import_paths(platform, [certs], CTX, workers=1, progress=lambda _: seen.append(foreign_keys(platform)))
    assert seen and all(not (names & set(DEFERRED_FOREIGN_KEYS)) for names in seen)
    assert foreign_keys(platform) >= set(DEFERRED_FOREIGN_KEYS)
    with platform.engine.connect() as connection, pytest.raises(IntegrityError):
        connection.execute(text("UPDATE sightings SET certificate_id = -1"))


@ON_POSTGRESQL
def test_the_next_start_adds_foreign_keys_a_dead_import_left_out(platform: Platform) -> None:
    with platform.engine.begin() as connection:
        for fk in deferred_foreign_keys():
            connection.execute(DropConstraint(fk))
    upgrade_database(platform.engine)
    assert foreign_keys(platform) >= set(DEFERRED_FOREIGN_KEYS)


@ON_POSTGRESQL
def test_a_row_written_beside_the_load_leaves_the_key_checking_new_rows(
    platform: Platform, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import_paths(platform, [write_leaves(tmp_path / "certs", 1, "orphan")], CTX, workers=1)
    with platform.engine.begin() as connection:
        for fk in deferred_foreign_keys():
            connection.execute(DropConstraint(fk))
        # What another process could leave while the key was away: a sighting of no certificate.
        connection.execute(text("UPDATE sightings SET certificate_id = -1"))
    upgrade_database(platform.engine)
    assert foreign_keys(platform) >= set(DEFERRED_FOREIGN_KEYS)
    assert "fk_sightings_certificate_id_certificates holds for new rows only" in caplog.text
    with platform.engine.connect() as connection:
        validated = connection.execute(
            text("SELECT convalidated FROM pg_constraint WHERE conname = :name"),
            {"name": "fk_sightings_certificate_id_certificates"},
        ).scalar_one()
        assert validated is False
        with pytest.raises(IntegrityError):
            connection.execute(
                text(
                    "INSERT INTO sightings"
                    " (certificate_id, kind, location, source, details, first_seen, last_seen)"
                    " VALUES (-2, 'file', '/x', 'import', '{}', now(), now())"
                )
            )
