"""Reporting tables: precomputed report results and metric gauges."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from sslclm.core.db import Base, UTCDateTime


class ReportSnapshot(Base):
    """The latest result of an aggregate over the whole inventory, with when it was computed.

    Grouping a million certificates takes longer than a page view or a scrape may wait: the metrics
    gauges and the heavy reports are served from here and recomputed by periodic tasks (see
    ``sslclm.reporting.snapshots``).
    """

    __tablename__ = "report_snapshots"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    data: Mapped[Any] = mapped_column(JSON)
    computed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    duration_ms: Mapped[int] = mapped_column(Integer)
