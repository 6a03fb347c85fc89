"""Scans and endpoints for the API and the CLI: create, list, follow and cancel scans; query endpoints.

Changes are audited in the caller's transaction; the caller commits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from sslclm.audit.service import AuditContext, record
from sslclm.connectors.tls_scan import ScanOptions, TargetSet, TrustStore, parse_targets
from sslclm.core.clock import Clock
from sslclm.discovery.models import Endpoint, EndpointObservation, Scan, ScanStatus
from sslclm.discovery.schemas import ScanOptionsIn, ScanTargetsIn, endpoint_dict
from sslclm.errors import ConflictError, InvalidInputError, NotFoundError
from sslclm.inventory.models import Certificate
from sslclm.jobs import enqueue as enqueue_job
from sslclm.jobs import queue
from sslclm.jobs.models import ACTIVE_STATUSES, Job

SCAN_TASK = "discovery.scan"
MAX_PAGE = 1000
MAX_HISTORY = 1000
STATUSES = ", ".join(status.value for status in ScanStatus)


# --- targets and options ----------------------------------------------------------------------------


def normalized_targets(spec: ScanTargetsIn) -> dict[str, Any]:
    """The target spec as stored: stripped tokens, in the order given."""
    return {
        "targets": [token.strip() for token in spec.targets],
        "ports": spec.ports.strip(),
        "sni": [name.strip() for name in spec.sni],
        "exclude": [token.strip() for token in spec.exclude],
        "protocol": spec.protocol.strip().lower() if spec.protocol else None,
    }


def target_key(targets: Mapping[str, Any]) -> str:
    """Equal for scans of the same target spec, whatever the options or the order of keys."""
    return hashlib.sha256(orjson.dumps(dict(targets), option=orjson.OPT_SORT_KEYS)).hexdigest()


def target_set(targets: Mapping[str, Any], options: Mapping[str, Any]) -> TargetSet:
    """Expands a stored spec; raises ``InvalidInputError`` naming the bad token."""
    return parse_targets(
        targets["targets"],
        ports=targets.get("ports") or "443",
        exclude=targets.get("exclude") or (),
        sni=targets.get("sni") or (),
        protocol=targets.get("protocol"),
        max_targets=int(options.get("max_targets", ScanOptionsIn().max_targets)),
    )


def trust_store(options: Mapping[str, Any]) -> TrustStore:
    extra = options.get("extra_roots_pem") or ""
    store = TrustStore.load(use_system=bool(options.get("use_system_roots", True)), extra_pem=extra.encode())
    if extra and not TrustStore.load(use_system=False, extra_pem=extra.encode()).roots:
        raise InvalidInputError("extra_roots_pem holds no PEM certificate", field="options.extra_roots_pem")
    return store


def scanner_options(options: Mapping[str, Any], clock: Clock, store: TrustStore | None = None) -> ScanOptions:
    return ScanOptions(
        concurrency=int(options.get("concurrency", 256)),
        connect_timeout=float(options.get("connect_timeout", 5.0)),
        handshake_timeout=float(options.get("handshake_timeout", 10.0)),
        rate=options.get("rate"),
        per_host_rate=options.get("per_host_rate"),
        per_host_concurrency=options.get("per_host_concurrency"),
        trust_store=store if store is not None else trust_store(options),
        clock=clock,
    )


# --- scans ---------------------------------------------------------------------------------------


def create_scan(
    session: Session,
    ctx: AuditContext,
    targets: ScanTargetsIn,
    options: ScanOptionsIn | None = None,
    *,
    now: datetime,
    name: str | None = None,
    schedule_id: int | None = None,
    enqueue: bool = True,
) -> Scan:
    """Validates the targets and options, stores the scan and (by default) enqueues its job.

    Raises ``InvalidInputError`` naming the first bad target token, port or option.
    """
    options = options or ScanOptionsIn()
    spec = normalized_targets(targets)
    stored_options = options.model_dump(exclude_none=True)
    expanded = target_set(spec, stored_options)
    # Build the scanner options once now, so that a bad bundle or limit is refused before anything runs.
    scanner_options(stored_options, lambda: now)
    scan = Scan(
        name=name,
        targets=spec,
        options=stored_options,
        target_key=target_key(spec),
        status=ScanStatus.QUEUED.value,
        total=expanded.count,
        done=0,
        found=0,
        failed=0,
        certificates=0,
        cancel_requested=False,
        schedule_id=schedule_id,
        created_by=ctx.actor,
        created_at=now,
    )
    session.add(scan)
    session.flush()
    if enqueue:
        job = enqueue_job(
            session, SCAN_TASK, {"scan_id": scan.id}, now=now, target=f"scan:{scan.id}", max_attempts=3
        )
        scan.job_id = job.id
    record(
        session,
        ctx,
        "scan.create",
        "scan",
        scan.id,
        {"targets": spec["targets"][:20], "endpoints": expanded.count, "schedule_id": schedule_id},
        occurred_at=now,
    )
    session.flush()
    return scan


def get_scan(session: Session, scan_id: int) -> Scan:
    scan = session.get(Scan, scan_id)
    if scan is None:
        raise NotFoundError(f"no scan {scan_id}", field="scan_id")
    return scan


@dataclass(frozen=True, slots=True)
class ScanPage:
    items: list[Scan]
    next_cursor: int | None


def list_scans(
    session: Session,
    *,
    status: str | None = None,
    schedule_id: int | None = None,
    limit: int = 50,
    cursor: int | None = None,
) -> ScanPage:
    """Newest first, keyset-paginated on the id."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}", field="limit")
    stmt = select(Scan)
    if status is not None:
        try:
            stmt = stmt.where(Scan.status == ScanStatus(status.strip().lower()).value)
        except ValueError:
            raise InvalidInputError(
                f"unknown status '{status}'; use one of {STATUSES}", field="status"
            ) from None
    if schedule_id is not None:
        stmt = stmt.where(Scan.schedule_id == schedule_id)
    if cursor is not None:
        stmt = stmt.where(Scan.id < cursor)
    rows = list(session.execute(stmt.order_by(Scan.id.desc()).limit(limit + 1)).scalars())
    items = rows[:limit]
    return ScanPage(items, items[-1].id if len(rows) > limit else None)


def cancel_scan(session: Session, ctx: AuditContext, scan_id: int, *, now: datetime) -> Scan:
    """A queued scan is cancelled at once; a running one stops within about a second."""
    scan = session.execute(select(Scan).where(Scan.id == scan_id).with_for_update()).scalar_one_or_none()
    if scan is None:
        raise NotFoundError(f"no scan {scan_id}", field="scan_id")
    if scan.status not in (ScanStatus.QUEUED, ScanStatus.RUNNING):
        raise ConflictError(f"scan {scan_id} already {scan.status}", field="scan_id")
    scan.cancel_requested = True
    if scan.status == ScanStatus.QUEUED:
        scan.status = ScanStatus.CANCELLED.value
        scan.finished_at = now
    if scan.job_id is not None:
        job = session.get(Job, scan.job_id)
        if job is not None and job.status in ACTIVE_STATUSES:
            queue.request_cancel(session, job.id, now=now)
    record(session, ctx, "scan.cancel", "scan", scan.id, {"status": scan.status}, occurred_at=now)
    session.flush()
    return scan


# --- endpoints -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EndpointFilter:
    host: str | None = None
    port: int | None = None
    sni: str | None = None
    status: str | None = None  # ok, error
    trusted: bool | None = None
    hostname_match: bool | None = None
    expiring_days: int | None = None  # the served certificate expires within this many days (or has)
    certificate_id: int | None = None
    scan_id: int | None = None  # last scanned by this scan


def _certificate_brief(cert: Certificate | None) -> dict[str, Any] | None:
    if cert is None:
        return None
    return {
        "id": cert.id,
        "fingerprint_sha256": cert.fingerprint_sha256,
        "common_name": cert.common_name,
        "not_after": cert.not_after,
        "sans": list(cert.sans or ()),
    }


def list_endpoints(
    session: Session, flt: EndpointFilter, *, now: datetime, limit: int = 50, cursor: int | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """Keyset-paginated by id, with the served certificate's summary on each row."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}", field="limit")
    stmt = select(Endpoint, Certificate).outerjoin(Certificate, Certificate.id == Endpoint.certificate_id)
    if flt.host:
        stmt = stmt.where(Endpoint.host == flt.host.strip().lower())
    if flt.port is not None:
        stmt = stmt.where(Endpoint.port == flt.port)
    if flt.sni is not None:
        stmt = stmt.where(Endpoint.sni == flt.sni.strip().lower())
    if flt.status is not None:
        if flt.status not in ("ok", "error"):
            raise InvalidInputError("status is 'ok' or 'error'", field="status")
        stmt = stmt.where(Endpoint.last_status == flt.status)
    if flt.trusted is not None:
        stmt = stmt.where(Endpoint.trusted.is_(flt.trusted))
    if flt.hostname_match is not None:
        stmt = stmt.where(Endpoint.hostname_match.is_(flt.hostname_match))
    if flt.expiring_days is not None:
        if flt.expiring_days < 0:
            raise InvalidInputError("expiring_days must not be negative", field="expiring_days")
        stmt = stmt.where(Certificate.not_after <= now + timedelta(days=flt.expiring_days))
    if flt.certificate_id is not None:
        stmt = stmt.where(Endpoint.certificate_id == flt.certificate_id)
    if flt.scan_id is not None:
        stmt = stmt.where(Endpoint.last_scan_id == flt.scan_id)
    if cursor is not None:
        stmt = stmt.where(Endpoint.id > cursor)
    rows = session.execute(stmt.order_by(Endpoint.id).limit(limit + 1)).all()
    items = [endpoint_dict(endpoint, _certificate_brief(cert)) for endpoint, cert in rows[:limit]]
    return items, items[-1]["id"] if len(rows) > limit else None


def get_endpoint(session: Session, endpoint_id: int) -> Endpoint:
    endpoint = session.get(Endpoint, endpoint_id)
    if endpoint is None:
        raise NotFoundError(f"no endpoint {endpoint_id}", field="endpoint_id")
    return endpoint


def endpoint_detail(session: Session, endpoint_id: int, *, history: int = 100) -> dict[str, Any]:
    """The endpoint, its served certificate and its history (newest first); changes are marked."""
    if not 1 <= history <= MAX_HISTORY:
        raise InvalidInputError(f"history must be between 1 and {MAX_HISTORY}", field="history")
    endpoint = get_endpoint(session, endpoint_id)
    cert = session.get(Certificate, endpoint.certificate_id) if endpoint.certificate_id else None
    previous = aliased(Certificate)
    rows = session.execute(
        select(EndpointObservation, Certificate, previous.fingerprint_sha256)
        .join(Certificate, Certificate.id == EndpointObservation.certificate_id)
        .outerjoin(previous, previous.id == EndpointObservation.previous_certificate_id)
        .where(EndpointObservation.endpoint_id == endpoint_id)
        .order_by(EndpointObservation.id.desc())
        .limit(history)
    ).all()
    detail = endpoint_dict(endpoint, _certificate_brief(cert))
    detail["history"] = [
        {
            "id": observation.id,
            "event": "changed" if observation.previous_certificate_id is not None else "first-seen",
            "certificate": _certificate_brief(served),
            "previous_certificate_id": observation.previous_certificate_id,
            "previous_fingerprint_sha256": previous_fp,
            "scan_id": observation.scan_id,
            "first_seen": observation.first_seen,
            "last_seen": observation.last_seen,
        }
        for observation, served, previous_fp in rows
    ]
    return detail


def certificate_endpoints(
    session: Session, certificate_id: int, *, limit: int = 100, cursor: int | None = None
) -> tuple[list[dict[str, Any]], int | None]:
    """Every endpoint that currently serves the certificate, plus those that served it before."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}", field="limit")
    served_before = (
        select(EndpointObservation.endpoint_id)
        .where(EndpointObservation.certificate_id == certificate_id)
        .scalar_subquery()
    )
    stmt = select(Endpoint).where(
        (Endpoint.certificate_id == certificate_id) | Endpoint.id.in_(served_before)
    )
    if cursor is not None:
        stmt = stmt.where(Endpoint.id > cursor)
    endpoints = list(session.execute(stmt.order_by(Endpoint.id).limit(limit + 1)).scalars())
    spans: dict[int, tuple[datetime, datetime]] = {}
    if endpoints:
        for endpoint_id, first, last in session.execute(
            select(
                EndpointObservation.endpoint_id, EndpointObservation.first_seen, EndpointObservation.last_seen
            ).where(
                EndpointObservation.certificate_id == certificate_id,
                EndpointObservation.endpoint_id.in_([e.id for e in endpoints[:limit]]),
            )
        ):
            low, high = spans.get(endpoint_id, (first, last))
            spans[endpoint_id] = (min(low, first), max(high, last))
    items = []
    for endpoint in endpoints[:limit]:
        item = endpoint_dict(endpoint)
        item.pop("certificate")
        span = spans.get(endpoint.id)
        item["serves_now"] = endpoint.certificate_id == certificate_id
        item["first_seen"] = span[0] if span else None
        item["last_seen"] = span[1] if span else None
        items.append(item)
    return items, items[-1]["id"] if len(endpoints) > limit else None
