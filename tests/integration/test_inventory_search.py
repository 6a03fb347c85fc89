"""Free-text search through the trigram index: the same rows a substring scan finds, on both backends."""

from __future__ import annotations

import hashlib
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, delete, insert, inspect, make_url, select, text, update
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext
from sslclm.core.db import create_db_engine
from sslclm.core.migrate import alembic_config
from sslclm.core.platform import Platform
from sslclm.errors import InvalidInputError
from sslclm.inventory import query
from sslclm.inventory.importer import import_paths
from sslclm.inventory.models import Certificate, Issuer
from sslclm.inventory.query import COMMON_TERM_MATCHES, CertificateFilter, iter_certificates
from tests.conftest import ApiUser
from tests.support.certs import NOW, make_ca, make_leaf

CTX = AuditContext(actor="tester")
# More rows than the index hands over before a term counts as common, so both paths run.
ROWS = COMMON_TERM_MATCHES + 200


def _rows_for(issuer_id: int, *, count: int = ROWS, now: datetime = NOW) -> list[dict[str, Any]]:
    rows = []
    for n in range(count):
        name = f"host{n}.svc-{n % 7}.example.com"
        if n % 500 == 0:
            name = f'odd_{n}%"quoted".example.net'
        fingerprint = hashlib.sha256(f"search:{n}".encode()).hexdigest()
        rows.append(
            {
                "fingerprint_sha256": fingerprint,
                "fingerprint_sha1": fingerprint[:40],
                "serial": format(n, "x"),
                "subject": f"CN={name}",
                "common_name": name,
                "issuer_id": issuer_id,
                "not_before": now - timedelta(days=10),
                "not_after": now + timedelta(days=n % 400),
                "key_algorithm": "EC",
                "key_size": 256,
                "signature_algorithm": "ecdsa-with-SHA256",
                "sans": [f"DNS:{name}"],
                "public_key_sha256": fingerprint,
                "der": b"\x30\x00",
                "search_text": f"{name}\nümlaut-{n}".lower(),
                "source": "import",
                "created_at": now,
                "updated_at": now,
            }
        )
    return rows


@pytest.fixture
def seeded(platform: Platform) -> Platform:
    with platform.engine.begin() as connection:
        connection.execute(insert(Issuer), [{"dn_hash": "0" * 64, "dn": "CN=Search CA", "common_name": "x"}])
        issuer_id = connection.execute(select(Issuer.id)).scalar_one()
        connection.execute(insert(Certificate), _rows_for(issuer_id, now=platform.clock()))
    return platform


def _found(platform: Platform, q: str) -> set[int]:
    with platform.sessions() as session:
        return {
            item["id"]
            for item in iter_certificates(
                session, CertificateFilter(q=q), now=platform.clock(), expiring_days=30, batch=1000
            )
        }


def _scanned(platform: Platform, q: str) -> set[int]:
    """What the substring scan finds, worked out in Python over every row."""
    with platform.sessions() as session:
        rows = session.execute(select(Certificate.id, Certificate.search_text)).all()
    return {cert_id for cert_id, search_text in rows if q.lower() in search_text}


TERMS = [
    "host4242.",  # rare: served by the index
    "HOST12",  # upper case matches the lower-cased text
    "svc-3.example",  # about a seventh of the rows: still under the common bound
    "example.com",  # nearly every row: the sorted walk with LIKE
    "42",  # too short for a trigram
    "_5",  # LIKE wildcards are literal
    '%"quoted"',
    "ümlaut-77",
    "nowhere-to-be-found",
]


@pytest.mark.parametrize("term", TERMS)
def test_search_finds_exactly_the_substring_matches(seeded: Platform, term: str) -> None:
    assert _found(seeded, term) == _scanned(seeded, term)


def test_the_index_follows_updates_deletes_and_imports(seeded: Platform, tmp_path: Path) -> None:
    platform = seeded
    with platform.sessions() as session:
        session.execute(
            update(Certificate)
            .where(Certificate.serial == "1a")
            .values(search_text="renamed-zebra.example.org")
        )
        session.execute(delete(Certificate).where(Certificate.serial == "1b"))
        session.commit()
    assert len(_found(platform, "zebra")) == 1
    assert _found(platform, "host26.") == set()  # serial 1a was host26
    assert _found(platform, "host27.") == set()  # serial 1b was host27, deleted
    # The bulk importer's path (driver-level inserts) lands in the index too.
    ca = make_ca("Search Import CA")
    files = tmp_path / "files"
    files.mkdir()
    (files / "leaf.pem").write_bytes(make_leaf(ca, "Imported-Kiwi.example.org", days=40).pem)
    assert import_paths(platform, [files], CTX, workers=1).imported == 1
    assert len(_found(platform, "imported-kiwi")) == 1
    assert len(_found(platform, "search import ca")) == 1
    if platform.engine.dialect.name == "sqlite":
        with platform.engine.begin() as connection:
            # Raises if the index and the certificates' text disagree anywhere.
            connection.exec_driver_sql(
                "INSERT INTO certificates_search (certificates_search, rank) VALUES ('integrity-check', 1)"
            )
    else:
        with platform.engine.connect() as connection:
            index = connection.execute(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_certificates_search_text_trgm'")
            ).scalar_one()
        assert "gin_trgm_ops" in index


def test_api_and_console_search_agree(
    seeded: Platform, client: TestClient, api_users: dict[str, ApiUser]
) -> None:
    viewer = api_users["viewer"].headers
    api = client.get("/api/v1/certificates", params={"q": "host4242", "limit": 100}, headers=viewer).json()
    names = sorted(item["common_name"] for item in api["items"])
    assert names == sorted(f"host{n}.svc-{n % 7}.example.com" for n in (4242,))
    page = client.get("/ui/certificates", params={"q": "host4242"}, headers=viewer)
    assert page.status_code == 200
    assert "host4242.svc-0.example.com" in page.text


def test_a_short_term_scan_is_bounded_and_answers_422(
    seeded: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A statement that runs for seconds stands in for a scan of a large inventory.
    slow = (
        "SELECT pg_sleep(5)"
        if seeded.engine.dialect.name == "postgresql"
        else "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000000) "
        "SELECT count(*) FROM c"
    )
    monkeypatch.setattr(query, "SHORT_TERM_SECONDS", 0.2)
    with seeded.sessions() as session:
        started = time.monotonic()
        refused = pytest.raises(InvalidInputError, match="type at least 3 characters")
        with refused as caught, query._bounded_scan(session, "zq"):
            session.connection().execute(text(slow))
        assert caught.value.field == "q" and time.monotonic() - started < 4
        # The request's transaction is still usable, with no limit left behind.
        assert session.execute(select(Certificate.id).limit(1)).scalar_one() > 0
        with query._bounded_scan(session, "long enough"):
            session.connection().execute(text(slow.replace("pg_sleep(5)", "pg_sleep(0.3)")))


def _migrate(engine: Engine, revision: str, *, down: bool = False) -> None:
    with engine.begin() as connection:
        config = alembic_config(engine)
        config.attributes["connection"] = connection
        (command.downgrade if down else command.upgrade)(config, revision)


def test_the_migration_indexes_existing_rows_and_downgrades(empty_database_url: str) -> None:
    engine = create_db_engine(empty_database_url)
    try:
        _migrate(engine, "0013")
        with engine.begin() as connection:
            connection.execute(
                insert(Issuer), [{"dn_hash": "1" * 64, "dn": "CN=Old CA", "common_name": "Old"}]
            )
            issuer_id = connection.execute(select(Issuer.id)).scalar_one()
            row = _rows_for(issuer_id, count=3)
            connection.execute(insert(Certificate), row)
        _migrate(engine, "0014")
        with Session(engine) as session:
            found = query.list_certificates(
                session, CertificateFilter(q="host1.svc"), now=NOW, expiring_days=30
            )
            assert [item["common_name"] for item in found.items] == ["host1.svc-1.example.com"]
        _migrate(engine, "0013", down=True)
        with engine.connect() as connection:
            names = set(inspect(connection).get_table_names())
            indexes = {ix["name"] for ix in inspect(connection).get_indexes("certificates")}
        assert "certificates_search" not in names and "ix_certificates_search_text_trgm" not in indexes
        _migrate(engine, "0014")
    finally:
        engine.dispose()


def test_a_role_that_may_not_create_pg_trgm_still_migrates(postgres_admin_url: str) -> None:
    suffix = uuid.uuid4().hex[:10]
    role, database = f"sslclm_r_{suffix}", f"sslclm_n_{suffix}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE ROLE "{role}" LOGIN'))
            connection.execute(text(f'CREATE DATABASE "{database}"'))
        url = make_url(postgres_admin_url).set(database=database)
        owner = create_engine(url, isolation_level="AUTOCOMMIT")
        with owner.connect() as connection:
            # Tables yes, extensions no: CREATE EXTENSION needs CREATE on the database itself.
            connection.execute(text(f'GRANT USAGE, CREATE ON SCHEMA public TO "{role}"'))
            connection.execute(text(f'REVOKE CREATE ON DATABASE "{database}" FROM PUBLIC'))
        owner.dispose()
        engine = create_db_engine(url.set(username=role).render_as_string(hide_password=False))
        try:
            _migrate(engine, "0014")
            with engine.connect() as connection:
                indexes = {ix["name"] for ix in inspect(connection).get_indexes("certificates")}
                installed = connection.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'"))
                assert installed.first() is None
            assert "ix_certificates_search_text_trgm" not in indexes
            with Session(engine) as session:
                page = query.list_certificates(session, CertificateFilter(q="abc"), now=NOW, expiring_days=30)
            assert page.items == []
        finally:
            engine.dispose()
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
            connection.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()
