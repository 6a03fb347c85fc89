"""The database-backed ``StateStore`` every connector instance gets (shared by all worker processes)."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from sslclm.core.clock import Clock, utcnow
from sslclm.workflows.models import ConnectorStateEntry

MAX_KEY = 200


class DatabaseStateStore:
    """Each call is its own short transaction, so a connector's state survives a crash mid-workflow."""

    def __init__(self, sessions: sessionmaker[Session], scope: str, clock: Clock = utcnow) -> None:
        self._sessions = sessions
        self._scope = scope
        self._clock = clock

    def _check(self, key: str) -> None:
        if not key or len(key) > MAX_KEY:
            raise ValueError(f"state keys are 1-{MAX_KEY} characters")

    def get(self, key: str) -> bytes | None:
        with self._sessions() as session:
            return session.execute(
                select(ConnectorStateEntry.value).where(
                    ConnectorStateEntry.scope == self._scope, ConnectorStateEntry.key == key
                )
            ).scalar_one_or_none()

    def put(self, key: str, value: bytes) -> None:
        self._check(key)
        with self._sessions() as session:
            insert = (
                postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
            )(ConnectorStateEntry)
            session.execute(
                insert.values(
                    scope=self._scope, key=key, value=bytes(value), updated_at=self._clock()
                ).on_conflict_do_update(
                    index_elements=["scope", "key"],
                    set_={"value": insert.excluded.value, "updated_at": insert.excluded.updated_at},
                )
            )
            session.commit()

    def put_if_absent(self, key: str, value: bytes) -> bytes | None:
        self._check(key)
        with self._sessions() as session:
            insert = (
                postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
            )(ConnectorStateEntry)
            inserted = session.execute(
                insert.values(scope=self._scope, key=key, value=bytes(value), updated_at=self._clock())
                .on_conflict_do_nothing()
                .returning(ConnectorStateEntry.key)
            ).first()
            session.commit()
            if inserted is not None:
                return None
        existing = self.get(key)
        return existing if existing is not None else b""

    def delete(self, key: str) -> bool:
        with self._sessions() as session:
            result = session.execute(
                delete(ConnectorStateEntry).where(
                    ConnectorStateEntry.scope == self._scope, ConnectorStateEntry.key == key
                )
            )
            session.commit()
            return bool(getattr(result, "rowcount", 0))

    def scan(self, prefix: str, *, after: str | None = None, limit: int = 1000) -> list[tuple[str, bytes]]:
        stmt = select(ConnectorStateEntry.key, ConnectorStateEntry.value).where(
            ConnectorStateEntry.scope == self._scope,
            ConnectorStateEntry.key.startswith(prefix, autoescape=True),
        )
        if after is not None:
            stmt = stmt.where(ConnectorStateEntry.key > after)
        with self._sessions() as session:
            return [(k, v) for k, v in session.execute(stmt.order_by(ConnectorStateEntry.key).limit(limit))]
