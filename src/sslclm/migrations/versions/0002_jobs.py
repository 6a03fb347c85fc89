"""durable jobs: jobs, job events, periodic ticks

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 00:05:32.564166
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sslclm.core.db

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
READY = sa.text("status IN ('queued', 'waiting')")
RUNNING = sa.text("status = 'running'")
ACTIVE = sa.text("status IN ('queued', 'running', 'waiting')")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", BigId, nullable=False),
        sa.Column("kind", sa.String(length=100), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("step", sa.String(length=100), nullable=False),
        sa.Column("state", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("run_after", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.Column("lease_owner", sa.String(length=160), nullable=True),
        sa.Column("lease_expires_at", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("dedupe_key", sa.String(length=255), nullable=True),
        sa.Column("target", sa.String(length=255), nullable=True),
        sa.Column("created_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.Column("finished_at", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(
        "ix_jobs_ready",
        "jobs",
        [sa.text("priority DESC"), "run_after", "id"],
        sqlite_where=READY,
        postgresql_where=READY,
    )
    op.create_index(
        "ix_jobs_lease_expiry", "jobs", ["lease_expires_at"], sqlite_where=RUNNING, postgresql_where=RUNNING
    )
    op.create_index(
        "uq_jobs_active_dedupe_key",
        "jobs",
        ["dedupe_key"],
        unique=True,
        sqlite_where=ACTIVE,
        postgresql_where=ACTIVE,
    )
    op.create_index("ix_jobs_status_id", "jobs", ["status", "id"])
    op.create_index("ix_jobs_kind_id", "jobs", ["kind", "id"])
    op.create_index("ix_jobs_target_id", "jobs", ["target", "id"])

    op.create_table(
        "job_events",
        sa.Column("id", BigId, nullable=False),
        sa.Column("job_id", BigId, nullable=False),
        sa.Column("occurred_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.Column("step", sa.String(length=100), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_events_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
    )
    op.create_index("ix_job_events_job_id_id", "job_events", ["job_id", "id"])

    op.create_table(
        "periodic_ticks",
        sa.Column("id", BigId, nullable=False),
        sa.Column("schedule", sa.String(length=100), nullable=False),
        sa.Column("due_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.Column("job_id", BigId, nullable=True),
        sa.Column("created_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_periodic_ticks")),
        sa.UniqueConstraint("schedule", "due_at", name=op.f("uq_periodic_ticks_schedule_due_at")),
    )
    op.create_index("ix_periodic_ticks_due_at", "periodic_ticks", ["due_at"])


def downgrade() -> None:
    op.drop_table("periodic_ticks")
    op.drop_table("job_events")
    op.drop_table("jobs")
