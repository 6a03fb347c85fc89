"""Bodies and query parameters of the audit routes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sslclm.audit.models import AuditEvent
from sslclm.audit.service import VerifyResult

MAX_PAGE = 500


class AuditQuery(BaseModel):
    """Filters and keyset pagination; unknown parameters are refused so a typo never widens a search."""

    model_config = ConfigDict(extra="forbid")

    actor: str | None = Field(
        default=None, max_length=255, description="A user: what they did in a session or with any token."
    )
    action: str | None = Field(default=None, max_length=64)
    target_type: str | None = Field(default=None, max_length=64)
    target_id: str | None = Field(default=None, max_length=255)
    since: datetime | None = Field(default=None, description="Events at or after this time.")
    until: datetime | None = Field(default=None, description="Events before this time.")
    cursor: int | None = Field(default=None, ge=1, description="next_cursor of the previous page.")
    limit: int = Field(default=100, ge=1, le=MAX_PAGE)

    @model_validator(mode="after")
    def _ordered_window(self) -> AuditQuery:
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise ValueError("until must be later than since")
        return self


class AuditEventOut(BaseModel):
    id: int
    occurred_at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str | None
    summary: dict[str, Any]
    request_id: str | None
    source_address: str | None
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, event: AuditEvent) -> AuditEventOut:
        return cls(
            id=event.id,
            occurred_at=event.occurred_at,
            actor=event.actor,
            action=event.action,
            target_type=event.target_type,
            target_id=event.target_id,
            summary=event.summary,
            request_id=event.request_id,
            source_address=event.source_address,
            prev_hash=event.prev_hash,
            hash=event.hash,
        )


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: int | None = Field(
        description="Pass as ?cursor= for the next (older) page; null on the last."
    )


class VerifyOut(BaseModel):
    ok: bool
    checked: int = Field(description="Events whose link and hash were confirmed.")
    broken_at_id: int | None = Field(description="The first event that does not fit the chain.")
    reason: str | None

    @classmethod
    def of(cls, result: VerifyResult) -> VerifyOut:
        return cls(
            ok=result.ok, checked=result.checked, broken_at_id=result.broken_at_id, reason=result.reason
        )
