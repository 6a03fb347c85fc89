"""The ``jks`` store: private key entries in one Java KeyStore file, other entries kept intact."""

from __future__ import annotations

from sslclm.connectors.jks.store import JksConfig, JksStore

__all__ = ["JksConfig", "JksStore"]
