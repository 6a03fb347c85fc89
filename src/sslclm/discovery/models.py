"""Discovery tables: endpoints and what they served when, scans and their per-endpoint results, schedules."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from sslclm.core.db import Base, UTCDateTime
from sslclm.inventory.models import BigId


class ScanStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINISHED_SCAN_STATUSES = (ScanStatus.SUCCEEDED, ScanStatus.FAILED, ScanStatus.CANCELLED)


class Endpoint(Base):
    """A TLS endpoint: where to connect (host, port), the name asked for (SNI) and its latest result.

    ``sni`` is ``""`` when no name is sent: unique constraints treat NULLs as distinct, and an
    address scanned without SNI must be one row however often it is scanned.
    """

    __tablename__ = "endpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    sni: Mapped[str] = mapped_column(String(255), default="")
    protocol: Mapped[str] = mapped_column(String(16), default="tls")
    address: Mapped[str | None] = mapped_column(String(64))  # the peer address last connected to
    last_scanned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[str | None] = mapped_column(String(8))  # ok, error
    last_error_kind: Mapped[str | None] = mapped_column(String(32))
    last_error: Mapped[str | None] = mapped_column(Text)
    # The leaf served at the last successful scan; kept through later failures so that an endpoint
    # that went dark still shows what it used to serve.
    certificate_id: Mapped[int | None] = mapped_column(ForeignKey("certificates.id", ondelete="SET NULL"))
    chain: Mapped[list[str]] = mapped_column(JSON, default=list)  # fingerprints served, leaf first
    tls_version: Mapped[str | None] = mapped_column(String(16))
    cipher: Mapped[str | None] = mapped_column(String(128))
    alpn: Mapped[str | None] = mapped_column(String(32))
    trusted: Mapped[bool | None] = mapped_column(Boolean)
    trust_error_kind: Mapped[str | None] = mapped_column(String(32))
    trust_error: Mapped[str | None] = mapped_column(Text)
    hostname_match: Mapped[bool | None] = mapped_column(Boolean)
    # The open observation (what it serves now); no foreign key, to keep the two tables acyclic.
    observation_id: Mapped[int | None] = mapped_column(BigId)
    last_scan_id: Mapped[int | None] = mapped_column(BigId)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_ok_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("host", "port", "sni", "protocol"),
        Index("ix_endpoints_certificate_id", "certificate_id"),
        Index("ix_endpoints_port_id", "port", "id"),
        Index("ix_endpoints_last_status_id", "last_status", "id"),
    )


class EndpointObservation(Base):
    """One stretch of time during which an endpoint served one certificate.

    A row whose ``previous_certificate_id`` is set is a change event: the endpoint switched from
    that certificate to this one when the row was opened.
    """

    __tablename__ = "endpoint_observations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"))
    certificate_id: Mapped[int] = mapped_column(ForeignKey("certificates.id", ondelete="CASCADE"))
    previous_certificate_id: Mapped[int | None] = mapped_column(
        ForeignKey("certificates.id", ondelete="SET NULL")
    )
    scan_id: Mapped[int | None] = mapped_column(ForeignKey("scans.id", ondelete="SET NULL"))
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_endpoint_observations_endpoint_id_id", "endpoint_id", "id"),
        Index("ix_endpoint_observations_certificate_id", "certificate_id"),
    )


class Scan(Base):
    """One network scan: what to scan and how, where it stands, and what it found."""

    __tablename__ = "scans"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255))
    targets: Mapped[dict[str, Any]] = mapped_column(JSON)  # targets, ports, sni, exclude, protocol
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # concurrency, timeouts, rates
    # SHA-256 of the normalised target spec: scans with equal keys cover the same endpoints, so the
    # latest earlier one is what a scan is compared with.
    target_key: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=ScanStatus.QUEUED.value)
    total: Mapped[int] = mapped_column(BigInteger, default=0)
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    found: Mapped[int] = mapped_column(BigInteger, default=0)  # endpoints that served a certificate
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    certificates: Mapped[int] = mapped_column(BigInteger, default=0)  # distinct leaves seen
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    job_id: Mapped[int | None] = mapped_column(BigId)
    schedule_id: Mapped[int | None] = mapped_column(ForeignKey("scan_schedules.id", ondelete="SET NULL"))
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_scans_target_key_id", "target_key", "id"),
        Index("ix_scans_status_id", "status", "id"),
        Index("ix_scans_schedule_id", "schedule_id"),
    )


class ScanEndpointResult(Base):
    """What one scan saw at one endpoint, kept for comparing scans."""

    __tablename__ = "scan_results"

    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("endpoints.id", ondelete="CASCADE"), primary_key=True)
    ok: Mapped[bool] = mapped_column(Boolean)
    certificate_id: Mapped[int | None] = mapped_column(ForeignKey("certificates.id", ondelete="SET NULL"))
    error_kind: Mapped[str | None] = mapped_column(String(32))
    trusted: Mapped[bool | None] = mapped_column(Boolean)

    __table_args__ = (Index("ix_scan_results_certificate_id", "certificate_id"),)


class ScanSchedule(Base):
    """A scan repeated on a cron expression (UTC)."""

    __tablename__ = "scan_schedules"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(150), unique=True)
    cron: Mapped[str] = mapped_column(String(120))
    targets: Mapped[dict[str, Any]] = mapped_column(JSON)
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_scan_id: Mapped[int | None] = mapped_column(BigId)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_scan_schedules_enabled_next_run_at", "enabled", "next_run_at"),)
