"""policies: revocation lists, violation counts, the re-evaluation clock, report snapshots

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 03:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sslclm.core.db

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_violation_counts",
        sa.Column("policy", sa.String(length=100), nullable=False),
        sa.Column("check", sa.String(length=64), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("violations", sa.Integer(), nullable=False),
        sa.Column("exempted", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("policy", "check", "severity", name=op.f("pk_policy_violation_counts")),
    )
    op.create_table(
        "policy_clock",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("evaluated_until", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_policy_clock")),
    )
    op.create_table(
        "revocation_lists",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=True),
        sa.Column("this_update", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.Column("next_update", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.Column("crl_number", sa.String(length=64), nullable=True),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("signature_valid", sa.Boolean(), nullable=True),
        sa.Column("der", sa.LargeBinary(), nullable=True),
        sa.Column("fetched_at", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.Column("due_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.Column("recheck", sa.Boolean(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revocation_lists")),
        sa.UniqueConstraint("url", name=op.f("uq_revocation_lists_url")),
    )
    op.create_table(
        "report_snapshots",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("computed_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_report_snapshots")),
    )
    with op.batch_alter_table("revocation_lists", schema=None) as batch_op:
        batch_op.create_index("ix_revocation_lists_due_at", ["due_at"], unique=False)
    with op.batch_alter_table("policy_violations", schema=None) as batch_op:
        batch_op.create_index("ix_policy_violations_exemption_id", ["exemption_id"], unique=False)
    # Existing violations are counted once here; the evaluator keeps the counts from then on.
    op.execute(
        'INSERT INTO policy_violation_counts (policy, "check", severity, violations, exempted) '
        'SELECT policy, "check", severity, COUNT(*) - COUNT(exemption_id), COUNT(exemption_id) '
        'FROM policy_violations GROUP BY policy, "check", severity'
    )


def downgrade() -> None:
    with op.batch_alter_table("policy_violations", schema=None) as batch_op:
        batch_op.drop_index("ix_policy_violations_exemption_id")
    with op.batch_alter_table("revocation_lists", schema=None) as batch_op:
        batch_op.drop_index("ix_revocation_lists_due_at")
    op.drop_table("revocation_lists")
    op.drop_table("report_snapshots")
    op.drop_table("policy_clock")
    op.drop_table("policy_violation_counts")
