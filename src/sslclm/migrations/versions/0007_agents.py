"""agents: agent records, registration tokens and per-agent jobs

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 03:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sslclm.core.db

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "agent_tokens",
        sa.Column("id", ID, nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=160), nullable=False),
        sa.Column("created_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.Column("expires_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.Column("used_at", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.Column("used_by_agent_id", ID, nullable=True),
        sa.Column("revoked_at", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_agent_tokens_token_hash")),
    )
    op.create_table(
        "agents",
        sa.Column("id", ID, nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("capabilities", sa.JSON(), nullable=False),
        sa.Column("version", sa.String(length=50), nullable=True),
        sa.Column("hostname", sa.String(length=255), nullable=True),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("cert_serial", sa.String(length=64), nullable=False),
        sa.Column("cert_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("cert_not_after", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.Column("token_id", ID, nullable=True),
        sa.Column("registered_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.Column("revoked_at", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agents")),
        sa.UniqueConstraint("name", name=op.f("uq_agents_name")),
    )
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_agents_cert_fingerprint"), ["cert_fingerprint"], unique=False)
    op.create_table(
        "agent_jobs",
        sa.Column("id", ID, nullable=False),
        sa.Column("agent_id", ID, nullable=True),
        sa.Column("label", sa.String(length=64), nullable=True),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("claimed_by", ID, nullable=True),
        sa.Column("lease_expires_at", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.Column("progress", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("job_id", ID, nullable=True),
        sa.Column("requested_by", sa.String(length=160), nullable=False),
        sa.Column("created_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.Column("finished_at", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_agent_jobs_agent_id_agents"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_jobs")),
    )
    with op.batch_alter_table("agent_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_agent_jobs_agent_id_status_id", ["agent_id", "status", "id"], unique=False)
        batch_op.create_index("ix_agent_jobs_label_status_id", ["label", "status", "id"], unique=False)
        batch_op.create_index("ix_agent_jobs_job_id", ["job_id"], unique=False)


def downgrade() -> None:
    op.drop_table("agent_jobs")
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_agents_cert_fingerprint"))
    op.drop_table("agents")
    op.drop_table("agent_tokens")
