"""deployments: store bindings of managed certificates and the deployment history

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 03:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sslclm.core.db

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "store_bindings",
        sa.Column("id", ID, nullable=False),
        sa.Column("managed_certificate_id", ID, nullable=False),
        sa.Column("store_connection_id", ID, nullable=False),
        sa.Column("alias", sa.String(length=128), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("verify_host", sa.String(length=255), nullable=True),
        sa.Column("verify_port", sa.Integer(), nullable=True),
        sa.Column("verify_sni", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("last_deployed_fingerprint", sa.String(length=64), nullable=True),
        sa.Column("last_deployed_certificate_id", sa.Integer(), nullable=True),
        sa.Column("last_deployed_at", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["managed_certificate_id"],
            ["managed_certificates.id"],
            name=op.f("fk_store_bindings_managed_certificate_id_managed_certificates"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["store_connection_id"],
            ["connections.id"],
            name=op.f("fk_store_bindings_store_connection_id_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_store_bindings")),
        sa.UniqueConstraint(
            "store_connection_id", "alias", name=op.f("uq_store_bindings_store_connection_id_alias")
        ),
    )
    with op.batch_alter_table("store_bindings", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_store_bindings_managed_certificate_id"), ["managed_certificate_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_store_bindings_store_connection_id"), ["store_connection_id"], unique=False
        )
    op.create_table(
        "deployments",
        sa.Column("id", ID, nullable=False),
        sa.Column("binding_id", ID, nullable=False),
        sa.Column("certificate_id", sa.Integer(), nullable=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.Column("finished_at", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["binding_id"],
            ["store_bindings.id"],
            name=op.f("fk_deployments_binding_id_store_bindings"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deployments_binding_id"), ["binding_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_deployments_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployments_job_id"))
        batch_op.drop_index(batch_op.f("ix_deployments_binding_id"))
    op.drop_table("deployments")
    with op.batch_alter_table("store_bindings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_store_bindings_store_connection_id"))
        batch_op.drop_index(batch_op.f("ix_store_bindings_managed_certificate_id"))
    op.drop_table("store_bindings")
