"""Policy inputs read and verdicts written straight through the database driver.

A full evaluation reads every live certificate and writes millions of violations. SQLAlchemy's
result processing (JSON and datetime columns) and bind processing cost more per row than the checks
themselves, so the evaluator talks to the DBAPI connection under the session's own transaction: rows
come back as plain tuples decoded here once per value, and new rows go out with ``executemany``
(SQLite) or ``COPY`` (PostgreSQL).

On PostgreSQL a list of ids is bound as one array (``= ANY(%s::bigint[])``) rather than a long
``IN (...)`` list: the statement stays short, so psycopg can prepare it once instead of the server
parsing several kilobytes of placeholders on every call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.orm import Session

# Keeps SQLite's IN (...) lists well under its bound-parameter limit.
IN_CHUNK = 900


@dataclass(frozen=True, slots=True)
class IdRange:
    """Certificate ids ``after < id <= last``: one index range instead of a list of probes."""

    after: int
    last: int


Ids = Sequence[int] | IdRange


def _sqlite_timestamp(value: str | None) -> datetime | None:
    # UTCDateTime stores naive UTC text ("YYYY-MM-DD HH:MM:SS.ffffff"); parsing it with the offset
    # appended is several times cheaper than replacing the tzinfo of the parsed value.
    return None if value is None else datetime.fromisoformat(value + "+00:00")


def _postgresql_timestamp(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def _sqlite_json(value: str | None) -> Any:
    return None if value is None else orjson.loads(value)


def _postgresql_json(value: Any) -> Any:
    return value  # psycopg has already parsed json columns


class Driver:
    """The session's DBAPI connection, with the few statements the evaluator needs."""

    timestamp: Callable[[Any], datetime | None]
    json: Callable[[Any], Any]

    def __init__(self, session: Session) -> None:
        # Reads below bypass the ORM, so changes still pending in the session must reach the database.
        session.flush()
        self.postgresql = session.get_bind().dialect.name == "postgresql"
        self.mark = "%s" if self.postgresql else "?"
        if self.postgresql:
            self.timestamp, self.json = _postgresql_timestamp, _postgresql_json
        else:
            self.timestamp, self.json = _sqlite_timestamp, _sqlite_json
        self._connection: Any = session.connection().connection.dbapi_connection

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cursor = self._connection.cursor()
        try:
            cursor.execute(sql, params)
            rows: list[tuple[Any, ...]] = cursor.fetchall()
            return rows
        finally:
            cursor.close()

    def filters(self, column: str, ids: Ids) -> Iterator[tuple[str, list[Any]]]:
        """``(condition, parameters)`` pairs that together select ``column`` in ``ids``."""
        mark = self.mark
        if isinstance(ids, IdRange):
            yield f"{column} > {mark} AND {column} <= {mark}", [ids.after, ids.last]
            return
        yield from self.matching(column, ids, "bigint")

    def matching(self, column: str, values: Sequence[Any], kind: str) -> Iterator[tuple[str, list[Any]]]:
        """Conditions selecting ``column`` among ``values`` (of SQL type ``kind`` on PostgreSQL)."""
        for start in range(0, len(values), IN_CHUNK):
            chunk = list(values[start : start + IN_CHUNK])
            if self.postgresql:
                yield f"{column} = ANY(%s::{kind}[])", [chunk]
            else:
                yield f"{column} IN ({', '.join('?' * len(chunk))})", chunk

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        """Inserts rows known to be new, values already in the form the columns store."""
        if not rows:
            return
        names = ", ".join(f'"{c}"' for c in columns)
        cursor = self._connection.cursor()
        try:
            # Table and column names are the evaluator's constants; the values never enter the SQL.
            if self.postgresql:
                with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
            else:
                marks = ", ".join("?" * len(columns))
                cursor.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)  # noqa: S608
        finally:
            cursor.close()


def stored_timestamp(value: datetime) -> str:
    """A datetime as ``UTCDateTime`` columns hold it (naive UTC text), for the driver directly."""
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}"
