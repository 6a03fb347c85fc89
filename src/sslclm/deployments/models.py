"""Store bindings (where a managed certificate must be) and the history of deployments to them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from sslclm.core.db import Base, UTCDateTime
from sslclm.inventory.models import BigId


class StoreBinding(Base):
    """A managed certificate bound to one alias of one store, with an endpoint that should serve it."""

    __tablename__ = "store_bindings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    managed_certificate_id: Mapped[int] = mapped_column(
        ForeignKey("managed_certificates.id", ondelete="CASCADE"), index=True
    )
    store_connection_id: Mapped[int] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), index=True
    )
    alias: Mapped[str] = mapped_column(String(128))
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    verify_host: Mapped[str | None] = mapped_column(String(255))
    verify_port: Mapped[int | None] = mapped_column(Integer)
    verify_sni: Mapped[str | None] = mapped_column(String(255))
    # pending, deploying, deployed, failed, drifted, undeployed
    status: Mapped[str] = mapped_column(String(16))
    last_deployed_fingerprint: Mapped[str | None] = mapped_column(String(64))
    last_deployed_certificate_id: Mapped[int | None] = mapped_column(Integer)
    last_deployed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (UniqueConstraint("store_connection_id", "alias"),)


class Deployment(Base):
    """One attempt to put a certificate into (or take it out of) a binding's store."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    binding_id: Mapped[int] = mapped_column(ForeignKey("store_bindings.id", ondelete="CASCADE"), index=True)
    certificate_id: Mapped[int | None] = mapped_column(Integer)
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))  # deploy, undeploy
    job_id: Mapped[int | None] = mapped_column(Integer, index=True)
    status: Mapped[str] = mapped_column(String(16))  # running, succeeded, failed, rolled-back
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    # One row per binding and job: a deployment batch job that runs a step again adds none.
    __table_args__ = (UniqueConstraint("binding_id", "job_id"),)
