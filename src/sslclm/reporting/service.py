"""Reports over the inventory: expiry forecast, breakdowns, compliance, risks and CA concentration.

Every report is a handful of aggregate queries on indexed columns; none reads certificates one by
one. Each returns rows (a list of flat dicts) so the API can answer JSON or CSV alike.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Date, and_, cast, func, or_, select
from sqlalchemy.orm import Session

from sslclm.discovery.models import Endpoint
from sslclm.errors import InvalidInputError, NotFoundError
from sslclm.inventory.models import Certificate, Issuer
from sslclm.inventory.query import CertificateFilter, count_by
from sslclm.policies.models import CertificateRisk, PolicyViolationCount
from sslclm.workflows.models import Issuance

HORIZON_DAYS = 90


def _day(session: Session, column: Any) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        return cast(column, Date)
    return func.date(column)


def expiry_forecast(
    session: Session, *, now: datetime, per: Literal["day", "week"] = "day"
) -> list[dict[str, Any]]:
    """Certificates expiring per day (or week) over the next 90 days, managed and unmanaged."""
    end = now + timedelta(days=HORIZON_DAYS)
    managed = Certificate.id.in_(select(Issuance.certificate_id).scalar_subquery())
    day = _day(session, Certificate.not_after)
    rows = session.execute(
        select(day.label("day"), managed.label("managed"), func.count())
        .where(
            Certificate.archived_at.is_(None),
            Certificate.revoked_at.is_(None),
            Certificate.not_after >= now,
            Certificate.not_after < end,
        )
        .group_by(day, managed)
    ).all()
    buckets: dict[str, dict[str, int]] = {}
    for raw_day, is_managed, count in rows:
        when = datetime.fromisoformat(str(raw_day)).date()
        if per == "week":
            when = when - timedelta(days=when.weekday())
        bucket = buckets.setdefault(when.isoformat(), {"managed": 0, "unmanaged": 0})
        bucket["managed" if is_managed else "unmanaged"] += count
    return [
        {
            "period": key,
            "managed": v["managed"],
            "unmanaged": v["unmanaged"],
            "total": v["managed"] + v["unmanaged"],
        }
        for key, v in sorted(buckets.items())
    ]


def breakdown(session: Session, by: str, *, now: datetime, expiring_days: int) -> list[dict[str, Any]]:
    return count_by(session, by, CertificateFilter(), now=now, expiring_days=expiring_days)


def compliance(session: Session) -> list[dict[str, Any]]:
    """Open violations per policy, check and severity, with the exempted ones counted apart.

    Read from the counts the evaluator maintains, not by grouping every violation.
    """
    rows = session.execute(
        select(
            PolicyViolationCount.policy,
            PolicyViolationCount.check,
            PolicyViolationCount.severity,
            PolicyViolationCount.violations,
            PolicyViolationCount.exempted,
        ).where(or_(PolicyViolationCount.violations > 0, PolicyViolationCount.exempted > 0))
    ).all()
    return sorted(
        ({"policy": p, "check": c, "severity": s, "violations": n, "exempted": e} for p, c, s, n, e in rows),
        key=lambda r: (-r["violations"], r["policy"], r["check"]),
    )


def top_risks(session: Session, *, limit: int = 50) -> list[dict[str, Any]]:
    if not 1 <= limit <= 1000:
        raise InvalidInputError("limit must be between 1 and 1000", field="limit")
    rows = session.execute(
        select(
            CertificateRisk.certificate_id,
            CertificateRisk.score,
            CertificateRisk.violations,
            Certificate.common_name,
            Certificate.owner,
            Certificate.team,
            Certificate.not_after,
        )
        .join(Certificate, Certificate.id == CertificateRisk.certificate_id)
        .order_by(CertificateRisk.score.desc(), CertificateRisk.certificate_id)
        .limit(limit)
    )
    return [dict(row._mapping) for row in rows]


RISK_GROUPS = {"owner": Certificate.owner, "team": Certificate.team, "issuer": Issuer.dn}


def risk_rollup(session: Session, by: str) -> list[dict[str, Any]]:
    """Sum, mean and maximum certificate risk per owner, team or issuing CA."""
    try:
        column = RISK_GROUPS[by]
    except KeyError:
        raise InvalidInputError(
            f"cannot roll up by '{by}'; choose owner, team or issuer", field="by"
        ) from None
    rows = session.execute(
        select(column, func.count(), func.sum(CertificateRisk.score), func.max(CertificateRisk.score))
        .select_from(CertificateRisk)
        .join(Certificate, Certificate.id == CertificateRisk.certificate_id)
        .join(Issuer, Issuer.id == Certificate.issuer_id)
        .group_by(column)
    ).all()
    return sorted(
        (
            {
                "key": key,
                "certificates": n,
                "total": int(total or 0),
                "mean": round((total or 0) / n, 1),
                "max": top,
            }
            for key, n, total, top in rows
        ),
        key=lambda r: -r["total"],
    )


def ca_concentration(session: Session, ca_certificate_id: int, *, limit: int = 1000) -> dict[str, Any]:
    """For a root or intermediate: the certificates that chain to it and the endpoints serving them."""
    ca = session.get(Certificate, ca_certificate_id)
    if ca is None or not ca.is_ca:
        raise NotFoundError(f"no CA certificate {ca_certificate_id}", field="ca")
    issuer_ids: set[int] = set()
    subjects = [ca.subject]
    # Walk down through intermediates (bounded depth: real hierarchies are two or three levels).
    for _ in range(4):
        found = set(session.execute(select(Issuer.id).where(Issuer.dn.in_(subjects))).scalars()) - issuer_ids
        if not found:
            break
        issuer_ids |= found
        subjects = list(
            session.execute(
                select(Certificate.subject).where(
                    Certificate.issuer_id.in_(found), Certificate.is_ca.is_(True)
                )
            ).scalars()
        )
        subjects = [s for s in subjects if s != ca.subject]
    under = Certificate.issuer_id.in_(issuer_ids) if issuer_ids else Certificate.id < 0
    live = and_(Certificate.archived_at.is_(None), Certificate.id != ca.id)
    total = session.execute(select(func.count()).select_from(Certificate).where(under, live)).scalar_one()
    served = session.execute(
        select(Endpoint.host, Endpoint.port, Endpoint.sni, Certificate.id, Certificate.common_name)
        .join(Certificate, Certificate.id == Endpoint.certificate_id)
        .where(under, live)
        .order_by(Endpoint.host, Endpoint.port)
        .limit(limit)
    )
    return {
        "ca": {"id": ca.id, "subject": ca.subject, "self_signed": ca.self_signed},
        "certificates": total,
        "endpoints": [dict(row._mapping) for row in served],
    }


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()})
    return out.getvalue()
