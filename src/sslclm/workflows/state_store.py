"""The database-backed ``StateStore`` every connector instance gets (shared by all worker processes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from sslclm.core.clock import Clock, utcnow
from sslclm.workflows.models import ConnectorStateEntry

MAX_KEY = 200

# (scope, session): while set, the store of that scope works inside the session's transaction.
_joined: ContextVar[tuple[str, Session] | None] = ContextVar("sslclm_joined_state", default=None)


@contextmanager
def state_in_transaction(scope: str, session: Session) -> Iterator[None]:
    """Runs the state calls of connector ``scope`` inside ``session``'s transaction (this thread only).

    For a connector whose state is the platform's own data and that calls nothing outside (the
    built-in CA): its writes then commit with the job step that made them, or not at all, and cost
    no transaction of their own. Never for a connector that talks to a remote system, whose state
    (an order placed at an ACME server) must survive the step failing.
    """
    token = _joined.set((scope, session))
    try:
        yield
    finally:
        _joined.reset(token)


class DatabaseStateStore:
    """Each call is its own short transaction, so a connector's state survives a crash mid-workflow
    (unless the caller joined it to a step's transaction with :func:`state_in_transaction`)."""

    def __init__(self, sessions: sessionmaker[Session], scope: str, clock: Clock = utcnow) -> None:
        self._sessions = sessions
        self._scope = scope
        self._clock = clock

    def _check(self, key: str) -> None:
        if not key or len(key) > MAX_KEY:
            raise ValueError(f"state keys are 1-{MAX_KEY} characters")

    def _joined_session(self) -> Session | None:
        joined = _joined.get()
        return joined[1] if joined is not None and joined[0] == self._scope else None

    @contextmanager
    def _unit(self) -> Iterator[tuple[Session, bool]]:
        """A session to work in, and whether this call owns (and so commits) its transaction."""
        joined = self._joined_session()
        if joined is not None:
            yield joined, False
            return
        with self._sessions() as session:
            yield session, True

    @staticmethod
    def _insert(session: Session) -> Any:
        dialect = session.get_bind().dialect.name
        return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(ConnectorStateEntry)

    def get(self, key: str) -> bytes | None:
        with self._unit() as (session, _):
            return session.execute(
                select(ConnectorStateEntry.value).where(
                    ConnectorStateEntry.scope == self._scope, ConnectorStateEntry.key == key
                )
            ).scalar_one_or_none()

    def put(self, key: str, value: bytes) -> None:
        self._check(key)
        with self._unit() as (session, owned):
            insert = self._insert(session)
            session.execute(
                insert.values(
                    scope=self._scope, key=key, value=bytes(value), updated_at=self._clock()
                ).on_conflict_do_update(
                    index_elements=["scope", "key"],
                    set_={"value": insert.excluded.value, "updated_at": insert.excluded.updated_at},
                )
            )
            if owned:
                session.commit()

    def put_if_absent(self, key: str, value: bytes) -> bytes | None:
        self._check(key)
        with self._unit() as (session, owned):
            inserted = session.execute(
                self._insert(session)
                .values(scope=self._scope, key=key, value=bytes(value), updated_at=self._clock())
                .on_conflict_do_nothing()
                .returning(ConnectorStateEntry.key)
            ).first()
            if owned:
                session.commit()
            if inserted is not None:
                return None
        existing = self.get(key)
        return existing if existing is not None else b""

    def delete(self, key: str) -> bool:
        with self._unit() as (session, owned):
            result = session.execute(
                delete(ConnectorStateEntry).where(
                    ConnectorStateEntry.scope == self._scope, ConnectorStateEntry.key == key
                )
            )
            if owned:
                session.commit()
            return bool(getattr(result, "rowcount", 0))

    def scan(self, prefix: str, *, after: str | None = None, limit: int = 1000) -> list[tuple[str, bytes]]:
        stmt = select(ConnectorStateEntry.key, ConnectorStateEntry.value).where(
            ConnectorStateEntry.scope == self._scope,
            ConnectorStateEntry.key.startswith(prefix, autoescape=True),
        )
        if after is not None:
            stmt = stmt.where(ConnectorStateEntry.key > after)
        with self._unit() as (session, _):
            return [(k, v) for k, v in session.execute(stmt.order_by(ConnectorStateEntry.key).limit(limit))]
