"""The ``haproxy`` store: one PEM per alias (certificate, chain and key), ``haproxy -c``, a reload."""

from __future__ import annotations

from sslclm.connectors.haproxy.config import HaproxyConfig
from sslclm.connectors.haproxy.store import HaproxyStore

__all__ = ["HaproxyConfig", "HaproxyStore"]
