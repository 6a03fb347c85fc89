"""The notifier: tells people about events (expiry, failed renewal, policy violation).

Errors ``send`` may raise, and what they mean:

- :class:`~sslclm.errors.ConnectorError` — delivery failed; ``retryable`` says whether to try again
  (mail server down: yes; recipient rejected: no).
- :class:`~sslclm.errors.InvalidInputError` — the notification cannot be expressed by this channel.
- :class:`~sslclm.errors.NotSupportedError` — the notifier does not declare ``SEND``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from sslclm.errors import InvalidInputError
from sslclm.spi._frozen import empty_mapping, freeze_mapping, freeze_tuple
from sslclm.spi.base import Connector
from sslclm.spi.capabilities import Capability, ConnectorKind


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True, kw_only=True)
class Notification:
    event: str  # a stable event name, e.g. "certificate.expiring"
    subject: str
    body: str
    severity: Severity = Severity.INFO
    recipients: tuple[str, ...] = ()  # empty: the notifier's configured default recipients
    link: str | None = None
    # Deduplicates retried sends on channels that support it.
    idempotency_key: str | None = None
    details: Mapping[str, Any] = field(default_factory=empty_mapping)

    def __post_init__(self) -> None:
        freeze_tuple(self, "recipients")
        freeze_mapping(self, "details")
        if not self.event:
            raise InvalidInputError("an event name is required", field="event")


@dataclass(frozen=True, slots=True, kw_only=True)
class SendResult:
    delivered: bool
    message_id: str | None = None
    detail: str = ""


class Notifier(Connector):
    """A channel that delivers notifications."""

    kind: ClassVar[ConnectorKind] = ConnectorKind.NOTIFIER

    def send(self, notification: Notification) -> SendResult:
        """Deliver one notification (capability ``SEND``)."""
        raise self._unsupported(Capability.SEND)
