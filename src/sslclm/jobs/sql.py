"""Portable SQL pieces of the job tables: insert-or-ignore, skip-locked picking, prebuilt statements.

SQLite and PostgreSQL both speak ``INSERT ... ON CONFLICT DO NOTHING`` and ``UPDATE ... RETURNING``;
only row locking differs (SQLite has one write lock for the whole database, so it needs none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Insert,
    Select,
    Table,
    TextClause,
    Update,
    bindparam,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import InstrumentedAttribute, Session

from sslclm.errors import InvalidInputError
from sslclm.jobs.models import ACTIVE_WHERE, READY_WHERE, Job, JobEvent, JobStatus


def dialect_insert(session: Session, model: type[Any]) -> Any:
    """The dialect's own ``insert`` (the one with ``on_conflict_do_nothing``)."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(model)
    if name == "sqlite":
        return sqlite.insert(model)
    raise InvalidInputError(f"unsupported database dialect '{name}'")


def insert_ignoring_conflict(
    session: Session,
    model: type[Any],
    values: Mapping[str, Any],
    conflict_columns: Sequence[str],
    *,
    returning: InstrumentedAttribute[Any],
    where: ColumnElement[bool] | TextClause | None = None,
) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING RETURNING``: the new row's value, or None on a conflict."""
    statement = (
        dialect_insert(session, model)
        .values(dict(values))
        .on_conflict_do_nothing(index_elements=list(conflict_columns), index_where=where)
        .returning(returning)
    )
    return session.execute(statement).scalar_one_or_none()


def locked_ids(
    dialect: str, column: ColumnElement[int] | InstrumentedAttribute[int], candidates: Select[Any]
) -> ColumnElement[bool]:
    """``column IN (candidates)``; on PostgreSQL the candidates are row-locked, skipping locked rows."""
    if dialect == "postgresql":
        # MATERIALIZED: the planner must run the locking SELECT once, not re-run it per outer row.
        picked = candidates.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        return column.in_(select(picked.c[0]))
    return column.in_(candidates)


def _table(model: type[Any]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


@cache
def held_update(columns: tuple[str, ...]) -> Update:
    """The compare-and-set of a held job (id, lease token, running), built once per set of columns.

    Built once and reused, the statement's compiled form stays in SQLAlchemy's cache: this runs
    after every step of every job, and rebuilding it cost more than the database round trip.
    """
    table = _table(Job)
    return (
        update(table)
        .where(
            table.c.id == bindparam("_id"),
            table.c.lease_owner == bindparam("_owner"),
            table.c.status == JobStatus.RUNNING.value,
        )
        .values({name: bindparam(name, type_=table.c[name].type) for name in columns})
        .returning(table.c.cancel_requested)
    )


@cache
def claim_statement(dialect: str) -> Update:
    """Leases a batch of ready jobs (parameters: now, kinds, limit, owner, expires), built once."""
    table = _table(Job)
    when = table.c.run_after.type
    candidates = (
        select(table.c.id)
        # The status test is literal SQL, the partial index's own predicate: with a bound parameter
        # a prepared (generic) plan could not prove the index applies and would scan the table.
        .where(
            READY_WHERE,
            table.c.run_after <= bindparam("now", type_=when),
            table.c.kind.in_(bindparam("kinds", expanding=True)),
        )
        .order_by(table.c.priority.desc(), table.c.run_after, table.c.id)
        .limit(bindparam("limit"))
    )
    return (
        update(table)
        .where(locked_ids(dialect, table.c.id, candidates))
        .values(
            status=JobStatus.RUNNING.value,
            lease_owner=bindparam("owner"),
            lease_expires_at=bindparam("expires", type_=when),
            attempts=table.c.attempts + 1,
            updated_at=bindparam("updated", type_=when),
        )
        .returning(
            table.c.id,
            table.c.kind,
            table.c.step,
            table.c.payload,
            table.c.state,
            table.c.attempts,
            table.c.max_attempts,
            table.c.target,
            table.c.cancel_requested,
            table.c.priority,
        )
    )


@cache
def event_insert() -> Insert:
    return insert(_table(JobEvent))


# One statement for any number of jobs on PostgreSQL: the rows travel as a few arrays, so the
# driver parses a short statement once instead of one placeholder per value (14 per job).
_PG_BULK_INSERT = text(
    """
    INSERT INTO jobs (kind, payload, status, step, state, attempts, max_attempts, priority, run_after,
                      cancel_requested, dedupe_key, target, created_at, updated_at)
    SELECT t.kind, CAST(t.payload AS json), :status, :step, CAST('{}' AS json), 0, t.max_attempts,
           t.priority, t.run_after, false, t.dedupe_key, t.target, :now, :now
    FROM unnest(CAST(:kinds AS text[]), CAST(:payloads AS text[]), CAST(:max_attempts AS integer[]),
                CAST(:priorities AS integer[]), CAST(:run_afters AS timestamp[]),
                CAST(:dedupe_keys AS text[]), CAST(:targets AS text[]))
         WITH ORDINALITY AS t(kind, payload, max_attempts, priority, run_after, dedupe_key, target, n)
    ORDER BY t.n
    ON CONFLICT (dedupe_key) WHERE status IN ('queued', 'running', 'waiting') DO NOTHING
    RETURNING id
    """
)


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


def insert_jobs(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Inserts job rows (all with the same ``created_at``), skipping active dedupe keys; returns how many."""
    if not rows:
        return 0
    if session.get_bind().dialect.name != "postgresql":
        statement = (
            dialect_insert(session, Job)
            .on_conflict_do_nothing(index_elements=["dedupe_key"], index_where=ACTIVE_WHERE)
            .returning(Job.id)
        )
        return len(session.execute(statement, list(rows)).all())
    first = rows[0]
    params = {
        "status": first["status"],
        "step": first["step"],
        "now": _naive_utc(first["created_at"]),
        "kinds": [row["kind"] for row in rows],
        "payloads": [orjson.dumps(row["payload"]).decode() for row in rows],
        "max_attempts": [row["max_attempts"] for row in rows],
        "priorities": [row["priority"] for row in rows],
        "run_afters": [_naive_utc(row["run_after"]) for row in rows],
        "dedupe_keys": [row["dedupe_key"] for row in rows],
        "targets": [row["target"] for row in rows],
    }
    return len(session.execute(_PG_BULK_INSERT, params).all())
