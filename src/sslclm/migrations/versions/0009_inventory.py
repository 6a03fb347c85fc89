"""inventory: maintained aggregates for fast counts

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 03:00:00.000000

``issuer_certificate_counts`` holds, per issuer, how many certificates are live (not archived)
and archived. Triggers keep it exact in the same transaction as every insert, delete and
archive/unarchive of a certificate, whichever code path makes it. On PostgreSQL the insert and
delete triggers are statement-level with transition tables (one aggregate update per bulk
statement, not per row), and lock the affected counter rows in issuer order so that two
concurrent imports cannot deadlock on them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

SQLITE_TRIGGERS = [
    """
    CREATE TRIGGER issuers_count_row AFTER INSERT ON issuers
    BEGIN
        INSERT INTO issuer_certificate_counts (issuer_id, live, archived) VALUES (NEW.id, 0, 0);
    END
    """,
    """
    CREATE TRIGGER certificates_count_insert AFTER INSERT ON certificates
    BEGIN
        UPDATE issuer_certificate_counts
        SET live = live + (NEW.archived_at IS NULL), archived = archived + (NEW.archived_at IS NOT NULL)
        WHERE issuer_id = NEW.issuer_id;
    END
    """,
    """
    CREATE TRIGGER certificates_count_delete AFTER DELETE ON certificates
    BEGIN
        UPDATE issuer_certificate_counts
        SET live = live - (OLD.archived_at IS NULL), archived = archived - (OLD.archived_at IS NOT NULL)
        WHERE issuer_id = OLD.issuer_id;
    END
    """,
    """
    CREATE TRIGGER certificates_count_update AFTER UPDATE OF issuer_id, archived_at ON certificates
    WHEN OLD.issuer_id <> NEW.issuer_id OR (OLD.archived_at IS NULL) <> (NEW.archived_at IS NULL)
    BEGIN
        UPDATE issuer_certificate_counts
        SET live = live - (OLD.archived_at IS NULL), archived = archived - (OLD.archived_at IS NOT NULL)
        WHERE issuer_id = OLD.issuer_id;
        UPDATE issuer_certificate_counts
        SET live = live + (NEW.archived_at IS NULL), archived = archived + (NEW.archived_at IS NOT NULL)
        WHERE issuer_id = NEW.issuer_id;
    END
    """,
]

# Applies the per-issuer totals of a transition table (``changed``) with the given sign.
_PG_APPLY = """
    PERFORM 1 FROM issuer_certificate_counts
    WHERE issuer_id IN (SELECT DISTINCT issuer_id FROM changed)
    ORDER BY issuer_id FOR UPDATE;
    UPDATE issuer_certificate_counts AS c
    SET live = c.live + {sign} n.live, archived = c.archived + {sign} n.archived
    FROM (
        SELECT issuer_id,
               count(*) FILTER (WHERE archived_at IS NULL) AS live,
               count(*) FILTER (WHERE archived_at IS NOT NULL) AS archived
        FROM changed GROUP BY issuer_id
    ) AS n
    WHERE c.issuer_id = n.issuer_id;
"""

POSTGRESQL_TRIGGERS = [
    """
    CREATE FUNCTION issuers_count_row() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO issuer_certificate_counts (issuer_id, live, archived) VALUES (NEW.id, 0, 0);
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER issuers_count_row AFTER INSERT ON issuers
    FOR EACH ROW EXECUTE FUNCTION issuers_count_row()
    """,
    f"""
    CREATE FUNCTION certificates_count_insert() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        {_PG_APPLY.format(sign="+")}
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER certificates_count_insert AFTER INSERT ON certificates
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION certificates_count_insert()
    """,
    f"""
    CREATE FUNCTION certificates_count_delete() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        {_PG_APPLY.format(sign="-")}
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER certificates_count_delete AFTER DELETE ON certificates
    REFERENCING OLD TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION certificates_count_delete()
    """,
    """
    CREATE FUNCTION certificates_count_update() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE issuer_certificate_counts
        SET live = live - (OLD.archived_at IS NULL)::int,
            archived = archived - (OLD.archived_at IS NOT NULL)::int
        WHERE issuer_id = OLD.issuer_id;
        UPDATE issuer_certificate_counts
        SET live = live + (NEW.archived_at IS NULL)::int,
            archived = archived + (NEW.archived_at IS NOT NULL)::int
        WHERE issuer_id = NEW.issuer_id;
        RETURN NULL;
    END $$
    """,
    """
    CREATE TRIGGER certificates_count_update AFTER UPDATE OF issuer_id, archived_at ON certificates
    FOR EACH ROW
    WHEN (OLD.issuer_id <> NEW.issuer_id OR (OLD.archived_at IS NULL) <> (NEW.archived_at IS NULL))
    EXECUTE FUNCTION certificates_count_update()
    """,
]

BACKFILL = """
    INSERT INTO issuer_certificate_counts (issuer_id, live, archived)
    SELECT i.id,
           (SELECT count(*) FROM certificates AS c WHERE c.issuer_id = i.id AND c.archived_at IS NULL),
           (SELECT count(*) FROM certificates AS c WHERE c.issuer_id = i.id AND c.archived_at IS NOT NULL)
    FROM issuers AS i
"""

TRIGGERS = (
    "issuers_count_row",
    "certificates_count_insert",
    "certificates_count_delete",
    "certificates_count_update",
)


def upgrade() -> None:
    op.create_table(
        "issuer_certificate_counts",
        sa.Column("issuer_id", ID, nullable=False),
        sa.Column("live", sa.BigInteger(), nullable=False),
        sa.Column("archived", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["issuer_id"],
            ["issuers.id"],
            name=op.f("fk_issuer_certificate_counts_issuer_id_issuers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("issuer_id", name=op.f("pk_issuer_certificate_counts")),
    )
    postgresql = op.get_bind().dialect.name == "postgresql"
    # Counted before the triggers exist; the migration runs in one transaction on both backends.
    op.execute(BACKFILL)
    for statement in POSTGRESQL_TRIGGERS if postgresql else SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for trigger in TRIGGERS:
        table = "issuers" if trigger.startswith("issuers") else "certificates"
        op.execute(
            f"DROP TRIGGER IF EXISTS {trigger} ON {table}"
            if postgresql
            else f"DROP TRIGGER IF EXISTS {trigger}"
        )
        if postgresql:
            op.execute(f"DROP FUNCTION IF EXISTS {trigger}()")
    op.drop_table("issuer_certificate_counts")
