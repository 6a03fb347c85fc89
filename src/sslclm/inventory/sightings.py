"""Listing sightings: where and when certificates were seen."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from sslclm.errors import InvalidInputError
from sslclm.inventory.models import Certificate, Sighting


class SightingFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    certificate_id: int | None = None
    kind: str | None = Field(default=None, max_length=32)
    source: str | None = Field(default=None, max_length=64)
    host: str | None = Field(default=None, max_length=255)
    location: str | None = Field(default=None, max_length=512, description="Text in the location.")
    limit: int = Field(default=50, ge=1, le=1000)
    cursor: int | None = Field(default=None, ge=0, description="next_cursor of the previous page.")


def list_sightings(session: Session, flt: SightingFilter) -> dict[str, Any]:
    """Newest first, keyset-paginated by id."""
    stmt = select(Sighting, Certificate.fingerprint_sha256, Certificate.common_name).join(
        Certificate, Certificate.id == Sighting.certificate_id
    )
    if flt.certificate_id is not None:
        stmt = stmt.where(Sighting.certificate_id == flt.certificate_id)
    if flt.kind:
        stmt = stmt.where(Sighting.kind == flt.kind)
    if flt.source:
        stmt = stmt.where(Sighting.source == flt.source)
    if flt.host:
        stmt = stmt.where(Sighting.host == flt.host)
    if flt.location:
        if "%" in flt.location or "_" in flt.location:
            raise InvalidInputError("location text may not contain % or _", field="location")
        stmt = stmt.where(Sighting.location.contains(flt.location))
    if flt.cursor is not None:
        stmt = stmt.where(Sighting.id < flt.cursor)
    rows = session.execute(stmt.order_by(Sighting.id.desc()).limit(flt.limit + 1)).all()
    more = len(rows) > flt.limit
    rows = rows[: flt.limit]
    items = [
        {
            "id": s.id,
            "certificate_id": s.certificate_id,
            "fingerprint_sha256": fingerprint,
            "common_name": common_name,
            "kind": s.kind,
            "location": s.location,
            "source": s.source,
            "host": s.host,
            "port": s.port,
            "sni": s.sni,
            "details": s.details,
            "first_seen": s.first_seen,
            "last_seen": s.last_seen,
        }
        for s, fingerprint, common_name in rows
    ]
    return {"items": items, "next_cursor": rows[-1][0].id if more and rows else None}
