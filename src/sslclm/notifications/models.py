"""Notification routing rules, raised events and the delivery log.

Channels are notifier connections (``connections`` rows of kind ``notifier``), configured and
sealed like every other connector instance.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from sslclm.core.db import Base, UTCDateTime
from sslclm.inventory.models import BigId


class NotificationRule(Base):
    """Which events go to which channel, for which owner, team or tag."""

    __tablename__ = "notification_rules"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(150), unique=True)
    event: Mapped[str] = mapped_column(String(64))  # certificate.expiring, policy.critical, job.failed
    thresholds: Mapped[list[int]] = mapped_column(JSON, default=list)  # days, for certificate.expiring
    owner: Mapped[str | None] = mapped_column(String(255))
    team: Mapped[str | None] = mapped_column(String(255))
    tag: Mapped[str | None] = mapped_column(String(128))
    channel_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Held for the channel's daily digest instead of being sent one by one.
    digest: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class NotificationEvent(Base):
    """Something that happened elsewhere (a job failed, a store drifted), raised once per key.

    Rules pick events up by kind on the next sweep; the unique (kind, key) pair is what keeps a
    repeating condition (the same drift found every hour) from raising a storm.
    """

    __tablename__ = "notification_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    severity: Mapped[str] = mapped_column(String(16))
    certificate_id: Mapped[int | None] = mapped_column(ForeignKey("certificates.id", ondelete="SET NULL"))
    owner: Mapped[str | None] = mapped_column(String(255))
    team: Mapped[str | None] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("kind", "key"),
        Index("ix_notification_events_kind_created_at", "kind", "created_at"),
    )


class NotificationLog(Base):
    """One notification: its unique event key (so each is sent once) and how delivery went."""

    __tablename__ = "notification_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(255), unique=True)
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("notification_rules.id", ondelete="SET NULL"))
    channel_id: Mapped[int | None] = mapped_column(ForeignKey("connections.id", ondelete="SET NULL"))
    event: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    severity: Mapped[str] = mapped_column(String(16))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # pending, sent, failed; held (waiting for the daily digest), digested (sent inside one)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_notification_log_status_id", "status", "id"),)
