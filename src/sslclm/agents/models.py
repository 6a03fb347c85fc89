"""Tables of the agents: one-time registration tokens, agent records and the per-agent job queue."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from sslclm.core.db import Base, UTCDateTime
from sslclm.inventory.models import BigId


class AgentStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    REVOKED = "revoked"


class AgentJobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"  # handed to an agent until lease_expires_at
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AgentToken(Base):
    """A one-time registration token; only its SHA-256 is stored."""

    __tablename__ = "agent_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)  # labels the agent may carry
    created_by: Mapped[str] = mapped_column(String(160))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    used_by_agent_id: Mapped[int | None] = mapped_column(BigId)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Agent(Base):
    """A registered agent and the identity certificate it must present on every call."""

    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default=AgentStatus.ONLINE.value)
    capabilities: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    version: Mapped[str | None] = mapped_column(String(50))
    hostname: Mapped[str | None] = mapped_column(String(255))
    address: Mapped[str | None] = mapped_column(String(64))
    # The current identity: both must match the presented certificate (serial alone can collide
    # across CAs, the fingerprint pins the exact certificate).
    cert_serial: Mapped[str] = mapped_column(String(64))
    cert_fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    cert_not_after: Mapped[datetime] = mapped_column(UTCDateTime)
    token_id: Mapped[int | None] = mapped_column(BigId)
    registered_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AgentJob(Base):
    """One piece of work for an agent (by id) or for any agent carrying a label."""

    __tablename__ = "agent_jobs"
    __table_args__ = (
        Index("ix_agent_jobs_agent_id_status_id", "agent_id", "status", "id"),
        Index("ix_agent_jobs_label_status_id", "label", "status", "id"),
        Index("ix_agent_jobs_job_id", "job_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"))
    label: Mapped[str | None] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=AgentJobStatus.QUEUED.value)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    claimed_by: Mapped[int | None] = mapped_column(BigId)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    progress: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    # The server job that waits for this one (remote enrollment), resumed when the result arrives.
    job_id: Mapped[int | None] = mapped_column(BigId)
    requested_by: Mapped[str] = mapped_column(String(160))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
