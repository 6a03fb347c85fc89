"""The ``pkcs12`` store: one PKCS#12 (PFX) file per alias in a directory, password-protected."""

from __future__ import annotations

from sslclm.connectors.pkcs12.store import Pkcs12Config, Pkcs12Store

__all__ = ["Pkcs12Config", "Pkcs12Store"]
