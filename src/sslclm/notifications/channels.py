"""Notification channels (notifier connections): a test message on demand, and removal.

A channel is a ``connections`` row of kind ``notifier``; creating and checking one is the generic
connection code's job. What only a channel needs lives here: sending a test message through it (a
notifier's ``check`` cannot prove delivery without sending), and deleting it together with the rules
that route to it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.core.platform import Platform
from sslclm.errors import ConnectorError, SslClmError
from sslclm.notifications.models import NotificationLog, NotificationRule
from sslclm.spi.capabilities import ConnectorKind
from sslclm.spi.notify import Notification
from sslclm.workflows import connections
from sslclm.workflows.models import Connection

TEST_EVENT = "notification.test"


def get_channel(session: Session, ref: str | int) -> Connection:
    """A notifier connection by id or name (404 for any other kind)."""
    return connections.get_connection(session, ref, ConnectorKind.NOTIFIER)


def send_test(
    session: Session, ctx: AuditContext, platform: Platform, channel: Connection, *, now: datetime
) -> tuple[bool, str]:
    """Sends one test message through ``channel``; returns whether it was delivered and the detail.

    A refused or failed delivery is an outcome to show, not an error of the request. The attempt is
    audited; the delivery log keeps only notifications of events.
    """
    notification = Notification(
        event=TEST_EVENT,
        subject=f"SSL-CLM test notification for channel {channel.name}",
        body=f"{ctx.actor} sent this test from SSL-CLM to check the channel '{channel.name}'.",
        idempotency_key=f"test:{channel.id}:{now.isoformat()}",
    )
    try:
        result = connections.build_connector(platform, channel).send(notification)
        ok, detail = result.delivered, result.detail or "delivered"
    except (ConnectorError, SslClmError) as exc:
        # The connector's message only: connector errors never carry the channel's secrets.
        ok, detail = False, exc.message
    record(
        session,
        ctx,
        "notification.test",
        "connection",
        channel.id,
        {"channel": channel.name, "ok": ok, "detail": detail[:300]},
        occurred_at=now,
    )
    return ok, detail


def delete_channel(
    session: Session, ctx: AuditContext, platform: Platform, channel: Connection, *, now: datetime
) -> None:
    """Deletes ``channel``, the rules that route to it and its undelivered notifications' claim on it.

    Delivered and failed log entries stay (their channel becomes empty) so the delivery log keeps
    its history; pending ones can no longer go anywhere and are marked failed with the reason.
    """
    rules = session.execute(
        delete(NotificationRule)
        .where(NotificationRule.channel_id == channel.id)
        .returning(NotificationRule.name)
    ).scalars()
    removed_rules = sorted(rules)
    session.execute(
        update(NotificationLog)
        .where(NotificationLog.channel_id == channel.id, NotificationLog.status == "pending")
        .values(status="failed", detail="the channel was deleted")
    )
    session.execute(
        update(NotificationLog).where(NotificationLog.channel_id == channel.id).values(channel_id=None)
    )
    record(
        session,
        ctx,
        "connection.delete",
        "connection",
        channel.id,
        {"kind": channel.kind, "name": channel.name, "type": channel.type_key, "rules": removed_rules},
        occurred_at=now,
    )
    connection_id = channel.id
    session.delete(channel)
    session.flush()
    # A later connection may reuse the id on SQLite: drop the cached connector built for this one.
    connections._forget_instance(platform, connection_id)
