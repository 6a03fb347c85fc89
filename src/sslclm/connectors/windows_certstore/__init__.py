"""The ``windows-certstore`` store: the Windows certificate store through PowerShell (Windows agents)."""

from __future__ import annotations

from sslclm.connectors.windows_certstore.store import WindowsCertStore, WindowsCertStoreConfig

__all__ = ["WindowsCertStore", "WindowsCertStoreConfig"]
