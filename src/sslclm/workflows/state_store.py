"""The database-backed ``StateStore`` every connector instance gets (shared by all worker processes)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

from sslclm.core.clock import Clock, utcnow
from sslclm.errors import ConnectorError
from sslclm.workflows import pg_batch
from sslclm.workflows.models import ConnectorStateEntry

MAX_KEY = 200

# (scope, session): while set, the store of that scope works inside the session's transaction.
_joined: ContextVar[tuple[str, Session, WriteBehind | None] | None] = ContextVar(
    "sslclm_joined_state", default=None
)


class StateConflictError(ConnectorError):
    """A deferred "create once" write found its key taken: the step is tried again, and then sees it."""

    def __init__(self, keys: int) -> None:
        super().__init__(f"{keys} connector state entr(y/ies) were written concurrently", retryable=True)


@dataclass
class WriteBehind:
    """Deferred ``put_if_absent`` writes of a joined batch, flushed as one multi-row insert.

    Within one step's transaction, a key created by this batch is served from here; one created by
    someone else in the meantime makes the flush fail with :class:`StateConflictError`, which rolls
    the whole step back (a retried step then finds the other writer's value, as without deferral).
    """

    pending: dict[str, bytes] = field(default_factory=dict)


@contextmanager
def state_in_transaction(scope: str, session: Session, *, write_behind: bool = False) -> Iterator[None]:
    """Runs the state calls of connector ``scope`` inside ``session``'s transaction (this thread only).

    For a connector whose state is the platform's own data and that calls nothing outside (the
    built-in CA): its writes then commit with the job step that made them, or not at all, and cost
    no transaction of their own. Never for a connector that talks to a remote system, whose state
    (an order placed at an ACME server) must survive the step failing.
    With ``write_behind`` (a batch of calls, such as a batch of renewals), ``put_if_absent`` writes
    are collected and inserted together when the block ends without an error.
    """
    deferred = WriteBehind() if write_behind else None
    token = _joined.set((scope, session, deferred))
    try:
        yield
        if deferred is not None and deferred.pending:
            _flush(scope, session, deferred)
    finally:
        _joined.reset(token)


# On SQLite the deferred writes go to the driver's executemany as they are (PostgreSQL takes them
# as arrays in one statement, see pg_batch): a multi-row VALUES statement costs more to parse than
# the inserts themselves.
_FLUSH = (
    "INSERT INTO connector_state (scope, key, value, updated_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (scope, key) DO NOTHING"
)


def _flush(scope: str, session: Session, deferred: WriteBehind) -> None:
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        inserted = pg_batch.insert_state(session, scope, deferred.pending, utcnow())
        if inserted != len(deferred.pending):
            raise StateConflictError(len(deferred.pending) - inserted)
        deferred.pending.clear()
        return
    # Stored as naive UTC, as the UTCDateTime column type does; SQLite keeps SQLAlchemy's text form.
    now = utcnow().replace(tzinfo=None)
    stamp = now.strftime("%Y-%m-%d %H:%M:%S.%f")
    rows = [(scope, key, value, stamp) for key, value in deferred.pending.items()]
    inserted = connection.exec_driver_sql(_FLUSH, rows).rowcount
    if inserted != len(rows):
        raise StateConflictError(len(rows) - inserted)
    deferred.pending.clear()


@dataclass(frozen=True)
class _Statements:
    get: Any
    get_many: Any
    put: Any
    put_if_absent: Any
    delete: Any


@cache
def _statements(dialect: str) -> _Statements:
    """Built once per dialect: the connector state is read and written on every issuance."""
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(ConnectorStateEntry)
    same = (ConnectorStateEntry.scope == bindparam("b_scope")) & (
        ConnectorStateEntry.key == bindparam("b_key")
    )
    return _Statements(
        get=select(ConnectorStateEntry.value).where(same),
        get_many=select(ConnectorStateEntry.key, ConnectorStateEntry.value).where(
            ConnectorStateEntry.scope == bindparam("b_scope"),
            ConnectorStateEntry.key.in_(bindparam("b_keys", expanding=True)),
        ),
        put=insert.on_conflict_do_update(
            index_elements=["scope", "key"],
            set_={"value": insert.excluded.value, "updated_at": insert.excluded.updated_at},
        ),
        put_if_absent=insert.on_conflict_do_nothing().returning(ConnectorStateEntry.key),
        delete=delete(ConnectorStateEntry).where(same),
    )


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

    def _deferred(self) -> WriteBehind | None:
        joined = _joined.get()
        return joined[2] if joined is not None and joined[0] == self._scope else None

    @contextmanager
    def _unit(self) -> Iterator[tuple[Connection, _Statements, Session | None]]:
        """Where to work, the statements for it, and the session to commit when this call owns it."""
        joined = self._joined_session()
        if joined is not None:
            connection = joined.connection()
            yield connection, _statements(connection.dialect.name), None
            return
        with self._sessions() as session:
            connection = session.connection()
            yield connection, _statements(connection.dialect.name), session

    def _row(self, key: str, value: bytes) -> dict[str, Any]:
        return {"scope": self._scope, "key": key, "value": bytes(value), "updated_at": self._clock()}

    def get(self, key: str) -> bytes | None:
        deferred = self._deferred()
        if deferred is not None and key in deferred.pending:
            return deferred.pending[key]
        with self._unit() as (connection, sql, _):
            found: bytes | None = connection.execute(
                sql.get, {"b_scope": self._scope, "b_key": key}
            ).scalar_one_or_none()
            return found

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        deferred = self._deferred()
        found = {key: deferred.pending[key] for key in keys if key in deferred.pending} if deferred else {}
        wanted = [key for key in keys if key not in found]
        if not wanted:
            return found
        with self._unit() as (connection, sql, _):
            if connection.dialect.name == "postgresql":
                found.update(pg_batch.select_state(connection, self._scope, wanted))
                return found
            for start in range(0, len(wanted), 500):
                rows = connection.execute(
                    sql.get_many, {"b_scope": self._scope, "b_keys": wanted[start : start + 500]}
                )
                found.update((str(key), bytes(value)) for key, value in rows)
        return found

    def put(self, key: str, value: bytes) -> None:
        self._check(key)
        with self._unit() as (connection, sql, owned):
            connection.execute(sql.put, self._row(key, value))
            if owned is not None:
                owned.commit()

    def put_if_absent(self, key: str, value: bytes) -> bytes | None:
        self._check(key)
        deferred = self._deferred()
        if deferred is not None:
            # Optimistic: the flush at the end of the batch checks that nobody else took the key.
            if key in deferred.pending:
                return deferred.pending[key]
            deferred.pending[key] = bytes(value)
            return None
        with self._unit() as (connection, sql, owned):
            inserted = connection.execute(sql.put_if_absent, self._row(key, value)).first()
            if owned is not None:
                owned.commit()
            if inserted is not None:
                return None
        existing = self.get(key)
        return existing if existing is not None else b""

    def delete(self, key: str) -> bool:
        deferred = self._deferred()
        if deferred is not None and deferred.pending.pop(key, None) is not None:
            return True
        with self._unit() as (connection, sql, owned):
            result = connection.execute(sql.delete, {"b_scope": self._scope, "b_key": key})
            if owned is not None:
                owned.commit()
            return bool(getattr(result, "rowcount", 0))

    def scan(self, prefix: str, *, after: str | None = None, limit: int = 1000) -> list[tuple[str, bytes]]:
        stmt = select(ConnectorStateEntry.key, ConnectorStateEntry.value).where(
            ConnectorStateEntry.scope == self._scope,
            ConnectorStateEntry.key.startswith(prefix, autoescape=True),
        )
        if after is not None:
            stmt = stmt.where(ConnectorStateEntry.key > after)
        deferred, session = self._deferred(), self._joined_session()
        if deferred is not None and session is not None and deferred.pending:
            _flush(self._scope, session, deferred)  # a scan sees what this batch has written
        with self._unit() as (connection, _, _owned):
            return [
                (k, v) for k, v in connection.execute(stmt.order_by(ConnectorStateEntry.key).limit(limit))
            ]
