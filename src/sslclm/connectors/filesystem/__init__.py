"""The built-in ``filesystem`` discovery source and the pure directory walker behind it."""

from __future__ import annotations

from sslclm.connectors.filesystem.source import FilesystemConfig, FilesystemSource
from sslclm.connectors.filesystem.walker import (
    DEFAULT_INCLUDE,
    CertificateFinding,
    FileMeta,
    FindingKind,
    KeyFinding,
    ProblemFinding,
    WalkOptions,
    walk,
)

__all__ = [
    "DEFAULT_INCLUDE",
    "CertificateFinding",
    "FileMeta",
    "FilesystemConfig",
    "FilesystemSource",
    "FindingKind",
    "KeyFinding",
    "ProblemFinding",
    "WalkOptions",
    "walk",
]
