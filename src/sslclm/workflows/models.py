"""Connections, connector state, profiles, managed certificates, their issuances and approvals."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from sslclm.core.db import Base, UTCDateTime
from sslclm.inventory.models import BigId


class Connection(Base):
    """A configured connector instance: a CA connection, a store, a discovery source or a notifier."""

    __tablename__ = "connections"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # ca-gateway, cert-store, discovery-source, notifier
    name: Mapped[str] = mapped_column(String(150))
    type_key: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # every field but the secrets
    sealed_secrets: Mapped[bytes | None] = mapped_column(LargeBinary)  # JSON of the SecretStr fields, sealed
    agent_id: Mapped[int | None] = mapped_column(Integer)  # run by this agent instead of the server
    agent_label: Mapped[str | None] = mapped_column(String(64))  # or by whichever agent has this label
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    last_check_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_check_ok: Mapped[bool | None] = mapped_column(Boolean)
    last_check_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("kind", "name"),)

    @property
    def hosted_on_agent(self) -> bool:
        """Run by an agent (by id or by label) rather than by the server."""
        return self.agent_id is not None or bool(self.agent_label)


class ConnectorStateEntry(Base):
    """One key of a connector instance's own persistent state (see ``sslclm.spi.context.StateStore``)."""

    __tablename__ = "connector_state"

    scope: Mapped[str] = mapped_column(String(100), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Profile(Base):
    """An enrollment template: which CA, what key, how long, which names, whether a second person approves."""

    __tablename__ = "profiles"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(150), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    ca_connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id"))
    key_type: Mapped[str] = mapped_column(String(16))  # EC-P256, EC-P384, RSA-2048, ...
    validity_days: Mapped[int] = mapped_column(Integer)
    allowed_names: Mapped[list[str]] = mapped_column(JSON)  # glob patterns; empty = any
    purpose: Mapped[str] = mapped_column(String(16), default="server")  # server, client, both
    approval_required: Mapped[bool] = mapped_column(Boolean, default=False)
    renewal_mode: Mapped[str] = mapped_column(String(16), default="fraction")  # fraction, days, ari
    renewal_value: Mapped[float] = mapped_column(default=1 / 3)  # remaining fraction, or days before expiry
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # CA-specific request options
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ManagedCertificate(Base):
    """The desired state of a certificate the platform looks after."""

    __tablename__ = "managed_certificates"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    common_name: Mapped[str] = mapped_column(String(255))
    dns_names: Mapped[list[str]] = mapped_column(JSON)
    ip_addresses: Mapped[list[str]] = mapped_column(JSON)
    profile_id: Mapped[int] = mapped_column(ForeignKey("profiles.id"))
    key_policy: Mapped[str] = mapped_column(String(16), default="rotate")  # rotate, reuse
    renewal_mode: Mapped[str | None] = mapped_column(String(16))  # None: the profile's
    renewal_value: Mapped[float | None] = mapped_column()
    auto_renew: Mapped[bool] = mapped_column(Boolean, default=True)
    owner: Mapped[str | None] = mapped_column(String(255))
    team: Mapped[str | None] = mapped_column(String(255))
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    # new, issuing, awaiting-approval, active, failed, revoked, disabled
    status: Mapped[str] = mapped_column(String(32))
    status_message: Mapped[str | None] = mapped_column(Text)
    current_certificate_id: Mapped[int | None] = mapped_column(ForeignKey("certificates.id"))
    renew_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ari_window_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ari_window_end: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_job_id: Mapped[int | None] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_managed_certificates_due", "auto_renew", "renew_at", "id"),)


class Issuance(Base):
    """Lineage: each certificate a managed certificate received, and by which job."""

    __tablename__ = "issuances"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    managed_certificate_id: Mapped[int] = mapped_column(
        ForeignKey("managed_certificates.id", ondelete="CASCADE"), index=True
    )
    certificate_id: Mapped[int] = mapped_column(ForeignKey("certificates.id"), index=True)
    # One issuance per managed certificate and job, ever (a renewal batch job issues many).
    job_id: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(32))  # enroll, renew, adopt
    ca_connection_id: Mapped[int | None] = mapped_column(Integer)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("job_id", "managed_certificate_id"),)


class Approval(Base):
    """A second person's decision on an issuance request."""

    __tablename__ = "approvals"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    managed_certificate_id: Mapped[int] = mapped_column(
        ForeignKey("managed_certificates.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[int] = mapped_column(Integer, unique=True)
    requested_by: Mapped[str] = mapped_column(String(255))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending, approved, rejected
    decided_by: Mapped[str | None] = mapped_column(String(255))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str | None] = mapped_column(Text)
