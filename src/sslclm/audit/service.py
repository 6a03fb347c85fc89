"""Appending to and verifying the hash-chained audit log.

Each event's hash covers its own fields and the previous event's hash, so altering or removing
any row breaks every later link. Events are appended in the same transaction as the change they
describe: a change that rolls back leaves no event, and an event never describes a change that
did not happen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

from sslclm.audit.models import AuditEvent
from sslclm.core.clock import as_utc, utcnow

GENESIS = "0" * 64
# Any constant works: it names the lock that serialises appends on PostgreSQL.
_APPEND_LOCK = 0x55C1_A0D1


@dataclass(frozen=True, slots=True)
class AuditContext:
    """Who acts, from where, in which request."""

    actor: str
    request_id: str | None = None
    source_address: str | None = None


def _digest(prev_hash: str, event: AuditEvent) -> str:
    occurred = as_utc(event.occurred_at).isoformat(timespec="microseconds")
    payload = orjson.dumps(
        [
            prev_hash,
            occurred,
            event.actor,
            event.action,
            event.target_type,
            event.target_id,
            event.summary,
            event.request_id,
            event.source_address,
        ],
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(payload).hexdigest()


def _last_hash(session: Session) -> str:
    last = session.execute(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)).scalar()
    return last or GENESIS


def record(
    session: Session,
    context: AuditContext,
    action: str,
    target_type: str,
    target_id: str | int | None = None,
    summary: dict[str, Any] | None = None,
    *,
    occurred_at: datetime | None = None,
) -> AuditEvent:
    """Appends one event to the chain inside the caller's transaction (the caller commits)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCK})
    event = AuditEvent(
        occurred_at=occurred_at or utcnow(),
        actor=context.actor,
        action=action,
        target_type=target_type,
        target_id=None if target_id is None else str(target_id),
        summary=summary or {},
        request_id=context.request_id,
        source_address=context.source_address,
    )
    event.prev_hash = _last_hash(session)
    event.hash = _digest(event.prev_hash, event)
    session.add(event)
    session.flush()
    return event


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """One event of a batch appended by :func:`record_many`."""

    action: str
    target_type: str
    target_id: str | int | None
    summary: dict[str, Any]


def record_many(
    session: Session, context: AuditContext, events: Sequence[PlannedEvent], *, occurred_at: datetime
) -> None:
    """Appends ``events`` to the chain in order, under one lock and with one multi-row insert.

    For batch work (a batch of renewals): the chain is the same as ``record`` called once per event,
    at a fraction of the statements, and the log's lock is taken once for the whole batch.
    """
    if not events:
        return
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCK})
    session.flush()  # events added through ``record`` earlier in this transaction come first
    prev_hash = _last_hash(session)
    rows = []
    for planned in events:
        event = AuditEvent(
            occurred_at=occurred_at,
            actor=context.actor,
            action=planned.action,
            target_type=planned.target_type,
            target_id=None if planned.target_id is None else str(planned.target_id),
            summary=planned.summary,
            request_id=context.request_id,
            source_address=context.source_address,
        )
        digest = _digest(prev_hash, event)
        rows.append(
            {
                "occurred_at": event.occurred_at,
                "actor": event.actor,
                "action": event.action,
                "target_type": event.target_type,
                "target_id": event.target_id,
                "summary": event.summary,
                "request_id": event.request_id,
                "source_address": event.source_address,
                "prev_hash": prev_hash,
                "hash": digest,
            }
        )
        prev_hash = digest
    session.connection().execute(insert(AuditEvent), rows)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    ok: bool
    checked: int
    broken_at_id: int | None = None
    reason: str | None = None


def _iter_events(session: Session, batch: int = 5000) -> Iterator[AuditEvent]:
    last_id = 0
    while True:
        rows = (
            session.execute(
                select(AuditEvent).where(AuditEvent.id > last_id).order_by(AuditEvent.id).limit(batch)
            )
            .scalars()
            .all()
        )
        if not rows:
            return
        yield from rows
        last_id = rows[-1].id
        session.expunge_all()


def verify_chain(session: Session) -> VerifyResult:
    """Walks the whole log in id order, in batches, and reports the first broken link."""
    expected_prev = GENESIS
    checked = 0
    for event in _iter_events(session):
        if event.prev_hash != expected_prev:
            return VerifyResult(
                False, checked, event.id, "previous-hash link does not match (a row was removed or reordered)"
            )
        if _digest(event.prev_hash, event) != event.hash:
            return VerifyResult(
                False, checked, event.id, "event content does not match its hash (row altered)"
            )
        expected_prev = event.hash
        checked += 1
    return VerifyResult(True, checked)
