"""inventory: a leaner search text, indexed after the insert through a queue

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-28 09:10:00.000000

``search_text`` now holds the subject DN and the SAN values only. The issuer's DN, the serial and
the fingerprint, which were most of its characters, are matched through their own indexes (see
``sslclm.inventory.search``), so the trigram index has about half the text to hold.

The trigram index is no longer written by the statement that inserts a certificate. A trigger
queues the new id in ``certificates_search_pending``; the ``inventory.index-search`` job indexes
the queue in bulk, and search scans the queued rows' text meanwhile:

- SQLite: ``certificates_search`` is again an FTS5 trigram table over ``certificates.search_text``
  (external content), with ``detail=none`` (no positions: ``LIKE`` checks each candidate against
  the text, which substring search needs anyway). Triggers forget a deleted or changed row's old
  text only when it had been indexed, and queue the new text.
- PostgreSQL: ``certificates_search`` is a table of ids and texts with the ``gin_trgm_ops`` index
  (when ``pg_trgm`` is available, as in 0014), rows deleted with their certificate; a changed
  text leaves the index and is queued again.

Every existing certificate is queued; the job indexes them within a minute of the first worker
starting (search is exact before that, only slower).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from alembic import op
from sqlalchemy import Connection, text

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)

_0014 = importlib.import_module("sslclm.migrations.versions.0014_inventory_search")
BATCH = 5000

SQLITE_OLD_TRIGGERS = _0014.SQLITE_TRIGGER_NAMES
SQLITE_TABLES = [
    """
    CREATE VIRTUAL TABLE certificates_search USING fts5(
        search_text, content='certificates', content_rowid='id', tokenize='trigram', detail='none'
    )
    """,
    "CREATE TABLE certificates_search_pending (certificate_id INTEGER PRIMARY KEY)",
]
# An external-content FTS5 table is told what to forget with the row's old text ('delete'), which
# must be what it indexed: a row still queued was never indexed and is only dequeued.
SQLITE_TRIGGERS = [
    """
    CREATE TRIGGER certificates_search_queue AFTER INSERT ON certificates
    BEGIN
        INSERT INTO certificates_search_pending (certificate_id) VALUES (NEW.id);
    END
    """,
    """
    CREATE TRIGGER certificates_search_delete AFTER DELETE ON certificates
    BEGIN
        INSERT INTO certificates_search (certificates_search, rowid, search_text)
        SELECT 'delete', OLD.id, OLD.search_text
        WHERE NOT EXISTS (SELECT 1 FROM certificates_search_pending WHERE certificate_id = OLD.id);
        DELETE FROM certificates_search_pending WHERE certificate_id = OLD.id;
    END
    """,
    """
    CREATE TRIGGER certificates_search_update AFTER UPDATE OF search_text ON certificates
    WHEN OLD.search_text IS NOT NEW.search_text
    BEGIN
        INSERT INTO certificates_search (certificates_search, rowid, search_text)
        SELECT 'delete', OLD.id, OLD.search_text
        WHERE NOT EXISTS (SELECT 1 FROM certificates_search_pending WHERE certificate_id = OLD.id);
        INSERT OR IGNORE INTO certificates_search_pending (certificate_id) VALUES (NEW.id);
    END
    """,
]
SQLITE_TRIGGER_NAMES = (
    "certificates_search_queue",
    "certificates_search_delete",
    "certificates_search_update",
)

PG_OLD_INDEX = _0014.PG_INDEX
PG_INDEX = "ix_certificates_search_trgm"
PG_TABLES = [
    """
    CREATE TABLE certificates_search (
        certificate_id BIGINT PRIMARY KEY REFERENCES certificates (id) ON DELETE CASCADE,
        search_text TEXT NOT NULL
    )
    """,
    "CREATE TABLE certificates_search_pending (certificate_id BIGINT PRIMARY KEY)",
]
# Statement-level with transition tables: a bulk insert queues its ids in one statement.
PG_FUNCTIONS = [
    """
    CREATE FUNCTION certificates_search_queue() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO certificates_search_pending (certificate_id)
        SELECT id FROM new_rows ON CONFLICT DO NOTHING;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION certificates_search_dequeue() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM certificates_search_pending p USING old_rows o WHERE p.certificate_id = o.id;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION certificates_search_requeue() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM certificates_search WHERE certificate_id = NEW.id;
        INSERT INTO certificates_search_pending (certificate_id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
        RETURN NULL;
    END $$
    """,
]
PG_TRIGGERS = [
    """
    CREATE TRIGGER certificates_search_queue AFTER INSERT ON certificates
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION certificates_search_queue()
    """,
    """
    CREATE TRIGGER certificates_search_dequeue AFTER DELETE ON certificates
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION certificates_search_dequeue()
    """,
    """
    CREATE TRIGGER certificates_search_requeue AFTER UPDATE OF search_text ON certificates
    FOR EACH ROW WHEN (OLD.search_text IS DISTINCT FROM NEW.search_text)
    EXECUTE FUNCTION certificates_search_requeue()
    """,
]
PG_NAMES = ("certificates_search_queue", "certificates_search_dequeue", "certificates_search_requeue")


def _san_values(sans: Any) -> list[str]:
    values = orjson.loads(sans) if isinstance(sans, str | bytes) else (sans or [])
    return [str(value).split(":", 1)[-1] for value in values]


def lean_text(subject: str, sans: Any, *_: Any) -> str:
    return "\n".join([subject, *_san_values(sans)]).lower()


def full_text(
    subject: str, sans: Any, common_name: str | None, issuer: str, serial: str, fingerprint: str
) -> str:
    """The text of migration 0014, for a downgrade."""
    return "\n".join([common_name or "", subject, issuer, serial, fingerprint, *_san_values(sans)]).lower()


_ROWS = text(
    "SELECT c.id, c.subject, c.sans, c.common_name, i.dn, c.serial, c.fingerprint_sha256 "
    "FROM certificates c JOIN issuers i ON i.id = c.issuer_id "
    "WHERE c.id > :after ORDER BY c.id LIMIT :limit"
)
_UPDATE = text("UPDATE certificates SET search_text = :text WHERE id = :id")


def _rows(bind: Connection) -> Iterator[list[tuple[Any, ...]]]:
    after = 0
    while True:
        rows = bind.execute(_ROWS, {"after": after, "limit": BATCH}).all()
        if not rows:
            return
        yield [tuple(row) for row in rows]
        after = rows[-1][0]


def _rewrite_texts(make: Callable[..., str]) -> None:
    """Recomputes every certificate's ``search_text`` in id batches (never the whole table at once)."""
    bind = op.get_bind()
    for rows in _rows(bind):
        bind.execute(_UPDATE, [{"text": make(*row[1:]), "id": row[0]} for row in rows])


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(f"DROP INDEX IF EXISTS {PG_OLD_INDEX}")
        _rewrite_texts(lean_text)
        for statement in [*PG_TABLES, *PG_FUNCTIONS, *PG_TRIGGERS]:
            op.execute(statement)
        if bind.exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'").first():
            op.execute(f"CREATE INDEX {PG_INDEX} ON certificates_search USING gin (search_text gin_trgm_ops)")
        else:
            log.warning("pg_trgm is not installed: free-text search will scan")
    else:
        for name in SQLITE_OLD_TRIGGERS:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS certificates_search")
        _rewrite_texts(lean_text)
        for statement in [*SQLITE_TABLES, *SQLITE_TRIGGERS]:
            op.execute(statement)
    op.execute("INSERT INTO certificates_search_pending (certificate_id) SELECT id FROM certificates")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        for name in PG_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name} ON certificates")
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
    else:
        for name in SQLITE_TRIGGER_NAMES:
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.execute("DROP TABLE IF EXISTS certificates_search_pending")
    op.execute("DROP TABLE IF EXISTS certificates_search")
    _rewrite_texts(full_text)
    _0014.upgrade()
