"""discovery: endpoints, endpoint observations, scans, scan results, scan schedules

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 00:22:27.666004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import sslclm.core.db

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "scan_schedules",
        sa.Column("id", BigId, nullable=False),
        sa.Column("name", sa.String(length=150), nullable=False),
        sa.Column("cron", sa.String(length=120), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("next_run_at", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.Column("last_run_at", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.Column("last_scan_id", BigId, nullable=True),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scan_schedules")),
        sa.UniqueConstraint("name", name=op.f("uq_scan_schedules_name")),
    )
    op.create_index(
        "ix_scan_schedules_enabled_next_run_at", "scan_schedules", ["enabled", "next_run_at"], unique=False
    )
    op.create_table(
        "scans",
        sa.Column("id", BigId, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("target_key", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("done", sa.BigInteger(), nullable=False),
        sa.Column("found", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("certificates", sa.BigInteger(), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("job_id", BigId, nullable=True),
        sa.Column("schedule_id", BigId, nullable=True),
        sa.Column("created_by", sa.String(length=255), nullable=False),
        sa.Column("created_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.Column("started_at", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.Column("finished_at", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["schedule_id"],
            ["scan_schedules.id"],
            name=op.f("fk_scans_schedule_id_scan_schedules"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scans")),
    )
    op.create_index("ix_scans_schedule_id", "scans", ["schedule_id"], unique=False)
    op.create_index("ix_scans_status_id", "scans", ["status", "id"], unique=False)
    op.create_index("ix_scans_target_key_id", "scans", ["target_key", "id"], unique=False)
    op.create_table(
        "endpoints",
        sa.Column("id", BigId, nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("sni", sa.String(length=255), nullable=False),
        sa.Column("protocol", sa.String(length=16), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("last_scanned_at", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.Column("last_status", sa.String(length=8), nullable=True),
        sa.Column("last_error_kind", sa.String(length=32), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("certificate_id", BigId, nullable=True),
        sa.Column("chain", sa.JSON(), nullable=False),
        sa.Column("tls_version", sa.String(length=16), nullable=True),
        sa.Column("cipher", sa.String(length=128), nullable=True),
        sa.Column("alpn", sa.String(length=32), nullable=True),
        sa.Column("trusted", sa.Boolean(), nullable=True),
        sa.Column("trust_error_kind", sa.String(length=32), nullable=True),
        sa.Column("trust_error", sa.Text(), nullable=True),
        sa.Column("hostname_match", sa.Boolean(), nullable=True),
        sa.Column("observation_id", BigId, nullable=True),
        sa.Column("last_scan_id", BigId, nullable=True),
        sa.Column("first_seen_at", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.Column("last_ok_at", sslclm.core.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["certificate_id"],
            ["certificates.id"],
            name=op.f("fk_endpoints_certificate_id_certificates"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_endpoints")),
        sa.UniqueConstraint(
            "host", "port", "sni", "protocol", name=op.f("uq_endpoints_host_port_sni_protocol")
        ),
    )
    op.create_index("ix_endpoints_certificate_id", "endpoints", ["certificate_id"], unique=False)
    op.create_index("ix_endpoints_last_status_id", "endpoints", ["last_status", "id"], unique=False)
    op.create_index("ix_endpoints_port_id", "endpoints", ["port", "id"], unique=False)
    op.create_table(
        "endpoint_observations",
        sa.Column("id", BigId, nullable=False),
        sa.Column("endpoint_id", BigId, nullable=False),
        sa.Column("certificate_id", BigId, nullable=False),
        sa.Column("previous_certificate_id", BigId, nullable=True),
        sa.Column("scan_id", BigId, nullable=True),
        sa.Column("first_seen", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.Column("last_seen", sslclm.core.db.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["certificate_id"],
            ["certificates.id"],
            name=op.f("fk_endpoint_observations_certificate_id_certificates"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["endpoints.id"],
            name=op.f("fk_endpoint_observations_endpoint_id_endpoints"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["previous_certificate_id"],
            ["certificates.id"],
            name=op.f("fk_endpoint_observations_previous_certificate_id_certificates"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["scan_id"],
            ["scans.id"],
            name=op.f("fk_endpoint_observations_scan_id_scans"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_endpoint_observations")),
    )
    op.create_index(
        "ix_endpoint_observations_certificate_id", "endpoint_observations", ["certificate_id"], unique=False
    )
    op.create_index(
        "ix_endpoint_observations_endpoint_id_id",
        "endpoint_observations",
        ["endpoint_id", "id"],
        unique=False,
    )
    op.create_table(
        "scan_results",
        sa.Column("scan_id", BigId, nullable=False),
        sa.Column("endpoint_id", BigId, nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("certificate_id", BigId, nullable=True),
        sa.Column("error_kind", sa.String(length=32), nullable=True),
        sa.Column("trusted", sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(
            ["certificate_id"],
            ["certificates.id"],
            name=op.f("fk_scan_results_certificate_id_certificates"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["endpoint_id"],
            ["endpoints.id"],
            name=op.f("fk_scan_results_endpoint_id_endpoints"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_scan_results_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("scan_id", "endpoint_id", name=op.f("pk_scan_results")),
    )
    op.create_index("ix_scan_results_certificate_id", "scan_results", ["certificate_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_scan_results_certificate_id", table_name="scan_results")
    op.drop_table("scan_results")
    op.drop_index("ix_endpoint_observations_endpoint_id_id", table_name="endpoint_observations")
    op.drop_index("ix_endpoint_observations_certificate_id", table_name="endpoint_observations")
    op.drop_table("endpoint_observations")
    op.drop_index("ix_endpoints_port_id", table_name="endpoints")
    op.drop_index("ix_endpoints_last_status_id", table_name="endpoints")
    op.drop_index("ix_endpoints_certificate_id", table_name="endpoints")
    op.drop_table("endpoints")
    op.drop_index("ix_scans_target_key_id", table_name="scans")
    op.drop_index("ix_scans_status_id", table_name="scans")
    op.drop_index("ix_scans_schedule_id", table_name="scans")
    op.drop_table("scans")
    op.drop_index("ix_scan_schedules_enabled_next_run_at", table_name="scan_schedules")
    op.drop_table("scan_schedules")
