"""Inventory tables: certificates, issuers, sightings, tags, private keys and metadata history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from sslclm.core.db import Base, UTCDateTime

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identities.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Issuer(Base):
    """Distinct issuer names, so grouping and filtering by issuer works on a small integer."""

    __tablename__ = "issuers"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    dn_hash: Mapped[str] = mapped_column(String(64), unique=True)
    dn: Mapped[str] = mapped_column(Text)
    common_name: Mapped[str | None] = mapped_column(Text)


class Certificate(Base):
    __tablename__ = "certificates"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    fingerprint_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    fingerprint_sha1: Mapped[str] = mapped_column(String(40))
    serial: Mapped[str] = mapped_column(String(128), index=True)
    subject: Mapped[str] = mapped_column(Text)
    common_name: Mapped[str | None] = mapped_column(Text)
    issuer_id: Mapped[int] = mapped_column(ForeignKey("issuers.id"))
    not_before: Mapped[datetime] = mapped_column(UTCDateTime)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime)
    key_algorithm: Mapped[str] = mapped_column(String(16))
    key_size: Mapped[int | None] = mapped_column(Integer)
    key_curve: Mapped[str | None] = mapped_column(String(32))
    signature_algorithm: Mapped[str] = mapped_column(String(64))
    sans: Mapped[list[str]] = mapped_column(JSON, default=list)
    key_usage: Mapped[list[str]] = mapped_column(JSON, default=list)
    extended_key_usage: Mapped[list[str]] = mapped_column(JSON, default=list)
    is_ca: Mapped[bool] = mapped_column(Boolean, default=False)
    path_length: Mapped[int | None] = mapped_column(Integer)
    authority_key_id: Mapped[str | None] = mapped_column(String(128))
    subject_key_id: Mapped[str | None] = mapped_column(String(128))
    crl_distribution_points: Mapped[list[str]] = mapped_column(JSON, default=list)
    ocsp_urls: Mapped[list[str]] = mapped_column(JSON, default=list)
    ca_issuer_urls: Mapped[list[str]] = mapped_column(JSON, default=list)
    self_signed: Mapped[bool] = mapped_column(Boolean, default=False)
    public_key_sha256: Mapped[str] = mapped_column(String(64), index=True)
    der: Mapped[bytes] = mapped_column(LargeBinary)
    # The lower-cased subject DN and SAN values: the text free-text search matches by substring.
    search_text: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str | None] = mapped_column(String(255))
    team: Mapped[str | None] = mapped_column(String(255))
    environment: Mapped[str | None] = mapped_column(String(64))
    notes: Mapped[str | None] = mapped_column(Text)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revocation_reason: Mapped[str | None] = mapped_column(String(64))
    superseded_by_id: Mapped[int | None] = mapped_column(ForeignKey("certificates.id"))
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    has_private_key: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_certificates_not_after_id", "not_after", "id"),
        # Covers "count by issuer" over live certificates and issuer + expiry filters without the table.
        Index("ix_certificates_issuer_archived_expiry", "issuer_id", "archived_at", "not_after"),
        Index("ix_certificates_common_name_id", "common_name", "id"),
        Index("ix_certificates_owner_id", "owner", "id"),
        Index("ix_certificates_team_id", "team", "id"),
        Index("ix_certificates_updated_at_id", "updated_at", "id"),
    )


class CertificateTag(Base):
    __tablename__ = "certificate_tags"

    certificate_id: Mapped[int] = mapped_column(
        ForeignKey("certificates.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(128), primary_key=True)

    __table_args__ = (Index("ix_certificate_tags_tag", "tag", "certificate_id"),)


class Sighting(Base):
    """Where and when a certificate was seen: a file, an import, an endpoint, a store, a cloud account."""

    __tablename__ = "sightings"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    certificate_id: Mapped[int] = mapped_column(ForeignKey("certificates.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))  # file, upload, endpoint, store, cloud, agent
    location: Mapped[str] = mapped_column(Text)  # path, host:port, store alias, ARN ...
    source: Mapped[str] = mapped_column(String(64))  # what reported it: import, tls-scan, ...
    host: Mapped[str | None] = mapped_column(String(255))
    port: Mapped[int | None] = mapped_column(Integer)
    sni: Mapped[str | None] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("certificate_id", "kind", "location"),
        Index("ix_sightings_kind_location", "kind", "location"),
        Index("ix_sightings_source_certificate_id", "source", "certificate_id"),
    )


class PrivateKey(Base):
    """A private key found beside a certificate, sealed with the platform's envelope encryption."""

    __tablename__ = "private_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    public_key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    encrypted_pkcs8: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CertificateChange(Base):
    """Full history of metadata changes to a certificate."""

    __tablename__ = "certificate_changes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    certificate_id: Mapped[int] = mapped_column(ForeignKey("certificates.id", ondelete="CASCADE"), index=True)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    actor: Mapped[str] = mapped_column(String(255))
    changes: Mapped[dict[str, Any]] = mapped_column(JSON)  # field -> [before, after]


class IssuerCertificateCount(Base):
    """How many certificates each issuer has, kept exact by triggers on ``certificates``.

    "Count by issuer" over a million certificates reads these few rows instead of every
    certificate. Triggers (migration 0009), not application code, keep it: every path that
    inserts, archives or deletes certificates (imports, discovery, issuance) is covered alike,
    in the same transaction as the change.
    """

    __tablename__ = "issuer_certificate_counts"

    issuer_id: Mapped[int] = mapped_column(ForeignKey("issuers.id", ondelete="CASCADE"), primary_key=True)
    live: Mapped[int] = mapped_column(BigInteger)  # not archived
    archived: Mapped[int] = mapped_column(BigInteger)
