"""ACME Renewal Information in the planner: ask the CA when to renew, keep the window, replan.

A managed certificate renews by ARI when its renewal mode (or its profile's) is ``ari``. Its CA
connection must declare :attr:`~sslclm.spi.capabilities.Capability.ARI`; a gateway that declares it
but whose server offers no ``renewalInfo`` answers ``NotSupportedError``, and the certificate keeps
the fallback time the planner gave it at issuance (a third of the lifetime left).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.core.platform import Platform
from sslclm.errors import NotSupportedError, SslClmError
from sslclm.inventory.models import Certificate
from sslclm.pki import certificate_to_pem
from sslclm.spi.capabilities import Capability
from sslclm.spi.registry import call
from sslclm.spi.types import RenewalInfoRequest, RenewalInfoResult
from sslclm.workflows.connections import build_ca_gateway
from sslclm.workflows.models import Connection, ManagedCertificate, Profile
from sslclm.workflows.planner import RenewalPolicy, renewal_time

log = logging.getLogger(__name__)

ARI_BATCH = 200
_AUDIT = AuditContext(actor="scheduler:ari")


@dataclass
class AriSummary:
    counts: dict[str, int] = field(default_factory=lambda: {"updated": 0, "unsupported": 0, "failed": 0})
    last_id: int | None = None  # set when more rows may follow


@dataclass(frozen=True, slots=True)
class _Row:
    managed_id: int
    connection_id: int
    der: bytes
    fingerprint: str


def _candidates(session: Session, *, after_id: int, limit: int) -> Sequence[Any]:
    in_ari_mode = or_(
        ManagedCertificate.renewal_mode == "ari",
        ManagedCertificate.renewal_mode.is_(None) & (Profile.renewal_mode == "ari"),
    )
    return session.execute(
        select(
            ManagedCertificate.id,
            Profile.ca_connection_id,
            Certificate.der,
            Certificate.fingerprint_sha256,
        )
        .join(Profile, Profile.id == ManagedCertificate.profile_id)
        .join(Certificate, Certificate.id == ManagedCertificate.current_certificate_id)
        .where(
            ManagedCertificate.id > after_id,
            ManagedCertificate.auto_renew.is_(True),
            ManagedCertificate.status == "active",
            in_ari_mode,
        )
        .order_by(ManagedCertificate.id)
        .limit(limit)
    ).all()


def _ask(
    platform: Platform, connection: Connection, rows: Sequence[_Row], summary: AriSummary
) -> dict[int, tuple[RenewalInfoResult, str]]:
    """The CA's windows for ``rows``; what cannot be had is counted and left for the next run."""
    gateway = build_ca_gateway(platform, connection)
    if Capability.ARI not in gateway.capabilities:
        summary.counts["unsupported"] += len(rows)
        return {}
    answers: dict[int, tuple[RenewalInfoResult, str]] = {}
    for position, row in enumerate(rows):
        try:
            result: RenewalInfoResult = call(
                gateway, Capability.ARI, RenewalInfoRequest(certificate_pem=certificate_to_pem(row.der))
            )
        except NotSupportedError:
            # The server offers no renewal information at all: asking about the rest is pointless.
            summary.counts["unsupported"] += len(rows) - position
            break
        except SslClmError as exc:
            summary.counts["failed"] += 1
            log.warning(
                "renewal information for managed certificate %s from '%s' failed: %s",
                row.managed_id,
                connection.name,
                exc.message,
            )
            continue
        answers[row.managed_id] = (result, row.fingerprint)
    return answers


def refresh_windows(
    session: Session, platform: Platform, *, now: datetime, after_id: int = 0, limit: int = ARI_BATCH
) -> AriSummary:
    """Asks for and stores the ARI window of up to ``limit`` managed certificates after ``after_id``.

    The CAs are asked before anything is written, so on SQLite the database is not locked while a
    remote server answers. Each window becomes the certificate's renewal time: a uniformly random
    moment in it (RFC 9773 4.2), which is now or earlier when the CA wants a renewal at once.
    """
    summary = AriSummary()
    rows = [
        _Row(r.id, r.ca_connection_id, r.der, r.fingerprint_sha256)
        for r in _candidates(session, after_id=after_id, limit=limit)
    ]
    if not rows:
        return summary
    if len(rows) == limit:
        summary.last_id = rows[-1].managed_id
    by_connection: dict[int, list[_Row]] = defaultdict(list)
    for row in rows:
        by_connection[row.connection_id].append(row)
    answers: dict[int, tuple[RenewalInfoResult, str]] = {}
    for connection_id, group in by_connection.items():
        connection = session.get(Connection, connection_id)
        if connection is None or not connection.enabled:
            summary.counts["unsupported"] += len(group)
            continue
        answers.update(_ask(platform, connection, group, summary))
    for managed_id, (result, fingerprint) in answers.items():
        window = (result.window_start, result.window_end)
        session.execute(
            update(ManagedCertificate)
            .where(ManagedCertificate.id == managed_id)
            .values(
                ari_window_start=result.window_start,
                ari_window_end=result.window_end,
                renew_at=renewal_time(
                    not_before=result.window_start,
                    not_after=result.window_end,
                    policy=RenewalPolicy("ari"),
                    seed=f"{managed_id}:{fingerprint}",
                    ari_window=window,
                ),
                updated_at=now,
            )
        )
    summary.counts["updated"] = len(answers)
    if answers:
        record(
            session,
            _AUDIT,
            "renewals.ari-refresh",
            "managed_certificate",
            None,
            {"updated": sorted(answers)[:1000], "count": len(answers)},
            occurred_at=now,
        )
    return summary
