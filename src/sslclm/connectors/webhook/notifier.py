"""Notifications by HTTP POST: signed JSON for any receiver, and Slack/Teams incoming-webhook payloads.

The generic webhook signs every request: ``X-SSLCLM-Timestamp`` (Unix seconds) and
``X-SSLCLM-Signature: sha256=<hex>``, the HMAC-SHA256 under the shared secret of
``<timestamp>.<body>``; a receiver recomputes it and rejects old timestamps, so a captured request
cannot be replayed later.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any, ClassVar

import httpx
import orjson
from pydantic import Field, SecretStr

from sslclm.errors import ConnectorError
from sslclm.spi import CheckRequest, CheckResult
from sslclm.spi.base import CHECK, ConnectorConfig
from sslclm.spi.capabilities import Capability
from sslclm.spi.notify import Notification, Notifier, SendResult, Severity

SIGNATURE_HEADER = "X-SSLCLM-Signature"
TIMESTAMP_HEADER = "X-SSLCLM-Timestamp"
COLORS = {Severity.INFO: "2E86DE", Severity.WARNING: "F39C12", Severity.CRITICAL: "C0392B"}


class WebhookConfig(ConnectorConfig):
    url: str = Field(pattern=r"^https?://", max_length=2000)
    secret: SecretStr | None = Field(default=None, description="HMAC-SHA256 signing key.")
    ca_file: str | None = Field(default=None, description="PEM file of CAs to trust for https.")
    attempts: int = Field(default=3, ge=1, le=10)
    backoff_seconds: float = Field(default=0.5, ge=0, le=30)
    timeout_seconds: float = Field(default=10.0, gt=0, le=120)


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class WebhookNotifier(Notifier):
    type_key: ClassVar[str] = "webhook"
    display_name = "Webhook (signed JSON)"
    capabilities = frozenset({Capability.SEND})
    Config = WebhookConfig

    @property
    def settings(self) -> WebhookConfig:
        assert isinstance(self.config, WebhookConfig)
        return self.config

    def payload(self, notification: Notification) -> dict[str, Any]:
        return {
            "event": notification.event,
            "severity": notification.severity.value,
            "subject": notification.subject,
            "body": notification.body,
            "link": notification.link,
            "idempotency_key": notification.idempotency_key,
            "details": dict(notification.details),
        }

    def _post(self, body: bytes, idempotency_key: str | None) -> httpx.Response:
        cfg = self.settings
        headers = {"Content-Type": "application/json", "User-Agent": "sslclm-notifier"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        if cfg.secret is not None:
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(cfg.secret.get_secret_value().encode(), timestamp, body)
        last: str = ""
        verify: bool | str = cfg.ca_file or True
        with httpx.Client(timeout=cfg.timeout_seconds, verify=verify) as client:
            for attempt in range(cfg.attempts):
                if attempt:
                    time.sleep(cfg.backoff_seconds * 2 ** (attempt - 1))
                try:
                    response = client.post(cfg.url, content=body, headers=headers)
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                    continue
                if response.status_code < 300:
                    return response
                last = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code not in (408, 429):
                    raise ConnectorError(f"the receiver refused the notification: {last}", retryable=False)
        raise ConnectorError(f"no delivery after {cfg.attempts} attempt(s): {last}", retryable=True)

    def send(self, notification: Notification) -> SendResult:
        body = orjson.dumps(self.payload(notification))
        response = self._post(body, notification.idempotency_key)
        return SendResult(delivered=True, detail=f"HTTP {response.status_code}")

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        return CheckResult(ok=True, message=f"will POST to {self.settings.url}; send a test to verify")


class SlackNotifier(WebhookNotifier):
    """Slack incoming webhook: ``text`` plus a Block Kit section."""

    type_key: ClassVar[str] = "slack"
    display_name = "Slack incoming webhook"

    def payload(self, notification: Notification) -> dict[str, Any]:
        text = f"*{notification.subject}*\n{notification.body}"
        if notification.link:
            text += f"\n<{notification.link}|Open in SSL-CLM>"
        return {
            "text": f"{notification.subject}",
            "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}}],
        }


class TeamsNotifier(WebhookNotifier):
    """Microsoft Teams incoming webhook: a MessageCard."""

    type_key: ClassVar[str] = "teams"
    display_name = "Microsoft Teams incoming webhook"

    def payload(self, notification: Notification) -> dict[str, Any]:
        card: dict[str, Any] = {
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": notification.subject,
            "themeColor": COLORS[notification.severity],
            "title": notification.subject,
            "text": notification.body,
        }
        if notification.link:
            card["potentialAction"] = [
                {"@type": "OpenUri", "name": "Open", "targets": [{"os": "default", "uri": notification.link}]}
            ]
        return card
