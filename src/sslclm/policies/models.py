"""Policy tables: policy sets, the violations they find, exemptions and per-certificate risk."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    literal_column,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from sslclm.core.db import Base, UTCDateTime
from sslclm.inventory.models import BigId


class PolicySet(Base):
    __tablename__ = "policy_sets"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    position: Mapped[int] = mapped_column(Integer, default=0)  # order among policy sets
    scope_kind: Mapped[str] = mapped_column(String(16))
    scope_value: Mapped[str | None] = mapped_column(String(255))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)  # the validated document
    source: Mapped[str] = mapped_column(Text)  # the text as submitted, comments included
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


EXEMPTED_WHERE = text("exemption_id IS NOT NULL")
SEVERE_RANK = 3  # Severity.HIGH in sslclm.policies.checks.SEVERITY_RANK
SEVERE_WHERE = text(f"severity_rank >= {SEVERE_RANK}")


class PolicyViolation(Base):
    """One check one certificate fails under one policy set, kept current by the evaluator."""

    __tablename__ = "policy_violations"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    certificate_id: Mapped[int] = mapped_column(ForeignKey("certificates.id", ondelete="CASCADE"))
    policy: Mapped[str] = mapped_column(String(100))  # policy set name ("baseline" when none is defined)
    check: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    severity_rank: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    exemption_id: Mapped[int | None] = mapped_column(ForeignKey("policy_exemptions.id", ondelete="SET NULL"))
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    # Last change of severity, reason or exemption; unchanged rows are not rewritten on each pass.
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("certificate_id", "policy", "check"),
        # Partial, high and critical only: what the new-critical notifications and the "high or
        # worse" filters read. The lesser severities (most rows; every certificate has an
        # informational one) are listed by walking the primary key, and a full pass writing
        # millions of them need not maintain an entry for each. See ``severe_condition``.
        Index(
            "ix_policy_violations_severity_id",
            "severity_rank",
            "id",
            sqlite_where=SEVERE_WHERE,
            postgresql_where=SEVERE_WHERE,
        ),
        Index("ix_policy_violations_check_id", "check", "id"),
        Index("ix_policy_violations_policy_id", "policy", "id"),
        # Finds the violations an expiring or withdrawn exemption covered. Partial: nearly every
        # violation has no exemption, and a full pass writing millions of them would otherwise
        # maintain an index entry for each (every query here names an exemption id).
        Index(
            "ix_policy_violations_exemption_id",
            "exemption_id",
            sqlite_where=EXEMPTED_WHERE,
            postgresql_where=EXEMPTED_WHERE,
        ),
    )


class PolicyExemption(Base):
    """A justified, approved and expiring exception: matching violations stay listed but count for nothing."""

    __tablename__ = "policy_exemptions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    certificate_id: Mapped[int | None] = mapped_column(ForeignKey("certificates.id", ondelete="CASCADE"))
    policy: Mapped[str | None] = mapped_column(String(100))  # None: every policy set
    check: Mapped[str | None] = mapped_column(String(64))  # None: every check
    justification: Mapped[str] = mapped_column(Text)
    approver: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class CertificateRisk(Base):
    """The latest risk score of a certificate (see ``sslclm.policies.risk``)."""

    __tablename__ = "certificate_risk"

    certificate_id: Mapped[int] = mapped_column(
        ForeignKey("certificates.id", ondelete="CASCADE"), primary_key=True
    )
    score: Mapped[int] = mapped_column(Integer)
    violations: Mapped[int] = mapped_column(Integer)
    max_severity_rank: Mapped[int] = mapped_column(Integer)
    evaluated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_certificate_risk_score", "score", "certificate_id"),)


class PolicyViolationCount(Base):
    """Violations per policy, check and severity, kept by the evaluator as it writes violations.

    The compliance report and the metrics read these few rows instead of grouping millions.
    """

    __tablename__ = "policy_violation_counts"

    policy: Mapped[str] = mapped_column(String(100), primary_key=True)
    check: Mapped[str] = mapped_column(String(64), primary_key=True)
    severity: Mapped[str] = mapped_column(String(16), primary_key=True)
    violations: Mapped[int] = mapped_column(Integer)  # not exempted
    exempted: Mapped[int] = mapped_column(Integer)


class PolicyClock(Base):
    """How far in time a periodic re-evaluation has brought the stored violations."""

    __tablename__ = "policy_clock"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    evaluated_until: Mapped[datetime] = mapped_column(UTCDateTime)


class RevocationList(Base):
    """A CRL fetched from a distribution point named by certificates in the inventory."""

    __tablename__ = "revocation_lists"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    url: Mapped[str] = mapped_column(String(2048), unique=True)
    issuer: Mapped[str | None] = mapped_column(Text)
    this_update: Mapped[datetime | None] = mapped_column(UTCDateTime)
    next_update: Mapped[datetime | None] = mapped_column(UTCDateTime)
    crl_number: Mapped[str | None] = mapped_column(String(64))  # up to 20 octets: wider than BIGINT
    entries: Mapped[int] = mapped_column(Integer, default=0)
    # None: the issuer's certificate is not in the inventory, so the signature could not be checked.
    signature_valid: Mapped[bool | None] = mapped_column(Boolean)
    der: Mapped[bytes | None] = mapped_column(LargeBinary)
    fetched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When to fetch again: the CRL's nextUpdate, or a back-off after a failure.
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Certificates naming this URL arrived after the last fetch: apply the cached CRL to them.
    recheck: Mapped[bool] = mapped_column(Boolean, default=False)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_revocation_lists_due_at", "due_at"),)


def severe_condition() -> ColumnElement[bool]:
    """The severity index's own condition, to add to a query filtering on a rank of high or more.

    SQLite uses a partial index only when the query states its condition term for term (it does
    not infer ``rank >= 4`` implies ``rank >= 3``), and with a literal, not a bound parameter.
    """
    return PolicyViolation.severity_rank >= literal_column(str(SEVERE_RANK))
