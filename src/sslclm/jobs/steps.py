"""What a step function receives (``StepContext``) and what it returns (``Next``, ``Done``, ``Wait``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from sslclm.core.platform import Platform

MAX_MESSAGE = 2000


@dataclass(frozen=True, slots=True)
class Next:
    """Move on to ``step``; ``state`` is merged into the job's state in the same commit.

    State is JSON and shown by the API: store ids and references there, never keys or secrets.
    """

    step: str
    state: Mapping[str, Any] | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Done:
    """The job succeeded with ``result``."""

    result: Mapping[str, Any] | None = None
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Wait:
    """Park the job, then run ``step`` (default: this step again) later.

    With ``delay`` or ``until`` a worker picks it up again by itself (poll an asynchronous CA);
    with neither, it waits until something resumes it (``queue.resume``: an approval, a callback).
    Waiting does not use up attempts.
    """

    reason: str
    delay: timedelta | None = None
    until: datetime | None = None
    step: str | None = None
    state: Mapping[str, Any] | None = None


Outcome = Next | Done | Wait | None


@dataclass(slots=True)
class StepContext:
    """One run of one step of one job.

    ``session`` is a transaction that also holds the job's own status change: whatever the step
    writes through it commits together with "this step is done" or not at all. If the worker lost
    its lease meanwhile (it stalled and another worker took the job over), the commit is refused and
    the step's writes are rolled back. The session is opened on first use: a step that never
    touches it costs the worker one plain statement instead of an ORM unit of work.
    """

    job_id: int
    kind: str
    step: str
    attempt: int
    payload: Mapping[str, Any]
    state: Mapping[str, Any]
    platform: Platform
    now: datetime
    connection: Connection = field(repr=False)
    target: str | None = None
    opened_session: Session | None = field(default=None, repr=False)
    events: list[tuple[str | None, str]] = field(default_factory=list, repr=False)

    @property
    def session(self) -> Session:
        if self.opened_session is None:
            self.opened_session = Session(bind=self.connection, expire_on_commit=False)
        return self.opened_session

    def progress(self, message: str) -> None:
        """Adds a line to the job's history, written with this step's commit."""
        self.events.append((self.step, message[:MAX_MESSAGE]))
