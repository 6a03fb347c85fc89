"""Comparing a scan with the previous scan of the same targets.

Both scans' per-endpoint summaries are joined in the database, so the comparison costs a few
indexed queries whatever the scan size; the lists are capped at ``limit`` items each and the
counts are always exact.

- an endpoint is **new** when it served a certificate now and did not before (absent or failing);
- it **changed** when it served a certificate both times and the certificates differ;
- it **vanished** when it served a certificate before and does not now (failing or not scanned);
- a certificate is **new** / **vanished** when some endpoint serves it now and none did before, and
  the other way round.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.orm import Session, aliased

from sslclm.discovery.models import Endpoint, Scan, ScanEndpointResult, ScanStatus
from sslclm.errors import InvalidInputError, NotFoundError
from sslclm.inventory.models import Certificate

MAX_ITEMS = 1000
_Joined = Select[Endpoint, Certificate, Certificate]


def previous_scan_id(session: Session, scan: Scan) -> int | None:
    """The latest earlier scan of the same targets that ran to the end."""
    return session.execute(
        select(Scan.id)
        .where(Scan.target_key == scan.target_key, Scan.id < scan.id, Scan.status == ScanStatus.SUCCEEDED)
        .order_by(Scan.id.desc())
        .limit(1)
    ).scalar()


def _endpoint_label(endpoint: Endpoint) -> dict[str, Any]:
    return {
        "id": endpoint.id,
        "host": endpoint.host,
        "port": endpoint.port,
        "sni": endpoint.sni or None,
        "protocol": endpoint.protocol,
    }


def _certificate_label(cert: Any) -> dict[str, Any] | None:
    if cert is None:
        return None
    return {
        "id": cert.id,
        "fingerprint_sha256": cert.fingerprint_sha256,
        "common_name": cert.common_name,
        "not_after": cert.not_after,
    }


def compare_scans(
    session: Session, scan_id: int, *, previous_id: int | None = None, limit: int = 100
) -> dict[str, Any]:
    """The differences between scan ``scan_id`` and ``previous_id`` (default: the previous scan)."""
    if not 0 <= limit <= MAX_ITEMS:
        raise InvalidInputError(f"limit must be between 0 and {MAX_ITEMS}", field="limit")
    scan = session.get(Scan, scan_id)
    if scan is None:
        raise NotFoundError(f"no scan {scan_id}", field="scan_id")
    if previous_id is None:
        previous_id = previous_scan_id(session, scan)
    elif session.get(Scan, previous_id) is None:
        raise NotFoundError(f"no scan {previous_id}", field="previous")
    now = aliased(ScanEndpointResult)
    before = aliased(ScanEndpointResult)
    # With no previous scan everything found is new: compare with an empty result set.
    before_id = previous_id if previous_id is not None else -1
    old_cert = aliased(Certificate)
    new_cert = aliased(Certificate)

    def joined_now() -> _Joined:
        return (
            select(Endpoint, new_cert, old_cert)
            .select_from(now)
            .join(Endpoint, Endpoint.id == now.endpoint_id)
            .outerjoin(before, and_(before.scan_id == before_id, before.endpoint_id == now.endpoint_id))
            .outerjoin(new_cert, new_cert.id == now.certificate_id)
            .outerjoin(old_cert, old_cert.id == before.certificate_id)
            .where(now.scan_id == scan_id)
        )

    def joined_before() -> _Joined:
        return (
            select(Endpoint, new_cert, old_cert)
            .select_from(before)
            .join(Endpoint, Endpoint.id == before.endpoint_id)
            .outerjoin(now, and_(now.scan_id == scan_id, now.endpoint_id == before.endpoint_id))
            .outerjoin(new_cert, new_cert.id == now.certificate_id)
            .outerjoin(old_cert, old_cert.id == before.certificate_id)
            .where(before.scan_id == before_id)
        )

    was_ok = and_(before.ok.is_(True), before.certificate_id.is_not(None))
    is_ok = and_(now.ok.is_(True), now.certificate_id.is_not(None))
    categories: dict[str, tuple[_Joined, ColumnElement[bool]]] = {
        "new": (joined_now(), and_(is_ok, or_(before.endpoint_id.is_(None), ~was_ok))),
        "changed": (joined_now(), and_(is_ok, was_ok, now.certificate_id != before.certificate_id)),
        "vanished": (joined_before(), and_(was_ok, or_(now.endpoint_id.is_(None), ~is_ok))),
    }
    endpoints: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, int] = {}
    for name, (query, condition) in categories.items():
        filtered = query.where(condition)
        counts[f"endpoints_{name}"] = session.execute(
            select(func.count()).select_from(filtered.with_only_columns(Endpoint.id).subquery())
        ).scalar_one()
        rows = session.execute(filtered.order_by(Endpoint.id).limit(limit)).all() if limit else []
        endpoints[name] = [
            {
                "endpoint": _endpoint_label(endpoint),
                "certificate": _certificate_label(cert_now),
                "previous_certificate": _certificate_label(cert_before),
            }
            for endpoint, cert_now, cert_before in rows
        ]

    def served(scan: int) -> Select[Any]:
        return select(ScanEndpointResult.certificate_id).where(
            ScanEndpointResult.scan_id == scan,
            ScanEndpointResult.ok.is_(True),
            ScanEndpointResult.certificate_id.is_not(None),
        )

    certificates: dict[str, list[dict[str, Any]]] = {}
    for name, (mine, other) in {"new": (scan_id, before_id), "vanished": (before_id, scan_id)}.items():
        ids = select(Certificate).where(
            Certificate.id.in_(served(mine)), Certificate.id.not_in(served(other))
        )
        counts[f"certificates_{name}"] = session.execute(
            select(func.count()).select_from(ids.with_only_columns(Certificate.id).subquery())
        ).scalar_one()
        found = list(session.execute(ids.order_by(Certificate.id).limit(limit)).scalars()) if limit else []
        certificates[name] = [label for label in map(_certificate_label, found) if label is not None]
    return {
        "scan_id": scan_id,
        "previous_scan_id": previous_id,
        "partial": scan.status != ScanStatus.SUCCEEDED,
        "counts": counts,
        "endpoints": endpoints,
        "certificates": certificates,
    }
