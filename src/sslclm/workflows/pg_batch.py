"""The batch renewal path's multi-row writes on PostgreSQL: one statement over arrays each.

psycopg's ``executemany`` sends one bind-and-execute message per row, and its Python side costs
more per row than the database spends on it; a statement over ``unnest`` of one array per column
goes as one message whatever the batch size, its text stays short (so its prepared form is kept),
and the writes of a batch that belong together are one round trip instead of one per table. The
arrays go in binary form (``%(name)b``): as text, each element would be escaped in Python and
parsed again by the server, which for bytea costs more than ``executemany`` itself.
SQLite keeps ``executemany``, which its driver runs in C.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

# The certificates' new state, their sighting, the lineage row and the managed certificates' new
# state: one statement, so one round trip and one plan for the whole batch. The data-modifying
# CTEs touch different tables, so no row is changed twice by this statement.
_RECORD = """
WITH v AS (
    SELECT * FROM unnest(
        %(certificate_ids)b::bigint[], %(managed_ids)b::bigint[], %(owners)b::text[],
        %(teams)b::text[], %(locations)b::text[], %(sources)b::text[], %(connections)b::bigint[],
        %(renew_at)b::timestamp[]
    ) AS v(certificate_id, managed_id, owner, team, location, source, connection_id, renew_at)
), claimed AS (
    UPDATE certificates AS c
    SET has_private_key = true, owner = v.owner, team = v.team, updated_at = %(now)s
    FROM v WHERE c.id = v.certificate_id
), sighted AS (
    INSERT INTO sightings (certificate_id, kind, location, source, details, first_seen, last_seen)
    SELECT certificate_id, 'issuance', location, source, '{}'::json, %(now)s, %(now)s FROM v
    ON CONFLICT (certificate_id, kind, location) DO UPDATE SET last_seen = excluded.last_seen
), lineage AS (
    INSERT INTO issuances
        (managed_certificate_id, certificate_id, job_id, reason, ca_connection_id, issued_at)
    SELECT managed_id, certificate_id, %(job_id)s, %(reason)s, connection_id, %(now)s FROM v
    ON CONFLICT (job_id, managed_certificate_id) DO NOTHING
)
UPDATE managed_certificates AS m
SET current_certificate_id = v.certificate_id, status = 'active', status_message = NULL,
    ari_window_start = NULL, ari_window_end = NULL, renew_at = v.renew_at, updated_at = %(now)s
FROM v WHERE m.id = v.managed_id
"""

# Apart from _RECORD: it changes certificates too, and a statement may not change a row twice.
_SUPERSEDE = """
UPDATE certificates AS c SET superseded_by_id = v.new_id, updated_at = %(now)s
FROM unnest(%(previous_ids)b::bigint[], %(new_ids)b::bigint[]) AS v(previous_id, new_id)
WHERE c.id = v.previous_id
"""

_INSERT_KEYS = """
INSERT INTO private_keys (public_key_sha256, encrypted_pkcs8, created_at)
SELECT * FROM unnest(%(fingerprints)b::text[], %(sealed)b::bytea[], %(created)b::timestamp[])
ON CONFLICT (public_key_sha256) DO NOTHING
"""

_INSERT_STATE = """
INSERT INTO connector_state (scope, key, value, updated_at)
SELECT %(scope)s, key, value, %(now)s FROM unnest(%(keys)b::text[], %(values)b::bytea[]) AS v(key, value)
ON CONFLICT (scope, key) DO NOTHING
"""

_SELECT_STATE = (
    "SELECT key, value FROM connector_state WHERE scope = %(scope)s AND key = ANY(%(keys)b::text[])"
)


def is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _cursor(session: Session) -> Any:
    # The session's own connection, so these rows commit or roll back with the rest of the step.
    return session.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]


def _naive_utc(value: datetime) -> datetime:
    """As the ``UTCDateTime`` columns store it (naive UTC): the driver gets no type decorator here."""
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


@dataclass(frozen=True, slots=True)
class RecordedRow:
    """One recorded certificate of a batch, as the recording statement takes it."""

    certificate_id: int
    managed_id: int
    previous_id: int | None
    owner: str | None
    team: str | None
    location: str
    source: str
    connection_id: int
    renew_at: datetime


def record_rows(
    session: Session, rows: Sequence[RecordedRow], *, job_id: int, reason: str, now: datetime
) -> None:
    """Claims the new certificates, sights them, writes the lineage, moves each managed certificate
    on, and marks the previous certificates superseded: two statements in one round trip."""
    stamp = _naive_utc(now)
    superseded = [row for row in rows if row.previous_id not in (None, row.certificate_id)]
    connection = session.connection().connection.dbapi_connection
    with connection.pipeline(), connection.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(
            _RECORD,
            {
                "certificate_ids": [row.certificate_id for row in rows],
                "managed_ids": [row.managed_id for row in rows],
                "owners": [row.owner for row in rows],
                "teams": [row.team for row in rows],
                "locations": [row.location for row in rows],
                "sources": [row.source for row in rows],
                "connections": [row.connection_id for row in rows],
                "renew_at": [_naive_utc(row.renew_at) for row in rows],
                "job_id": job_id,
                "reason": reason,
                "now": stamp,
            },
        )
        if superseded:
            cursor.execute(
                _SUPERSEDE,
                {
                    "previous_ids": [row.previous_id for row in superseded],
                    "new_ids": [row.certificate_id for row in superseded],
                    "now": stamp,
                },
            )


def insert_keys(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Sealed keys (``public_key_sha256``, ``encrypted_pkcs8``, ``created_at``) in one statement;
    a key already stored is left as it is."""
    if not rows:
        return
    with _cursor(session) as cursor:
        cursor.execute(
            _INSERT_KEYS,
            {
                "fingerprints": [row["public_key_sha256"] for row in rows],
                "sealed": [bytes(row["encrypted_pkcs8"]) for row in rows],
                "created": [_naive_utc(row["created_at"]) for row in rows],
            },
        )


def insert_state(session: Session, scope: str, entries: dict[str, bytes], now: datetime) -> int:
    """Inserts the connector state entries that are not there yet; returns how many were."""
    with _cursor(session) as cursor:
        cursor.execute(
            _INSERT_STATE,
            {"scope": scope, "keys": list(entries), "values": list(entries.values()), "now": _naive_utc(now)},
        )
        return int(cursor.rowcount)


def select_state(connection: Connection, scope: str, keys: Sequence[str]) -> dict[str, bytes]:
    """The entries of ``keys`` that exist, one array parameter instead of one bound value per key."""
    with connection.connection.dbapi_connection.cursor() as cursor:  # type: ignore[union-attr]
        cursor.execute(_SELECT_STATE, {"scope": scope, "keys": list(keys)})
        return {str(key): bytes(value) for key, value in cursor.fetchall()}
