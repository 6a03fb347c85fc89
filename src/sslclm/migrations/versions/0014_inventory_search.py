"""inventory: indexed free-text search over certificates

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-28 06:15:00.000000

The inventory's ``q`` filter is a case-insensitive substring match on ``search_text`` (already
lower-cased by the writer). ``LIKE '%text%'`` cannot use a B-tree, so it read every row; both
backends get a trigram index instead:

- SQLite: ``certificates_search``, an FTS5 table with the trigram tokenizer over
  ``certificates.search_text`` (external content: the text is stored once, in ``certificates``).
  Triggers keep it in step with every insert, delete and change of ``search_text``, whichever code
  path makes it (the ORM writer, the bulk importer's ``executemany``, a raw statement).
- PostgreSQL: a GIN ``gin_trgm_ops`` index on ``search_text`` from the ``pg_trgm`` extension,
  which ``LIKE '%text%'`` uses directly. When the server does not ship ``pg_trgm``, or the role
  may not create it, the index is left out (with a warning) and the filter keeps scanning.
"""

from __future__ import annotations

import logging

from alembic import op
from sqlalchemy.exc import DBAPIError

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

log = logging.getLogger(__name__)

SQLITE_TABLE = """
    CREATE VIRTUAL TABLE certificates_search USING fts5(
        search_text, content='certificates', content_rowid='id', tokenize='trigram'
    )
"""

# An external-content FTS5 table is told what to forget with the row's old text ('delete').
SQLITE_TRIGGERS = [
    """
    CREATE TRIGGER certificates_search_insert AFTER INSERT ON certificates
    BEGIN
        INSERT INTO certificates_search (rowid, search_text) VALUES (NEW.id, NEW.search_text);
    END
    """,
    """
    CREATE TRIGGER certificates_search_delete AFTER DELETE ON certificates
    BEGIN
        INSERT INTO certificates_search (certificates_search, rowid, search_text)
        VALUES ('delete', OLD.id, OLD.search_text);
    END
    """,
    """
    CREATE TRIGGER certificates_search_update AFTER UPDATE OF search_text ON certificates
    WHEN OLD.search_text IS NOT NEW.search_text
    BEGIN
        INSERT INTO certificates_search (certificates_search, rowid, search_text)
        VALUES ('delete', OLD.id, OLD.search_text);
        INSERT INTO certificates_search (rowid, search_text) VALUES (NEW.id, NEW.search_text);
    END
    """,
]
SQLITE_TRIGGER_NAMES = (
    "certificates_search_insert",
    "certificates_search_delete",
    "certificates_search_update",
)

PG_INDEX = "ix_certificates_search_text_trgm"


def _pg_trgm() -> bool:
    """Whether ``pg_trgm`` is installed in this database, installing it when the server ships it."""
    bind = op.get_bind()
    if bind.exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'").first():
        return True
    if not bind.exec_driver_sql("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'").first():
        log.warning("pg_trgm is not available on this server: free-text search will scan")
        return False
    try:
        # In a savepoint: a refusal (a role that may not create it) leaves the migration running.
        with bind.begin_nested():
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except DBAPIError as exc:
        log.warning("cannot create the pg_trgm extension (%s): free-text search will scan", exc.orig)
        return False
    return True


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        if _pg_trgm():
            op.execute(f"CREATE INDEX {PG_INDEX} ON certificates USING gin (search_text gin_trgm_ops)")
        return
    op.execute(SQLITE_TABLE)
    # Indexes the rows already there before the triggers take over (one transaction).
    op.execute("INSERT INTO certificates_search (certificates_search) VALUES ('rebuild')")
    for statement in SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # The extension stays: other objects may have come to use it.
        op.execute(f"DROP INDEX IF EXISTS {PG_INDEX}")
        return
    for name in SQLITE_TRIGGER_NAMES:
        op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.execute("DROP TABLE IF EXISTS certificates_search")
