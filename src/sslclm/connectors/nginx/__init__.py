"""The ``nginx`` store: PEM files nginx reads, a configuration test, and a graceful reload."""

from __future__ import annotations

from sslclm.connectors.nginx.store import NginxConfig, NginxStore

__all__ = ["NginxConfig", "NginxStore"]
