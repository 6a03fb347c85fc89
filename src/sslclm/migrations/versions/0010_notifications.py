"""notifications: digests and event rules

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28 03:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sslclm.core.db

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("certificate_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("owner", sa.String(length=255), nullable=True),
        sa.Column("team", sa.String(length=255), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["certificate_id"],
            ["certificates.id"],
            name=op.f("fk_notification_events_certificate_id_certificates"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_events")),
        sa.UniqueConstraint("kind", "key", name=op.f("uq_notification_events_kind_key")),
    )
    op.create_index(
        "ix_notification_events_kind_created_at", "notification_events", ["kind", "created_at"], unique=False
    )
    with op.batch_alter_table("notification_rules") as batch:
        batch.add_column(sa.Column("digest", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("notification_rules") as batch:
        batch.drop_column("digest")
    op.drop_index("ix_notification_events_kind_created_at", table_name="notification_events")
    op.drop_table("notification_events")
