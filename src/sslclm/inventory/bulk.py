"""Bulk writes of certificate and sighting rows straight through the database driver.

An import writes thousands of rows per transaction. Going through SQLAlchemy's statement
execution costs more CPU per row than the driver itself (bind processing of every value,
type decorators, JSON serialisation), so the rows here arrive already in the form the
column stores (datetimes as text, JSON as text) and go to the DBAPI connection under the
session's own transaction: ``executemany`` on SQLite, ``COPY`` into a temporary table then one
``INSERT ... SELECT ... ON CONFLICT`` on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # Parser processes import stored_datetime from here and nothing of SQLAlchemy.
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
_SQLITE_FINGERPRINTS_AT = "SELECT id, fingerprint_sha256 FROM certificates WHERE id IN (?, ?)"
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
POSTGRESQL_IDS_BY_FINGERPRINT = (
    "SELECT fingerprint_sha256, id FROM certificates WHERE fingerprint_sha256 = ANY(%s::text[])"
)
_BULK_TABLES = {"certificates": _CERT_NAMES, "sightings": _SIGHT_NAMES}
POSTGRESQL_COPY_CERTIFICATES = f"COPY certificates (id, {_CERT_NAMES}) FROM STDIN (FORMAT BINARY)"
POSTGRESQL_COPY_SIGHTINGS = f"COPY sightings ({_SIGHT_NAMES}) FROM STDIN (FORMAT BINARY)"
_NEXT_CERTIFICATE_IDS = (
    "SELECT nextval(pg_get_serial_sequence('certificates', 'id')) FROM generate_series(1, %s)"
)
# Binary COPY types, column by column. Character and JSON columns go as text: the binary form of
# varchar and json is their text (json as "json" would be encoded once more, as a JSON string).
_CERTIFICATE_TYPES = (
    "int8",  # id
    *("text",) * 5,  # fingerprints, serial, subject, common_name
    "int8",  # issuer_id
    "timestamp",
    "timestamp",
    "text",  # key_algorithm
    "int4",  # key_size
    "text",  # key_curve
    "text",  # signature_algorithm
    *("text",) * 3,  # sans, key_usage, extended_key_usage
    "bool",  # is_ca
    "int4",  # path_length
    "text",  # authority_key_id
    "text",  # subject_key_id
    *("text",) * 3,  # crl_distribution_points, ocsp_urls, ca_issuer_urls
    "bool",  # self_signed
    "text",  # public_key_sha256
    "bytea",  # der
    "text",  # search_text
    "text",  # source
    "bool",  # has_private_key
    "timestamp",
    "timestamp",
)
_CERTIFICATE_TIMESTAMPS = tuple(
    CERTIFICATE_COLUMNS.index(name) for name in ("not_before", "not_after", "created_at", "updated_at")
)
_SIGHTING_TYPES = ("int8", "text", "text", "text", "text", "timestamp", "timestamp")
_SIGHTING_TIMESTAMPS = (5, 6)
_UNIQUE_VIOLATION = "23505"


def stored_datetime(value: datetime) -> str:
    """A datetime as the ``UTCDateTime`` columns hold it: naive UTC text with microseconds.

    The same text SQLAlchemy writes on SQLite (so comparisons of stored values stay consistent)
    and a literal PostgreSQL reads into ``timestamp without time zone``.
    """
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    # isoformat pads the year to four digits, as SQLAlchemy does (strftime's %Y does not).
    return value.isoformat(" ", "microseconds")


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
        if cursor.rowcount == len(rows):
            # Every row went in, one after another in this write transaction: a rowid table gives
            # each new row the largest rowid plus one, so the ids run up to the last one inserted.
            # Checked at both ends rather than trusted.
            last = cursor.execute("SELECT last_insert_rowid()").fetchone()[0]
            first = last - len(rows) + 1
            ends = dict(cursor.execute(_SQLITE_FINGERPRINTS_AT, (first, last)).fetchall())
            if ends.get(first) == rows[0][0] and ends.get(last) == rows[-1][0]:
                return {row[0]: first + offset for offset, row in enumerate(rows)}
    finally:
        cursor.close()
    # Some rows were there already (another writer inserted them first): read the ids back.
    return ids_by_fingerprint(session, [row[0] for row in rows])


def _insert_certificates_postgresql(session: Session, rows: Sequence[tuple[Any, ...]]) -> dict[str, int]:
    with _driver_connection(session).cursor() as cursor:
        # The caller looked the fingerprints up: the rows are new unless a concurrent writer has
        # just inserted one of them. So they are copied straight into the table, with ids drawn
        # from its sequence beforehand (no RETURNING, no staging table, no speculative insertion:
        # half the server's time per row), and only if that meets a duplicate does the batch go
        # the staged ``ON CONFLICT`` way instead.
        cursor.execute(_NEXT_CERTIFICATE_IDS, (len(rows),))
        ids = [row[0] for row in cursor.fetchall()]
        copied = _copy_binary(
            cursor,
            POSTGRESQL_COPY_CERTIFICATES,
            _CERTIFICATE_TYPES,
            (
                (cid, *_with_timestamps(row, _CERTIFICATE_TIMESTAMPS))
                for cid, row in zip(ids, rows, strict=True)
            ),
        )
        if copied:
            return {row[0]: cid for cid, row in zip(ids, rows, strict=True)}
        _copy_into_temp(cursor, "certificates", rows)
        cursor.execute(POSTGRESQL_INSERT_CERTIFICATES)
        return dict(cursor.fetchall())


def _with_timestamps(row: tuple[Any, ...], positions: tuple[int, ...]) -> tuple[Any, ...]:
    # Binary COPY takes datetimes, not the stored text the rows carry.
    values = list(row)
    for position in positions:
        values[position] = datetime.fromisoformat(values[position])
    return tuple(values)


def _copy_binary(cursor: Any, statement: str, types: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> bool:
    """Binary ``COPY`` of rows known to be new; False (and nothing copied) if one was not."""
    cursor.execute("SAVEPOINT bulk_copy")
    try:
        with cursor.copy(statement) as copy:
            copy.set_types(types)
            for row in rows:
                copy.write_row(row)
    except Exception as exc:
        if getattr(exc, "sqlstate", None) != _UNIQUE_VIOLATION:
            raise
        cursor.execute("ROLLBACK TO SAVEPOINT bulk_copy")
        return False
    cursor.execute("RELEASE SAVEPOINT bulk_copy")
    return True


def upsert_sightings(
    session: Session, rows: Sequence[tuple[Any, ...]], new_certificates: Collection[int] = ()
) -> None:
    """Inserts sightings (in :data:`SIGHTING_COLUMNS` order); a known one gets its last_seen and source.

    ``new_certificates``: ids of certificates this transaction inserted, whose sightings cannot
    exist yet (on PostgreSQL they are copied straight into the table).
    """
    if not rows:
        return
    if _is_postgresql(session):
        with _driver_connection(session).cursor() as cursor:
            if new_certificates:
                fresh = [row for row in rows if row[0] in new_certificates]
                copied = _copy_binary(
                    cursor,
                    POSTGRESQL_COPY_SIGHTINGS,
                    _SIGHTING_TYPES,
                    (_with_timestamps(row, _SIGHTING_TIMESTAMPS) for row in fresh),
                )
                if copied:
                    rows = [row for row in rows if row[0] not in new_certificates]
                    if not rows:
                        return
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
    if _is_postgresql(session):
        # One array parameter: a short statement psycopg prepares once, not thousands of placeholders.
        try:
            cursor.execute(POSTGRESQL_IDS_BY_FINGERPRINT, (list(fingerprints),))
            return dict(cursor.fetchall())
        finally:
            cursor.close()
    marker = "?"
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
