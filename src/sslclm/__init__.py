"""SSL-CLM: open-source certificate lifecycle management."""

from __future__ import annotations

__version__ = "0.1.0"
