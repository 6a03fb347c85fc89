"""The per-issuer counters behind "count by issuer": exact after every kind of change, both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.sqlite import DATETIME as SQLITE_DATETIME
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite as sqlite_dialect

from sslclm.audit.service import AuditContext
from sslclm.core.platform import Platform
from sslclm.inventory import service
from sslclm.inventory.bulk import stored_datetime
from sslclm.inventory.importer import import_bytes, import_paths
from sslclm.inventory.models import Certificate, Issuer, IssuerCertificateCount
from sslclm.inventory.query import CertificateFilter, count_by
from tests.support.certs import NOW, Issued, make_ca, make_leaf

CTX = AuditContext(actor="tester")


@pytest.fixture
def two_issuers() -> tuple[Issued, Issued, list[Issued]]:
    first = make_ca("Counting CA One")
    second = make_ca("Counting CA Two", key_kind="rsa")
    leaves = [make_leaf(first, f"a{n}.example.com", days=30 + n) for n in range(5)]
    leaves += [make_leaf(second, f"b{n}.example.com", days=60 + n) for n in range(3)]
    return first, second, leaves


def scanned_counts(platform: Platform, *, include_archived: bool) -> dict[str, int]:
    """The same grouping computed from the certificates themselves."""
    stmt = select(Issuer.dn, func.count()).join(Certificate, Certificate.issuer_id == Issuer.id)
    if not include_archived:
        stmt = stmt.where(Certificate.archived_at.is_(None))
    with platform.sessions() as session:
        return {dn: number for dn, number in session.execute(stmt.group_by(Issuer.dn))}


def maintained_counts(platform: Platform, *, include_archived: bool = False) -> dict[str, int]:
    with platform.sessions() as session:
        rows = count_by(
            session,
            "issuer",
            CertificateFilter(include_archived=include_archived),
            now=platform.clock(),
            expiring_days=30,
        )
    return {row["key"]: row["count"] for row in rows}


def assert_counts_match(platform: Platform) -> None:
    for include_archived in (False, True):
        expected = scanned_counts(platform, include_archived=include_archived)
        assert maintained_counts(platform, include_archived=include_archived) == expected


def test_counts_follow_imports_reimports_archive_and_delete(
    platform: Platform, tmp_path: Path, two_issuers: tuple[Issued, Issued, list[Issued]]
) -> None:
    first, second, leaves = two_issuers
    files = tmp_path / "files"
    files.mkdir()
    for index, leaf in enumerate(leaves):
        (files / f"leaf{index}.pem").write_bytes(leaf.pem)
    (files / "cas.pem").write_bytes(first.pem + second.pem)

    summary = import_paths(platform, [files], CTX, workers=2)
    assert summary.imported == len(leaves) + 2
    counts = maintained_counts(platform)
    # Each self-signed CA counts under its own name, beside the leaves it issued.
    assert counts[first.cert.subject.rfc4514_string()] == 5 + 1
    assert counts[second.cert.subject.rfc4514_string()] == 3 + 1
    assert_counts_match(platform)

    # A re-import updates rows; it must not count them twice.
    again = import_paths(platform, [files], CTX, workers=1)
    assert again.updated == len(leaves) + 2 and again.imported == 0
    assert_counts_match(platform)

    with platform.sessions() as session:
        target = service.get_certificate(session, leaves[0].fingerprint)
        service.set_archived(session, CTX, target, True, now=platform.clock())
        session.commit()
    assert maintained_counts(platform)[first.cert.subject.rfc4514_string()] == 5
    assert maintained_counts(platform, include_archived=True)[first.cert.subject.rfc4514_string()] == 6
    assert_counts_match(platform)

    with platform.sessions() as session:
        target = service.get_certificate(session, leaves[0].fingerprint)
        service.set_archived(session, CTX, target, False, now=platform.clock())
        session.commit()
    assert_counts_match(platform)

    with platform.sessions() as session:
        # Archiving many in one statement and deleting in bulk go through the same triggers.
        session.execute(
            update(Certificate).where(Certificate.key_algorithm == "RSA").values(archived_at=platform.clock())
        )
        session.execute(delete(Certificate).where(Certificate.common_name == "a1.example.com"))
        session.commit()
    # The second CA's key is RSA: it and nothing else under its name is archived now.
    assert maintained_counts(platform)[second.cert.subject.rfc4514_string()] == 3
    assert maintained_counts(platform)[first.cert.subject.rfc4514_string()] == 5
    assert_counts_match(platform)


def test_a_rolled_back_batch_leaves_the_counts_alone(
    platform: Platform, two_issuers: tuple[Issued, Issued, list[Issued]]
) -> None:
    _first, _second, leaves = two_issuers
    import_bytes(platform, leaves[0].pem, "one.pem", CTX)
    before = maintained_counts(platform)
    with platform.sessions() as session:
        session.execute(delete(Certificate))
        session.rollback()
    assert maintained_counts(platform) == before
    assert_counts_match(platform)


def test_filtered_counts_still_scan_the_certificates(
    platform: Platform, two_issuers: tuple[Issued, Issued, list[Issued]]
) -> None:
    first, _second, leaves = two_issuers
    for index, leaf in enumerate(leaves):
        import_bytes(platform, leaf.pem, f"leaf{index}.pem", CTX)
    with platform.sessions() as session:
        rows = count_by(
            session,
            "issuer",
            CertificateFilter(expires_before=NOW + timedelta(days=31, hours=12)),
            now=NOW,
            expiring_days=30,
        )
    # Leaves of the first CA expire 29-33 days from NOW: three of them before day 31.5.
    assert {row["key"]: row["count"] for row in rows} == {first.cert.subject.rfc4514_string(): 3}


def test_imported_rows_read_back_like_orm_written_ones(
    platform: Platform, two_issuers: tuple[Issued, Issued, list[Issued]]
) -> None:
    _first, _second, leaves = two_issuers
    leaf = leaves[0]
    import_bytes(platform, leaf.pem, "one.pem", CTX)
    with platform.sessions() as session:
        cert = service.get_certificate(session, leaf.fingerprint)
        assert cert.not_after == leaf.cert.not_valid_after_utc
        assert cert.not_before == leaf.cert.not_valid_before_utc
        assert cert.sans == ["DNS:a0.example.com"]
        assert cert.der == leaf.der and cert.is_ca is False and cert.has_private_key is False
        stored = session.execute(
            select(func.count()).select_from(Certificate).where(Certificate.not_after == cert.not_after)
        ).scalar_one()
        assert stored == 1
        assert stored_datetime(cert.not_after) == f"{leaf.cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S.%f}"
        counters = session.execute(select(IssuerCertificateCount.live)).scalars().all()
        assert sum(counters) == 1


def test_the_migration_matches_the_inventory_models(platform: Platform) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from sslclm.core.models import Base

    with platform.engine.connect() as connection:
        diffs = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
        )
    ours = {"issuer_certificate_counts", "certificates", "issuers", "sightings"}
    assert [d for d in diffs if ours & set(_tables_named(d))] == []


def _tables_named(diff: object) -> list[str]:
    items = diff if isinstance(diff, list) else [diff]
    names: list[str] = []
    for item in items:
        for part in item[1:] if isinstance(item, tuple) else ():
            table = getattr(part, "table", None)
            name = getattr(table, "name", None) or getattr(part, "name", None)
            if isinstance(part, str):
                name = part
            if isinstance(name, str):
                names.append(name)
    return names


def test_stored_datetimes_are_the_text_sqlalchemy_writes_on_sqlite() -> None:
    store = SQLITE_DATETIME().bind_processor(sqlite_dialect())
    assert store is not None
    for value in (
        datetime(2026, 11, 28, 17, 5, 9, 42, tzinfo=UTC),
        datetime(5, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
    ):
        assert stored_datetime(value) == store(value.replace(tzinfo=None))
    assert stored_datetime(datetime(5, 1, 2, 3, 4, 5, 6, tzinfo=UTC)) == "0005-01-02 03:04:05.000006"
