"""issuances: one per managed certificate and job (a renewal batch job issues many)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28 03:30:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("issuances", schema=None) as batch_op:
        batch_op.drop_constraint("uq_issuances_job_id", type_="unique")
        batch_op.create_unique_constraint(
            batch_op.f("uq_issuances_job_id_managed_certificate_id"), ["job_id", "managed_certificate_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("issuances", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_issuances_job_id_managed_certificate_id"), type_="unique")
        batch_op.create_unique_constraint("uq_issuances_job_id", ["job_id"])
