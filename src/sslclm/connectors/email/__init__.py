"""SMTP notifier (``email``)."""

from __future__ import annotations

from sslclm.connectors.email.notifier import EmailNotifier

__all__ = ["EmailNotifier"]
