"""deployments: one history row per binding and job (a deployment batch job deploys many bindings)

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28 06:15:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Rows a job wrote twice for one binding (none are expected) keep their first.
    op.execute(
        sa.text(
            "DELETE FROM deployments WHERE job_id IS NOT NULL AND id NOT IN "
            "(SELECT MIN(id) FROM deployments WHERE job_id IS NOT NULL GROUP BY binding_id, job_id)"
        )
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.create_unique_constraint(
            batch_op.f("uq_deployments_binding_id_job_id"), ["binding_id", "job_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_deployments_binding_id_job_id"), type_="unique")
