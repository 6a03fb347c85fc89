"""The ``pem-files`` store: certificate, key, chain and full-chain PEM files in a directory."""

from __future__ import annotations

from sslclm.connectors.pem_files.store import PemFilesConfig, PemFilesStore

__all__ = ["PemFilesConfig", "PemFilesStore"]
