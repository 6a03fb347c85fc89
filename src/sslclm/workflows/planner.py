"""When each managed certificate renews: a share of its lifetime, days before expiry, or the ARI window.

Renewal times are spread with a deterministic jitter (derived from the managed certificate and its
current certificate) so a fleet issued in one hour does not renew in one minute, and so every
scheduler process computes the same time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sslclm.core.clock import as_utc
from sslclm.errors import InvalidInputError
from sslclm.workflows.models import ManagedCertificate

MODES = ("fraction", "days", "ari")
DEFAULT_FRACTION = 1 / 3
MAX_JITTER = timedelta(hours=12)
JITTER_SHARE = 0.02  # of the lifetime


def check_policy(mode: str, value: float) -> None:
    if mode not in MODES:
        raise InvalidInputError(f"renewal mode must be one of {', '.join(MODES)}", field="renewal_mode")
    if mode == "fraction" and not 0 < value < 1:
        raise InvalidInputError(
            "a renewal fraction is between 0 and 1 (of the lifetime remaining)", field="renewal_value"
        )
    if mode == "days" and value <= 0:
        raise InvalidInputError("renew a positive number of days before expiry", field="renewal_value")


def _unit(seed: str) -> float:
    """A stable number in [0, 1) from ``seed``."""
    return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big") / 2**64


@dataclass(frozen=True, slots=True)
class RenewalPolicy:
    mode: str = "fraction"
    value: float = DEFAULT_FRACTION


def renewal_time(
    *,
    not_before: datetime,
    not_after: datetime,
    policy: RenewalPolicy,
    seed: str,
    ari_window: tuple[datetime, datetime] | None = None,
) -> datetime:
    """When to renew a certificate valid from ``not_before`` to ``not_after``."""
    not_before, not_after = as_utc(not_before), as_utc(not_after)
    if policy.mode == "ari" and ari_window is not None:
        start, end = (as_utc(t) for t in ari_window)
        # RFC 9773: pick a uniformly random time within the suggested window.
        return start + (end - start) * _unit(seed)
    lifetime = not_after - not_before
    if policy.mode == "days":
        planned = not_after - timedelta(days=policy.value)
    else:
        fraction = policy.value if policy.mode == "fraction" else DEFAULT_FRACTION
        planned = not_after - lifetime * fraction
    jitter = min(lifetime * JITTER_SHARE, MAX_JITTER) * _unit(seed)
    # Jitter only ever moves a renewal earlier, never past the time the policy asks for.
    return max(not_before, planned - jitter)


def policy_for(managed: ManagedCertificate, profile_mode: str, profile_value: float) -> RenewalPolicy:
    if managed.renewal_mode:
        return RenewalPolicy(managed.renewal_mode, managed.renewal_value or DEFAULT_FRACTION)
    return RenewalPolicy(profile_mode, profile_value)


def forecast(session: Session, *, now: datetime, days: int = 90) -> dict[str, Any]:
    """Renewals planned per day for the next ``days`` days, and how many are already overdue."""
    if not 1 <= days <= 366:
        raise InvalidInputError("forecast between 1 and 366 days", field="days")
    end = now + timedelta(days=days)
    base = select(func.count()).select_from(ManagedCertificate).where(ManagedCertificate.auto_renew.is_(True))
    overdue = session.execute(base.where(ManagedCertificate.renew_at < now)).scalar_one()
    dialect = session.get_bind().dialect.name
    day = (
        func.date(ManagedCertificate.renew_at)
        if dialect == "sqlite"
        else func.to_char(ManagedCertificate.renew_at, "YYYY-MM-DD")
    )
    rows = session.execute(
        select(day.label("day"), func.count())
        .where(
            ManagedCertificate.auto_renew.is_(True),
            ManagedCertificate.renew_at >= now,
            ManagedCertificate.renew_at < end,
        )
        .group_by(day)
        .order_by(day)
    ).all()
    counts = {str(d): n for d, n in rows}
    first = now.date()
    per_day = [
        {
            "date": (first + timedelta(days=i)).isoformat(),
            "renewals": counts.get((first + timedelta(days=i)).isoformat(), 0),
        }
        for i in range(days + 1)
    ]
    return {
        "from": now.isoformat(),
        "days": days,
        "overdue": overdue,
        "per_day": per_day,
        "total": sum(counts.values()),
    }
