"""Notification rules, the sweep that turns events into notifications, and delivery with a log.

Each event is keyed (rule, kind, object, threshold) and the key is unique in ``notification_log``,
so a notification is queued once however often the sweep runs or how many workers run it: a
certificate 5 days from expiry under thresholds (30, 14, 7, 1) gets the 7-day notice once, then
the 1-day notice once.

Two sources feed the sweep: the inventory itself (expiry windows, critical violations), and events
other modules raised with :func:`sslclm.notifications.events.raise_event` (failed jobs, drift,
agents offline, new certificates found by discovery). A rule marked ``digest`` holds its
notifications and the daily digest (:mod:`sslclm.notifications.digest`) sends them as one message
per channel and day.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.core.platform import Platform
from sslclm.errors import ConnectorError, InvalidInputError, NotFoundError, SslClmError
from sslclm.inventory.models import Certificate, CertificateTag
from sslclm.jobs.sql import insert_ignoring_conflict
from sslclm.notifications import events as kinds
from sslclm.notifications.models import NotificationEvent, NotificationLog, NotificationRule
from sslclm.policies.checks import SEVERITY_RANK, Severity
from sslclm.policies.models import PolicyViolation, severe_condition
from sslclm.spi.capabilities import ConnectorKind
from sslclm.spi.notify import Notification
from sslclm.spi.notify import Severity as NoticeSeverity
from sslclm.workflows import connections
from sslclm.workflows.models import Connection

EVENTS = kinds.ALL_KINDS
EventKind = Literal[
    "certificate.expiring",
    "policy.critical",
    "job.failed",
    "deployment.drift",
    "agent.offline",
    "discovery.new-certificates",
]
DEFAULT_THRESHOLDS = [30, 14, 7, 1]
# Raised events older than this are history, not news (a rule added today does not replay last month).
EVENT_LOOKBACK = timedelta(days=2)
SWEEP_LIMIT = 5000
log = logging.getLogger(__name__)


class RuleCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=150)
    event: EventKind
    channel: str = Field(description="Name or id of a notifier connection.")
    thresholds: list[int] = Field(default_factory=lambda: list(DEFAULT_THRESHOLDS))
    owner: str | None = Field(default=None, max_length=255)
    team: str | None = Field(default=None, max_length=255)
    tag: str | None = Field(default=None, max_length=128)
    digest: bool = Field(default=False, description="Hold for the channel's daily digest.")


def create_rule(session: Session, ctx: AuditContext, data: RuleCreate, *, now: datetime) -> NotificationRule:
    channel = connections.get_connection(session, data.channel, ConnectorKind.NOTIFIER)
    if any(t < 0 or t > 3650 for t in data.thresholds):
        raise InvalidInputError("thresholds are days between 0 and 3650", field="thresholds")
    if session.execute(select(NotificationRule.id).where(NotificationRule.name == data.name)).first():
        raise InvalidInputError(f"a rule named '{data.name}' exists", field="name")
    rule = NotificationRule(
        name=data.name,
        event=data.event,
        thresholds=sorted(set(data.thresholds), reverse=True),
        owner=data.owner,
        team=data.team,
        tag=data.tag,
        channel_id=channel.id,
        digest=data.digest,
        created_at=now,
    )
    session.add(rule)
    session.flush()
    record(session, ctx, "notification.rule.create", "notification-rule", rule.id, {"event": rule.event})
    return rule


def delete_rule(session: Session, ctx: AuditContext, rule_id: int) -> None:
    rule = session.get(NotificationRule, rule_id)
    if rule is None:
        raise NotFoundError(f"no notification rule {rule_id}", field="rule_id")
    session.delete(rule)
    record(session, ctx, "notification.rule.delete", "notification-rule", rule_id)


def rule_view(rule: NotificationRule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "name": rule.name,
        "event": rule.event,
        "thresholds": rule.thresholds,
        "owner": rule.owner,
        "team": rule.team,
        "tag": rule.tag,
        "channel_id": rule.channel_id,
        "enabled": rule.enabled,
        "digest": rule.digest,
    }


def _matches(stmt: Any, rule: NotificationRule) -> Any:
    if rule.owner:
        stmt = stmt.where(Certificate.owner == rule.owner)
    if rule.team:
        stmt = stmt.where(Certificate.team == rule.team)
    if rule.tag:
        stmt = stmt.where(
            exists().where(CertificateTag.certificate_id == Certificate.id, CertificateTag.tag == rule.tag)
        )
    return stmt


@dataclass(frozen=True, slots=True)
class Event:
    key: str
    subject: str
    body: str
    severity: NoticeSeverity
    details: dict[str, Any]


def _expiring(session: Session, rule: NotificationRule, now: datetime) -> list[Event]:
    thresholds = sorted(rule.thresholds or DEFAULT_THRESHOLDS)
    stmt = select(Certificate.id, Certificate.common_name, Certificate.not_after, Certificate.owner).where(
        Certificate.archived_at.is_(None),
        Certificate.revoked_at.is_(None),
        Certificate.superseded_by_id.is_(None),
        Certificate.not_after > now,
        Certificate.not_after <= now + timedelta(days=max(thresholds)),
    )
    events = []
    for cid, cn, not_after, owner in session.execute(_matches(stmt, rule).limit(SWEEP_LIMIT)):
        left = not_after - now
        threshold = next(t for t in thresholds if left <= timedelta(days=t))
        severity = NoticeSeverity.CRITICAL if threshold <= 7 else NoticeSeverity.WARNING
        events.append(
            Event(
                f"r{rule.id}:expiry:{cid}:{not_after:%Y%m%d}:{threshold}",
                f"Certificate {cn or cid} expires in {left.days} days",
                f"{cn or cid} expires on {not_after:%Y-%m-%d %H:%M} UTC"
                f" (within {threshold} days). Owner: {owner or 'unassigned'}.",
                severity,
                {"certificate_id": cid, "threshold_days": threshold, "not_after": not_after.isoformat()},
            )
        )
    return events


def _critical(session: Session, rule: NotificationRule, now: datetime) -> list[Event]:
    stmt = (
        select(
            PolicyViolation.id,
            PolicyViolation.check,
            PolicyViolation.reason,
            Certificate.id,
            Certificate.common_name,
        )
        .join(Certificate, Certificate.id == PolicyViolation.certificate_id)
        .where(
            PolicyViolation.severity_rank >= SEVERITY_RANK[Severity.CRITICAL],
            severe_condition(),  # lets the planner use the partial severity index
            PolicyViolation.exemption_id.is_(None),
        )
    )
    return [
        Event(
            f"r{rule.id}:violation:{vid}",
            f"Critical policy violation: {check} on {cn or cid}",
            f"{cn or cid}: {reason}",
            NoticeSeverity.CRITICAL,
            {"certificate_id": cid, "violation_id": vid, "check": check},
        )
        for vid, check, reason, cid, cn in session.execute(_matches(stmt, rule).limit(SWEEP_LIMIT))
    ]


def _raised(session: Session, rule: NotificationRule, now: datetime) -> list[Event]:
    stmt = select(NotificationEvent).where(
        NotificationEvent.kind == rule.event, NotificationEvent.created_at >= now - EVENT_LOOKBACK
    )
    if rule.owner:
        stmt = stmt.where(NotificationEvent.owner == rule.owner)
    if rule.team:
        stmt = stmt.where(NotificationEvent.team == rule.team)
    if rule.tag:
        stmt = stmt.where(
            exists().where(
                CertificateTag.certificate_id == NotificationEvent.certificate_id,
                CertificateTag.tag == rule.tag,
            )
        )
    return [
        Event(
            f"r{rule.id}:event:{row.id}",
            row.subject,
            row.body or row.subject,
            NoticeSeverity(row.severity),
            {**row.details, "event_id": row.id, "certificate_id": row.certificate_id},
        )
        for row in session.execute(stmt.order_by(NotificationEvent.id).limit(SWEEP_LIMIT)).scalars()
    ]


COLLECTORS = {
    kinds.CERTIFICATE_EXPIRING: _expiring,
    kinds.POLICY_CRITICAL: _critical,
    **dict.fromkeys(kinds.RAISED_KINDS, _raised),
}


def queue_events(session: Session, *, now: datetime) -> int:
    """Adds a log row for every new event of every enabled rule; returns how many.

    A digest rule's rows are ``held`` for the daily digest; the others are ``pending`` delivery.
    """
    added = 0
    for rule in session.execute(select(NotificationRule).where(NotificationRule.enabled.is_(True))).scalars():
        for event in COLLECTORS[rule.event](session, rule, now):
            new_id = insert_ignoring_conflict(
                session,
                NotificationLog,
                {
                    "dedupe_key": event.key,
                    "rule_id": rule.id,
                    "channel_id": rule.channel_id,
                    "event": rule.event,
                    "subject": event.subject,
                    "body": event.body,
                    "severity": event.severity.value,
                    "details": event.details,
                    "status": "held" if rule.digest else "pending",
                    "attempts": 0,
                    "created_at": now,
                },
                ("dedupe_key",),
                returning=NotificationLog.id,
            )
            added += new_id is not None
    return added


MAX_ATTEMPTS = 5


def deliver_pending(platform: Platform, *, limit: int = 500) -> dict[str, int]:
    """Sends pending notifications and records each outcome; a failure stays pending until MAX_ATTEMPTS."""
    counts = {"sent": 0, "failed": 0, "retrying": 0}
    with platform.sessions() as session:
        rows = session.execute(
            select(NotificationLog, Connection)
            .join(Connection, Connection.id == NotificationLog.channel_id)
            .where(NotificationLog.status == "pending")
            .order_by(NotificationLog.id)
            .limit(limit)
        ).all()
        session.expunge_all()
    for entry, channel in rows:
        status, detail = "sent", ""
        try:
            notifier = connections.build_connector(platform, channel)
            result = notifier.send(
                Notification(
                    event=entry.event,
                    subject=entry.subject,
                    body=entry.body,
                    severity=NoticeSeverity(entry.severity),
                    idempotency_key=entry.dedupe_key,
                    details=entry.details,
                )
            )
            detail = result.detail
        except ConnectorError as exc:
            retry = exc.retryable and entry.attempts + 1 < MAX_ATTEMPTS
            status, detail = ("pending" if retry else "failed"), exc.message
        except SslClmError as exc:
            status, detail = "failed", exc.message
        counts[{"sent": "sent", "failed": "failed", "pending": "retrying"}[status]] += 1
        if status != "sent":
            # The reason only: connector errors never carry the channel's secrets.
            log.warning(
                "notification %s to channel %s %s: %s",
                entry.id,
                channel.name,
                "will be retried" if status == "pending" else "failed",
                detail,
            )
        with platform.sessions() as session:
            session.execute(
                update(NotificationLog)
                .where(NotificationLog.id == entry.id)
                .values(
                    status=status,
                    attempts=NotificationLog.attempts + 1,
                    detail=detail[:2000],
                    sent_at=platform.clock() if status == "sent" else None,
                )
            )
            session.commit()
    return counts


def log_view(entry: NotificationLog) -> dict[str, Any]:
    return {
        "id": entry.id,
        "event": entry.event,
        "subject": entry.subject,
        "severity": entry.severity,
        "status": entry.status,
        "attempts": entry.attempts,
        "detail": entry.detail,
        "details": entry.details,
        "rule_id": entry.rule_id,
        "channel_id": entry.channel_id,
        "created_at": entry.created_at,
        "sent_at": entry.sent_at,
    }


def event_view(event: NotificationEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "kind": event.kind,
        "key": event.key,
        "subject": event.subject,
        "severity": event.severity,
        "certificate_id": event.certificate_id,
        "owner": event.owner,
        "team": event.team,
        "details": event.details,
        "created_at": event.created_at,
    }
