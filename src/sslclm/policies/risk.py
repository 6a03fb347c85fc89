"""The risk score of one certificate, 0 (no concern) to 100.

    points   = min(70, sum over its non-exempt violations of SEVERITY_POINTS[severity])
    exposure = 1 + min(endpoints serving it, 20) / 20           (x1 unseen .. x2 on 20+ endpoints)
    expiry   = 30 if expired, 20 if under 7 days left, 10 if under 30 days, else 0
    score    = min(100, round(points * exposure + expiry))

Roll-ups (per owner, team, CA) report the sum, the mean and the maximum of their certificates' scores.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sslclm.policies.checks import Severity

SEVERITY_POINTS = {
    Severity.INFO: 0,
    Severity.LOW: 3,
    Severity.MEDIUM: 8,
    Severity.HIGH: 20,
    Severity.CRITICAL: 40,
}
_NONE_LEFT = timedelta(0)
_WEEK = timedelta(days=7)
_MONTH = timedelta(days=30)


def risk_score(
    severities: Iterable[Severity], *, endpoints: int | None, not_after: datetime, now: datetime
) -> int:
    return combined_score(sum(SEVERITY_POINTS[s] for s in severities), endpoints, not_after - now)


def combined_score(points: int, endpoints: int | None, left: timedelta) -> int:
    """The score from the summed severity points, the endpoint count and the time left."""
    exposure = 1 + min(endpoints or 0, 20) / 20
    if left < _NONE_LEFT:
        expiry = 30
    elif left < _WEEK:
        expiry = 20
    elif left < _MONTH:
        expiry = 10
    else:
        expiry = 0
    return min(100, round(min(70, points) * exposure + expiry))
