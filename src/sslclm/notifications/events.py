"""Events raised where things happen, for the notification rules to pick up.

Other modules call :func:`raise_event` inside their own transaction (a failed job, a drifted
store binding, a scan that found new certificates, an agent gone quiet). The event commits with
what caused it, and the next notification sweep routes it to the channels whose rules match.

Each event carries a caller-chosen ``key``; the pair (kind, key) is unique, so raising the same
condition again (the hourly drift check finding the same drift) is a no-op rather than a storm.
Pick a key that changes when the condition is genuinely new: the job id, the binding id plus the
fingerprint found, the agent id plus when it was last seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from sslclm.errors import InvalidInputError
from sslclm.inventory.models import Certificate
from sslclm.jobs.sql import insert_ignoring_conflict
from sslclm.notifications.models import NotificationEvent
from sslclm.spi.notify import Severity

CERTIFICATE_EXPIRING = "certificate.expiring"
POLICY_CRITICAL = "policy.critical"
JOB_FAILED = "job.failed"
DEPLOYMENT_DRIFT = "deployment.drift"
AGENT_OFFLINE = "agent.offline"
DISCOVERY_NEW_CERTIFICATES = "discovery.new-certificates"

# Kinds the sweep derives from the inventory itself (time passing, violations present).
SWEPT_KINDS = (CERTIFICATE_EXPIRING, POLICY_CRITICAL)
# Kinds that only exist because some module raised them.
RAISED_KINDS = (JOB_FAILED, DEPLOYMENT_DRIFT, AGENT_OFFLINE, DISCOVERY_NEW_CERTIFICATES)
ALL_KINDS = SWEPT_KINDS + RAISED_KINDS


def raise_event(
    session: Session,
    *,
    kind: str,
    key: str,
    subject: str,
    body: str = "",
    severity: Severity | str = Severity.WARNING,
    certificate_id: int | None = None,
    owner: str | None = None,
    team: str | None = None,
    details: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> int | None:
    """Records an event once; returns its id, or None when (kind, key) was raised before.

    ``owner`` and ``team`` default to the certificate's, so rules routed by owner or team match
    events about that certificate without the caller looking them up.
    """
    if kind not in RAISED_KINDS:
        raise InvalidInputError(f"unknown event kind '{kind}'; choose one of {', '.join(RAISED_KINDS)}")
    if not key or len(key) > 255:
        raise InvalidInputError("an event key is 1 to 255 characters", field="key")
    level = Severity(severity)
    if certificate_id is not None and (owner is None or team is None):
        found = session.execute(
            select(Certificate.owner, Certificate.team).where(Certificate.id == certificate_id)
        ).first()
        if found is not None:
            owner = owner if owner is not None else found[0]
            team = team if team is not None else found[1]
    new_id: int | None = insert_ignoring_conflict(
        session,
        NotificationEvent,
        {
            "kind": kind,
            "key": key,
            "subject": subject[:1000],
            "body": body[:8000],
            "severity": level.value,
            "certificate_id": certificate_id,
            "owner": owner,
            "team": team,
            "details": dict(details or {}),
            "created_at": now or datetime.now(UTC),
        },
        ("kind", "key"),
        returning=NotificationEvent.id,
    )
    return new_id


def raise_job_failed(
    session: Session, *, job_id: int, kind: str, target: str | None, error: str, now: datetime
) -> int | None:
    """The ``job.failed`` event for a job that ended failed (called by the worker, once per job)."""
    return raise_event(
        session,
        kind=JOB_FAILED,
        key=str(job_id),
        subject=f"Job {job_id} ({kind}) failed",
        body=f"{kind} {target or ''} failed: {error or 'no message'}".replace("  ", " "),
        severity=Severity.CRITICAL,
        details={"job_id": job_id, "kind": kind, "target": target},
        now=now,
    )


def raise_drift(
    session: Session, *, binding_id: int, store: str, alias: str, finding: str, now: datetime
) -> int | None:
    """``deployment.drift`` when a binding turns drifted (or its finding changes), keyed by that moment."""
    return raise_event(
        session,
        kind=DEPLOYMENT_DRIFT,
        key=f"{binding_id}:{now.isoformat()}",
        subject=f"Deployment drift in {store} ({alias})",
        body=f"The store {store} no longer holds what was deployed under '{alias}': {finding}",
        severity=Severity.WARNING,
        details={"binding_id": binding_id, "store": store, "alias": alias, "finding": finding},
        now=now,
    )


def raise_new_certificates(
    session: Session, *, scan_id: int, counts: Mapping[str, int], now: datetime
) -> None:
    """One ``discovery.new-certificates`` event per scan that found certificates not served before."""
    found = int(counts.get("certificates_new", 0))
    if found:
        raise_event(
            session,
            kind=DISCOVERY_NEW_CERTIFICATES,
            key=f"scan:{scan_id}",
            subject=f"Discovery scan {scan_id} found {found} new certificate(s)",
            body=f"Scan {scan_id} found {found} certificate(s) no endpoint served in the previous scan.",
            severity=Severity.INFO,
            details={"scan_id": scan_id, **{k: int(v) for k, v in counts.items()}},
            now=now,
        )
