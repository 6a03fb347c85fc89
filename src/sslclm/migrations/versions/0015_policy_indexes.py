"""policy violations: partial exemption and severity indexes

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-28 06:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# Nearly every violation has no exemption, and most are below high severity (every certificate has
# an informational one); a full evaluation writing millions of them kept an entry for each in both
# indexes, although every query through them names an exemption id or asks for high or worse.
EXEMPTED_WHERE = sa.text("exemption_id IS NOT NULL")
SEVERE_WHERE = sa.text("severity_rank >= 3")


def upgrade() -> None:
    op.drop_index("ix_policy_violations_severity_id", table_name="policy_violations")
    op.create_index(
        "ix_policy_violations_severity_id",
        "policy_violations",
        ["severity_rank", "id"],
        unique=False,
        sqlite_where=SEVERE_WHERE,
        postgresql_where=SEVERE_WHERE,
    )
    op.drop_index("ix_policy_violations_exemption_id", table_name="policy_violations")
    op.create_index(
        "ix_policy_violations_exemption_id",
        "policy_violations",
        ["exemption_id"],
        unique=False,
        sqlite_where=EXEMPTED_WHERE,
        postgresql_where=EXEMPTED_WHERE,
    )


def downgrade() -> None:
    op.drop_index("ix_policy_violations_exemption_id", table_name="policy_violations")
    op.create_index("ix_policy_violations_exemption_id", "policy_violations", ["exemption_id"], unique=False)
    op.drop_index("ix_policy_violations_severity_id", table_name="policy_violations")
    op.create_index(
        "ix_policy_violations_severity_id", "policy_violations", ["severity_rank", "id"], unique=False
    )
