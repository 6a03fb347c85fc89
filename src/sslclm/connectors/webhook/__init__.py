"""Webhook notifiers: generic signed JSON (``webhook``), Slack (``slack``) and Microsoft Teams (``teams``)."""

from __future__ import annotations

from sslclm.connectors.webhook.notifier import SlackNotifier, TeamsNotifier, WebhookNotifier

__all__ = ["SlackNotifier", "TeamsNotifier", "WebhookNotifier"]
