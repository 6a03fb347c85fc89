"""Free-text search: the indexes find exactly what a scan of every row would, on both backends,
whether the certificates are still queued for the trigram index, indexed, or some of each."""

from __future__ import annotations

import hashlib
import re
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
from sslclm.inventory.query import CertificateFilter, iter_certificates
from sslclm.inventory.search import COMMON_TERM_MATCHES, index_pending, pending_count
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
    """What ``q`` should match, worked out in Python over every row: a substring of the text or of
    the issuer's DN, or the start of the serial or fingerprint in hex."""
    term = q.lower()
    digits = term.replace(":", "").replace(" ", "")
    hex_prefix = digits if re.fullmatch("[0-9a-f]+", digits) else None
    with platform.sessions() as session:
        rows = session.execute(
            select(
                Certificate.id,
                Certificate.search_text,
                Issuer.dn,
                Certificate.serial,
                Certificate.fingerprint_sha256,
            ).join(Issuer, Issuer.id == Certificate.issuer_id)
        ).all()
    return {
        cert_id
        for cert_id, search_text, issuer, serial, fingerprint in rows
        if term in search_text
        or term in issuer.lower()
        or (hex_prefix is not None and (serial.startswith(hex_prefix) or fingerprint.startswith(hex_prefix)))
    }


def _index(platform: Platform, limit: int | None = None) -> int:
    with platform.sessions() as session:
        indexed = index_pending(session, limit) if limit else index_pending(session)
        session.commit()
    return indexed


TERMS = [
    "host4242.",  # rare: served by the index
    "HOST12",  # upper case matches the lower-cased text
    "svc-3.example",  # about a seventh of the rows: still under the common bound
    "example.com",  # nearly every row: the sorted walk with LIKE
    "42",  # too short for a trigram; also the start of some serials
    "_5",  # LIKE wildcards are literal
    '%"quoted"',
    "odd_1000%",
    "ümlaut-77",
    "search ca",  # the issuer's name
    "13a",  # the start of a serial (hex), and text
    "8f:1c",  # the start of fingerprints, written with colons
    "nowhere-to-be-found",
]


@pytest.mark.parametrize("state", ["queued", "indexed", "half"])
@pytest.mark.parametrize("term", TERMS)
def test_search_finds_exactly_what_a_scan_finds(seeded: Platform, term: str, state: str) -> None:
    if state == "indexed":
        assert _index(seeded) == ROWS
    elif state == "half":
        assert _index(seeded, ROWS // 2) == ROWS // 2
    assert _found(seeded, term) == _scanned(seeded, term)


def _check_integrity(platform: Platform) -> None:
    if platform.engine.dialect.name == "sqlite":
        with platform.engine.begin() as connection:
            # Raises if the index and the certificates' text disagree anywhere.
            connection.exec_driver_sql(
                "INSERT INTO certificates_search (certificates_search, rank) VALUES ('integrity-check', 1)"
            )
    else:
        with platform.engine.connect() as connection:
            stale = connection.exec_driver_sql(
                "SELECT count(*) FROM certificates_search s JOIN certificates c ON c.id = s.certificate_id "
                "WHERE s.search_text <> c.search_text"
            ).scalar_one()
            index = connection.execute(
                text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_certificates_search_trgm'")
            ).scalar_one()
        assert stale == 0 and "gin_trgm_ops" in index


@pytest.mark.parametrize("indexed_first", [False, True])
def test_the_index_follows_updates_deletes_and_imports(
    seeded: Platform, tmp_path: Path, indexed_first: bool
) -> None:
    platform = seeded
    if indexed_first:
        _index(platform)
    with platform.sessions() as session:
        session.execute(
            update(Certificate)
            .where(Certificate.serial == "1a")
            .values(search_text="renamed-zebra.example.org")
        )
        session.execute(delete(Certificate).where(Certificate.serial == "1b"))
        session.commit()
    for _ in range(2):  # before and after the queue is indexed
        assert len(_found(platform, "zebra")) == 1
        assert _found(platform, "host26.") == set()  # serial 1a was host26
        assert _found(platform, "host27.") == set()  # serial 1b was host27, deleted
        _index(platform)
        _check_integrity(platform)
    with platform.sessions() as session:
        assert pending_count(session) == 0
    # The bulk importer's path (driver-level inserts) is queued, and the import indexes it.
    ca = make_ca("Search Import CA")
    files = tmp_path / "files"
    files.mkdir()
    (files / "leaf.pem").write_bytes(make_leaf(ca, "Imported-Kiwi.example.org", days=40).pem)
    assert import_paths(platform, [files], CTX, workers=1).imported == 1
    with platform.sessions() as session:
        assert pending_count(session) == 0
    assert len(_found(platform, "imported-kiwi")) == 1
    assert len(_found(platform, "search import ca")) == 1
    _check_integrity(platform)


def test_the_index_job_works_through_the_queue_in_chunks(
    seeded: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sslclm.inventory import search
    from sslclm.jobs import TaskRegistry, Worker, default_registry, enqueue

    monkeypatch.setattr(search, "INDEX_CHUNK", 2000)
    with seeded.sessions() as session:
        job = enqueue(session, search.INDEX_SEARCH_TASK, {}, now=seeded.clock())
        session.commit()
        job_id = job.id
    registry = TaskRegistry()
    registry.add(default_registry.get(search.INDEX_SEARCH_TASK))
    Worker(seeded, registry=registry, concurrency=1, poll_interval=0.05).run_until_idle()
    from sslclm.jobs.models import Job

    with seeded.sessions() as session:
        done = session.get(Job, job_id)
        assert done is not None and done.status == "succeeded"
        assert done.result == {"indexed": ROWS}
        assert pending_count(session) == 0
    _check_integrity(seeded)
    assert len(_found(seeded, "host4242.")) == 1


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


def _search_texts(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(select(Certificate.search_text).order_by(Certificate.id)).scalars())


def test_the_migrations_queue_existing_rows_and_downgrade(empty_database_url: str) -> None:
    engine = create_db_engine(empty_database_url)
    try:
        _migrate(engine, "0013")
        with engine.begin() as connection:
            connection.execute(
                insert(Issuer), [{"dn_hash": "1" * 64, "dn": "CN=Old CA", "common_name": "Old"}]
            )
            issuer_id = connection.execute(select(Issuer.id)).scalar_one()
            rows = _rows_for(issuer_id, count=3)
            connection.execute(insert(Certificate), rows)
        _migrate(engine, "0016")
        _migrate(engine, "0017")
        # The lean text: subject and SAN values; the issuer, serial and fingerprint are left out.
        assert _search_texts(engine) == [f"cn={r['common_name']}\n{r['common_name']}" for r in rows]
        with Session(engine) as session:
            assert pending_count(session) == 3
            for state in ("queued", "indexed"):
                found = query.list_certificates(
                    session, CertificateFilter(q="host1.svc"), now=NOW, expiring_days=30
                )
                assert [item["common_name"] for item in found.items] == ["host1.svc-1.example.com"], state
                by_issuer = query.list_certificates(
                    session, CertificateFilter(q="old ca"), now=NOW, expiring_days=30
                )
                assert len(by_issuer.items) == 3, state
                index_pending(session)
                session.commit()
        _migrate(engine, "0016", down=True)
        with engine.connect() as connection:
            names = set(inspect(connection).get_table_names())
        assert "certificates_search_pending" not in names
        assert all("cn=old ca" in text for text in _search_texts(engine))
        _migrate(engine, "0013", down=True)
        _migrate(engine, "0017")
        with Session(engine) as session:
            assert pending_count(session) == 3
            assert index_pending(session) == 3
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
            _migrate(engine, "0017")
            with engine.connect() as connection:
                indexes = {ix["name"] for ix in inspect(connection).get_indexes("certificates_search")}
                installed = connection.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'"))
                assert installed.first() is None
            assert indexes == set()
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
