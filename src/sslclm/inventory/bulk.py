"""Bulk writes of certificate and sighting rows straight through the database driver.

An import writes thousands of rows per transaction. Going through SQLAlchemy's statement
execution costs more CPU per row than the driver itself (bind processing of every value,
type decorators, JSON serialisation), so the rows here arrive already in the form the
column stores (datetimes as text, JSON as text) and go to the DBAPI connection under the
session's own transaction: ``executemany`` on SQLite, ``COPY`` into a temporary table then one
``INSERT ... SELECT ... ON CONFLICT`` on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

# Columns of ``certificates`` an import writes, in the order of a bulk row.
CERTIFICATE_COLUMNS = (
    "fingerprint_sha256",
    "fingerprint_sha1",
    "serial",
    "subject",
    "common_name",
    "issuer_id",
    "not_before",
    "not_after",
    "key_algorithm",
    "key_size",
    "key_curve",
    "signature_algorithm",
    "sans",
    "key_usage",
    "extended_key_usage",
    "is_ca",
    "path_length",
    "authority_key_id",
    "subject_key_id",
    "crl_distribution_points",
    "ocsp_urls",
    "ca_issuer_urls",
    "self_signed",
    "public_key_sha256",
    "der",
    "search_text",
    "source",
    "has_private_key",
    "created_at",
    "updated_at",
)
SIGHTING_COLUMNS = ("certificate_id", "kind", "location", "source", "details", "first_seen", "last_seen")

# Keeps IN (...) lists well under every backend's bound-parameter limit.
IN_CHUNK = 900

# Every statement below is built once from the fixed column names above; values are always bound.
_CERT_NAMES = ", ".join(CERTIFICATE_COLUMNS)
_SIGHT_NAMES = ", ".join(SIGHTING_COLUMNS)
_SIGHTING_CONFLICT = (
    "ON CONFLICT (certificate_id, kind, location) "
    "DO UPDATE SET last_seen = excluded.last_seen, source = excluded.source"
)
SQLITE_INSERT_CERTIFICATES = (
    f"INSERT INTO certificates ({_CERT_NAMES}) VALUES ({', '.join('?' for _ in CERTIFICATE_COLUMNS)}) "  # noqa: S608
    "ON CONFLICT (fingerprint_sha256) DO NOTHING"
)
SQLITE_UPSERT_SIGHTINGS = (
    f"INSERT INTO sightings ({_SIGHT_NAMES}) VALUES ({', '.join('?' for _ in SIGHTING_COLUMNS)}) "  # noqa: S608
    + _SIGHTING_CONFLICT
)
POSTGRESQL_INSERT_CERTIFICATES = (
    f"INSERT INTO certificates ({_CERT_NAMES}) SELECT {_CERT_NAMES} FROM _bulk_certificates "  # noqa: S608
    "ON CONFLICT (fingerprint_sha256) DO NOTHING RETURNING fingerprint_sha256, id"
)
POSTGRESQL_UPSERT_SIGHTINGS = (
    f"INSERT INTO sightings ({_SIGHT_NAMES}) SELECT {_SIGHT_NAMES} FROM _bulk_sightings "  # noqa: S608
    + _SIGHTING_CONFLICT
)
_BULK_TABLES = {"certificates": _CERT_NAMES, "sightings": _SIGHT_NAMES}


def stored_datetime(value: datetime) -> str:
    """A datetime as the ``UTCDateTime`` columns hold it: naive UTC text with microseconds.

    The same text SQLAlchemy writes on SQLite (so comparisons of stored values stay consistent)
    and a literal PostgreSQL reads into ``timestamp without time zone``.
    """
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return f"{value:%Y-%m-%d %H:%M:%S.%f}"


def _driver_connection(session: Session) -> Any:
    # The session's own connection, so the rows commit or roll back with the rest of the batch.
    return session.connection().connection.dbapi_connection


def _is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def insert_certificates(session: Session, rows: Sequence[tuple[Any, ...]]) -> dict[str, int]:
    """Inserts ``rows`` (in :data:`CERTIFICATE_COLUMNS` order) that are not there yet.

    Returns fingerprint -> id for every row, including those another writer inserted first.
    """
    if not rows:
        return {}
    if _is_postgresql(session):
        ids = _insert_certificates_postgresql(session, rows)
    else:
        ids = _insert_certificates_sqlite(session, rows)
    missing = [row[0] for row in rows if row[0] not in ids]
    if missing:
        ids.update(ids_by_fingerprint(session, missing))
    return ids


def _insert_certificates_sqlite(session: Session, rows: Sequence[tuple[Any, ...]]) -> dict[str, int]:
    cursor = _driver_connection(session).cursor()
    try:
        cursor.executemany(SQLITE_INSERT_CERTIFICATES, rows)
    finally:
        cursor.close()
    # sqlite3's executemany returns no rows, so the new ids are read back by fingerprint.
    return ids_by_fingerprint(session, [row[0] for row in rows])


def _insert_certificates_postgresql(session: Session, rows: Sequence[tuple[Any, ...]]) -> dict[str, int]:
    with _driver_connection(session).cursor() as cursor:
        _copy_into_temp(cursor, "certificates", rows)
        cursor.execute(POSTGRESQL_INSERT_CERTIFICATES)
        return dict(cursor.fetchall())


def upsert_sightings(session: Session, rows: Sequence[tuple[Any, ...]]) -> None:
    """Inserts sightings (in :data:`SIGHTING_COLUMNS` order); a known one gets its last_seen and source."""
    if not rows:
        return
    if _is_postgresql(session):
        with _driver_connection(session).cursor() as cursor:
            _copy_into_temp(cursor, "sightings", rows)
            cursor.execute(POSTGRESQL_UPSERT_SIGHTINGS)
        return
    cursor = _driver_connection(session).cursor()
    try:
        cursor.executemany(SQLITE_UPSERT_SIGHTINGS, rows)
    finally:
        cursor.close()


def _copy_into_temp(cursor: Any, table: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Loads ``rows`` into ``_bulk_<table>``, a per-connection temporary table emptied at commit."""
    temp = f"_bulk_{table}"
    names = _BULK_TABLES[table]
    # Looked up each time rather than remembered: a rolled-back transaction also undoes its CREATE.
    cursor.execute("SELECT to_regclass(%s)", (f"pg_temp.{temp}",))
    if cursor.fetchone()[0] is None:
        cursor.execute(
            f"CREATE TEMP TABLE {temp} ON COMMIT DELETE ROWS AS SELECT {names} FROM {table} WITH NO DATA"  # noqa: S608
        )
    else:
        # Another write earlier in the same transaction (before the commit empties it) may have used it.
        cursor.execute(f"DELETE FROM {temp}")  # noqa: S608
    with cursor.copy(f"COPY {temp} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def ids_by_fingerprint(session: Session, fingerprints: Sequence[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    cursor = _driver_connection(session).cursor()
    marker = "%s" if _is_postgresql(session) else "?"
    try:
        for start in range(0, len(fingerprints), IN_CHUNK):
            chunk = fingerprints[start : start + IN_CHUNK]
            markers = ", ".join(marker for _ in chunk)
            select_ids = (
                f"SELECT fingerprint_sha256, id FROM certificates WHERE fingerprint_sha256 IN ({markers})"  # noqa: S608
            )
            cursor.execute(select_ids, chunk)
            ids.update(cursor.fetchall())
    finally:
        cursor.close()
    return ids
