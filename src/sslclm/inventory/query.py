"""Searching, filtering, sorting and keyset pagination over the inventory.

Pages are found by key (the last row's sort value and id), never by OFFSET, so a page deep in a
million rows costs what the first one does. Listing selects only summary columns; DER and the
search text stay on disk.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import ColumnElement, Select, and_, bindparam, exists, func, or_, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import KeyedColumnElement

from sslclm.core.clock import as_utc
from sslclm.errors import InvalidInputError
from sslclm.inventory.models import Certificate, CertificateTag, Issuer, IssuerCertificateCount, Sighting
from sslclm.inventory.search import (
    indexable,
    like_pattern,
    text_condition,
)

MAX_PAGE = 1000


class Status(StrEnum):
    VALID = "valid"
    EXPIRING = "expiring"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    REVOKED = "revoked"
    SUPERSEDED = "superseded"


class CertificateFilter(BaseModel):
    """The filters shared by the API, the CLI and exports."""

    model_config = ConfigDict(extra="forbid")

    q: str | None = Field(
        default=None,
        max_length=256,
        description=(
            "Text in the subject (CN), SANs or issuer; or the start of the serial or SHA-256 "
            "fingerprint (hex)."
        ),
    )
    status: list[Status] = Field(default_factory=list)
    expires_after: datetime | None = None
    expires_before: datetime | None = None
    issuer: str | None = Field(default=None, max_length=512, description="Text in the issuer name.")
    issuer_id: int | None = None
    key_algorithm: str | None = Field(default=None, max_length=16)
    key_size: int | None = Field(default=None, ge=1)
    min_key_size: int | None = Field(default=None, ge=1)
    max_key_size: int | None = Field(default=None, ge=1)
    signature_algorithm: str | None = Field(default=None, max_length=64)
    owner: str | None = Field(default=None, max_length=255)
    team: str | None = Field(default=None, max_length=255)
    environment: str | None = Field(default=None, max_length=64)
    tag: str | None = Field(default=None, max_length=128)
    source: str | None = Field(default=None, max_length=64)
    include_archived: bool = False

    @field_validator("expires_after", "expires_before")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return None if value is None else as_utc(value)


# Sort keys users may ask for, and the column each orders by.
SORT_COLUMNS: dict[str, Any] = {
    "not_after": Certificate.not_after,
    "expiry": Certificate.not_after,
    "not_before": Certificate.not_before,
    "common_name": Certificate.common_name,
    "issuer": Issuer.dn,
    "serial": Certificate.serial,
    "key_algorithm": Certificate.key_algorithm,
    "key_size": Certificate.key_size,
    "signature_algorithm": Certificate.signature_algorithm,
    "owner": Certificate.owner,
    "team": Certificate.team,
    "environment": Certificate.environment,
    "source": Certificate.source,
    "created_at": Certificate.created_at,
    "updated_at": Certificate.updated_at,
    "id": Certificate.id,
}
DATETIME_SORTS = frozenset({"not_after", "expiry", "not_before", "created_at", "updated_at"})

SUMMARY_COLUMNS = (
    Certificate.id,
    Certificate.fingerprint_sha256,
    Certificate.common_name,
    Certificate.subject,
    Issuer.dn.label("issuer"),
    Certificate.issuer_id,
    Certificate.serial,
    Certificate.not_before,
    Certificate.not_after,
    Certificate.key_algorithm,
    Certificate.key_size,
    Certificate.key_curve,
    Certificate.signature_algorithm,
    Certificate.sans,
    Certificate.owner,
    Certificate.team,
    Certificate.environment,
    Certificate.source,
    Certificate.is_ca,
    Certificate.self_signed,
    Certificate.has_private_key,
    Certificate.revoked_at,
    Certificate.superseded_by_id,
    Certificate.archived_at,
    Certificate.created_at,
    Certificate.updated_at,
)


def _live() -> ColumnElement[bool]:
    return and_(Certificate.revoked_at.is_(None), Certificate.superseded_by_id.is_(None))


def status_condition(status: Status, now: datetime, window: timedelta) -> ColumnElement[bool]:
    """The SQL for one lifecycle status; the precedence matches ``status_of``."""
    return _status_between(status, now, now + window)


def _status_between(status: Status, now: Any, soon: Any) -> ColumnElement[bool]:
    """``status_condition`` with the expiry window's end given: datetimes or bound parameters."""
    if status is Status.REVOKED:
        return Certificate.revoked_at.is_not(None)
    if status is Status.SUPERSEDED:
        return and_(Certificate.revoked_at.is_(None), Certificate.superseded_by_id.is_not(None))
    if status is Status.EXPIRED:
        return and_(_live(), Certificate.not_after < now)
    if status is Status.NOT_YET_VALID:
        return and_(_live(), Certificate.not_after >= now, Certificate.not_before > now)
    if status is Status.EXPIRING:
        return and_(
            _live(), Certificate.not_after >= now, Certificate.not_after < soon, Certificate.not_before <= now
        )
    return and_(_live(), Certificate.not_after >= soon, Certificate.not_before <= now)


def status_of(
    *,
    not_before: datetime,
    not_after: datetime,
    revoked_at: datetime | None,
    superseded_by_id: int | None,
    now: datetime,
    window: timedelta,
) -> Status:
    if revoked_at is not None:
        return Status.REVOKED
    if superseded_by_id is not None:
        return Status.SUPERSEDED
    not_after = as_utc(not_after)
    if not_after < now:
        return Status.EXPIRED
    if as_utc(not_before) > now:
        return Status.NOT_YET_VALID
    return Status.EXPIRING if not_after < now + window else Status.VALID


# How long a search for a term under three characters may scan before it gives up: such a term has
# no trigram, so when it matches few rows the scan would read the whole inventory.
SHORT_TERM_SECONDS = 2.0
SHORT_TERM_MESSAGE = (
    "q: a term of {n} character(s) cannot use the search index and matches too few certificates to "
    "find them quickly; type at least 3 characters"
)


@contextlib.contextmanager
def _bounded_scan(session: Session, q: str | None) -> Iterator[None]:
    """Stops the statements run inside after ``SHORT_TERM_SECONDS`` when ``q`` is a short term.

    The outcome is exact or a clear 422, never a partial page. SQLite's progress handler aborts the
    statement; PostgreSQL's ``statement_timeout`` does, inside a savepoint so the request's
    transaction stays usable.
    """
    if not q or indexable(q.lower()):
        yield
        return
    refused = InvalidInputError(SHORT_TERM_MESSAGE.format(n=len(q)), field="q")
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        raw = connection.connection.dbapi_connection
        deadline = time.monotonic() + SHORT_TERM_SECONDS
        # Called every 10,000 virtual machine steps; a true answer interrupts the statement.
        raw.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)  # type: ignore[union-attr]
        try:
            yield
        except OperationalError as exc:
            if "interrupted" in str(exc.orig):
                raise refused from None
            raise
        finally:
            raw.set_progress_handler(None, 0)  # type: ignore[union-attr]
        return
    # On the connection: rolling back to it also undoes the SET LOCAL.
    savepoint = connection.begin_nested()
    try:
        connection.execute(text(f"SET LOCAL statement_timeout = {int(SHORT_TERM_SECONDS * 1000)}"))
        yield
    except OperationalError as exc:
        savepoint.rollback()
        if getattr(exc.orig, "sqlstate", None) == "57014":  # query_canceled
            raise refused from None
        raise
    except BaseException:
        savepoint.rollback()
        raise
    else:
        connection.execute(text("SET LOCAL statement_timeout TO DEFAULT"))
        savepoint.commit()


def filter_conditions(
    session: Session, flt: CertificateFilter, now: datetime, window: timedelta
) -> list[ColumnElement[bool]]:
    return _conditions(session, flt, now, now + window)


def _conditions(session: Session, flt: CertificateFilter, now: Any, soon: Any) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = []
    if not flt.include_archived:
        conds.append(Certificate.archived_at.is_(None))
    if flt.q:
        conds.append(text_condition(session, flt.q))
    if flt.status:
        conds.append(or_(*(_status_between(s, now, soon) for s in flt.status)))
    if flt.expires_after is not None:
        conds.append(Certificate.not_after >= flt.expires_after)
    if flt.expires_before is not None:
        conds.append(Certificate.not_after < flt.expires_before)
    if flt.issuer_id is not None:
        conds.append(Certificate.issuer_id == flt.issuer_id)
    if flt.issuer:
        matching = select(Issuer.id).where(func.lower(Issuer.dn).like(like_pattern(flt.issuer), escape="\\"))
        conds.append(Certificate.issuer_id.in_(matching.scalar_subquery()))
    if flt.key_algorithm:
        conds.append(func.upper(Certificate.key_algorithm) == flt.key_algorithm.upper())
    if flt.key_size is not None:
        conds.append(Certificate.key_size == flt.key_size)
    if flt.min_key_size is not None:
        conds.append(Certificate.key_size >= flt.min_key_size)
    if flt.max_key_size is not None:
        conds.append(Certificate.key_size <= flt.max_key_size)
    if flt.signature_algorithm:
        conds.append(Certificate.signature_algorithm == flt.signature_algorithm)
    for column, value in (
        (Certificate.owner, flt.owner),
        (Certificate.team, flt.team),
        (Certificate.environment, flt.environment),
    ):
        if value:
            conds.append(column == value)
    if flt.tag:
        conds.append(
            exists().where(CertificateTag.certificate_id == Certificate.id, CertificateTag.tag == flt.tag)
        )
    if flt.source:
        seen_by = exists().where(Sighting.certificate_id == Certificate.id, Sighting.source == flt.source)
        conds.append(or_(Certificate.source == flt.source, seen_by))
    return conds


@dataclass(frozen=True, slots=True)
class Cursor:
    sort: str
    descending: bool
    value: Any
    last_id: int

    def encode(self) -> str:
        value = self.value.isoformat() if isinstance(self.value, datetime) else self.value
        raw = orjson.dumps([self.sort, self.descending, value, self.last_id])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, sort: str, descending: bool) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            cur_sort, cur_desc, value, last_id = orjson.loads(raw)
            if not isinstance(last_id, int):
                raise ValueError("id")
            if sort in DATETIME_SORTS and value is not None:
                value = as_utc(datetime.fromisoformat(value))
        except (binascii.Error, ValueError, TypeError, orjson.JSONDecodeError):
            raise InvalidInputError(
                "cursor is malformed; pass next_cursor from the previous page", field="cursor"
            ) from None
        if cur_sort != sort or bool(cur_desc) != descending:
            raise InvalidInputError("cursor belongs to another sort order", field="cursor")
        return cls(sort, descending, value, last_id)


def _after_cursor(column: Any, cursor: Cursor, nulls_smallest: bool) -> ColumnElement[bool]:
    """Rows strictly after the cursor in (column, id) order, with the backend's native NULL order.

    The cursor's value and id are bound parameters (:func:`cursor_params` gives them), so one
    statement serves every page of a listing.
    """
    last_id = bindparam(AFTER_ID, type_=Certificate.id.type)
    id_after = Certificate.id < last_id if cursor.descending else Certificate.id > last_id
    # Whether NULLs come after every value in this direction.
    nulls_after = nulls_smallest == cursor.descending
    if cursor.value is None:
        if nulls_after:
            return and_(column.is_(None), id_after)
        return or_(column.is_not(None), and_(column.is_(None), id_after))
    value = bindparam(AFTER_VALUE, type_=column.type)
    beyond = column < value if cursor.descending else column > value
    # The redundant bound (col >= v, or col <= v descending) lets both backends seek the (col, id)
    # index to the cursor instead of scanning from the start and filtering.
    bound = column <= value if cursor.descending else column >= value
    cond = and_(bound, or_(beyond, and_(column == value, id_after)))
    # Only a nullable column needs the NULL branch; on a NOT NULL one it would stop PostgreSQL's seek.
    nullable = getattr(getattr(column, "expression", column), "nullable", True)
    return or_(cond, column.is_(None)) if nulls_after and nullable else cond


def cursor_params(cursor: Cursor | None) -> dict[str, Any]:
    return {} if cursor is None else {AFTER_VALUE: cursor.value, AFTER_ID: cursor.last_id}


def _sort_column(sort: str) -> KeyedColumnElement[Any]:
    try:
        column: KeyedColumnElement[Any] = SORT_COLUMNS[sort]
    except KeyError:
        allowed = ", ".join(sorted(SORT_COLUMNS))
        raise InvalidInputError(f"cannot sort by '{sort}'; choose one of {allowed}", field="sort") from None
    return column


def build_select(
    session: Session,
    flt: CertificateFilter,
    *,
    sort: str,
    descending: bool,
    cursor: Cursor | None,
    now: Any,
    soon: Any,
    columns: Sequence[Any] = SUMMARY_COLUMNS,
) -> Select[Any]:
    """The listing's SELECT; ``now`` and ``soon`` (the expiry window's end) may be bound parameters."""
    column = _sort_column(sort)
    stmt = select(*columns).join(Issuer, Issuer.id == Certificate.issuer_id)
    conds = _conditions(session, flt, now, soon)
    if cursor is not None:
        nulls_smallest = session.get_bind().dialect.name != "postgresql"
        conds.append(_after_cursor(column, cursor, nulls_smallest))
    if conds:
        stmt = stmt.where(*conds)
    if sort == "id":
        order = [Certificate.id.desc() if descending else Certificate.id.asc()]
    else:
        order = [column.desc(), Certificate.id.desc()] if descending else [column.asc(), Certificate.id.asc()]
    return stmt.order_by(*order)


# Bound-parameter names of what changes from one request of a listing to the next.
LIST_NOW = "list_now"
LIST_SOON = "list_soon"
AFTER_VALUE = "after_value"
AFTER_ID = "after_id"
_LIST_STATEMENTS_MAX = 512
# (backend, filter, sort, direction, cursor shape, limit) -> SELECT. Building a statement and
# mapping a new one's columns onto the cached compiled form cost more CPU than running the query
# on a busy API node; the same statement object skips both. Not for text search, whose
# condition depends on the term.
_list_statements: dict[tuple[Any, ...], Select[Any]] = {}


def _list_statement(
    session: Session,
    flt: CertificateFilter,
    *,
    sort: str,
    descending: bool,
    cursor: Cursor | None,
    limit: int,
) -> Select[Any]:
    key: tuple[Any, ...] | None = None
    if not flt.q:
        shape = None if cursor is None else cursor.value is None
        key = (session.get_bind().dialect.name, flt.model_dump_json(), sort, descending, shape, limit)
        cached = _list_statements.get(key)
        if cached is not None:
            return cached
    columns = (*SUMMARY_COLUMNS, HAS_TAGS)
    stmt = build_select(
        session,
        flt,
        sort=sort,
        descending=descending,
        cursor=cursor,
        now=bindparam(LIST_NOW),
        soon=bindparam(LIST_SOON),
        columns=columns,
    ).limit(limit + 1)
    if key is not None:
        if len(_list_statements) >= _LIST_STATEMENTS_MAX:
            _list_statements.clear()  # bounded; the listings in use come straight back
        _list_statements[key] = stmt
    return stmt


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


# Whether a listed certificate has any tag: most have none, and then the page needs no tags query.
HAS_TAGS = exists().where(CertificateTag.certificate_id == Certificate.id).label("has_tags")


def summarize(row: Any, now: datetime, window: timedelta, tags: Sequence[str] = ()) -> dict[str, Any]:
    item = dict(row._mapping)
    item.pop("has_tags", None)
    not_after = as_utc(item["not_after"])
    item["status"] = status_of(
        not_before=item["not_before"],
        not_after=not_after,
        revoked_at=item["revoked_at"],
        superseded_by_id=item["superseded_by_id"],
        now=now,
        window=window,
    ).value
    item["days_left"] = (not_after - now).days
    item["archived"] = item.pop("archived_at") is not None
    item["tags"] = list(tags)
    return item


def tags_for(session: Session, ids: Sequence[int]) -> dict[int, list[str]]:
    tags: dict[int, list[str]] = {}
    if ids:
        for cert_id, tag in session.execute(
            select(CertificateTag.certificate_id, CertificateTag.tag)
            .where(CertificateTag.certificate_id.in_(ids))
            .order_by(CertificateTag.tag)
        ):
            tags.setdefault(cert_id, []).append(tag)
    return tags


def list_certificates(
    session: Session,
    flt: CertificateFilter,
    *,
    sort: str = "not_after",
    descending: bool = False,
    limit: int = 50,
    cursor: str | None = None,
    now: datetime,
    expiring_days: int,
    bounded: bool = True,
) -> Page:
    """One page of matching certificates.

    ``bounded``: a short search term's scan gives up after ``SHORT_TERM_SECONDS`` (interactive
    listing); exports, which stream every page anyway, pass False and wait for the scan.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE}", field="limit")
    window = timedelta(days=expiring_days)
    _sort_column(sort)  # an unknown sort is refused before its cursor is read
    after = Cursor.decode(cursor, sort, descending) if cursor else None
    stmt = _list_statement(session, flt, sort=sort, descending=descending, cursor=after, limit=limit)
    params = {LIST_NOW: now, LIST_SOON: now + window, **cursor_params(after)}
    # Core on the session's connection: the rows are plain tuples, the ORM's loading adds nothing here.
    with _bounded_scan(session, flt.q if bounded else None):
        rows = session.connection().execute(stmt, params).all()
    more = len(rows) > limit
    rows = rows[:limit]
    tagged = [row.id for row in rows if row.has_tags]
    tags = tags_for(session, tagged) if tagged else {}
    items = [summarize(row, now, window, tags.get(row.id, ())) for row in rows]
    next_cursor = None
    if more and rows:
        last = rows[-1]
        value = getattr(last, SORT_COLUMNS[sort].key if sort != "issuer" else "issuer")
        next_cursor = Cursor(sort, descending, value, last.id).encode()
    return Page(items, next_cursor)


def iter_certificates(
    session: Session,
    flt: CertificateFilter,
    *,
    sort: str = "not_after",
    descending: bool = False,
    now: datetime,
    expiring_days: int,
    batch: int = 1000,
) -> Iterator[dict[str, Any]]:
    """Every matching certificate, page by page: memory stays at one page whatever the count."""
    cursor: str | None = None
    while True:
        page = list_certificates(
            session,
            flt,
            sort=sort,
            descending=descending,
            limit=batch,
            cursor=cursor,
            now=now,
            expiring_days=expiring_days,
            bounded=False,
        )
        yield from page.items
        if page.next_cursor is None:
            return
        cursor = page.next_cursor
        session.expunge_all()


GROUPABLE: dict[str, Any] = {
    "issuer": Certificate.issuer_id,
    "key_algorithm": Certificate.key_algorithm,
    "key_size": Certificate.key_size,
    "signature_algorithm": Certificate.signature_algorithm,
    "owner": Certificate.owner,
    "team": Certificate.team,
    "environment": Certificate.environment,
    "source": Certificate.source,
}


def count_by(
    session: Session, field: str, flt: CertificateFilter, *, now: datetime, expiring_days: int
) -> list[dict[str, Any]]:
    """Counts of matching certificates grouped by ``field`` (or by status), largest first."""
    with _bounded_scan(session, flt.q):
        return _count_by(session, field, flt, now=now, expiring_days=expiring_days)


def _count_by(
    session: Session, field: str, flt: CertificateFilter, *, now: datetime, expiring_days: int
) -> list[dict[str, Any]]:
    if field == "issuer" and not flt.model_dump(exclude={"include_archived"}, exclude_defaults=True):
        return _maintained_issuer_counts(session, include_archived=flt.include_archived)
    window = timedelta(days=expiring_days)
    conds = filter_conditions(session, flt, now, window)
    if field == "status":
        counts = []
        for status in Status:
            status_stmt = (
                select(func.count())
                .select_from(Certificate)
                .where(*conds, status_condition(status, now, window))
            )
            counts.append({"key": status.value, "count": session.execute(status_stmt).scalar_one()})
        return [c for c in counts if c["count"]]
    try:
        column = GROUPABLE[field]
    except KeyError:
        allowed = ", ".join(sorted([*GROUPABLE, "status"]))
        raise InvalidInputError(f"cannot group by '{field}'; choose one of {allowed}", field="by") from None
    grouped = (
        select(column.label("key"), func.count().label("count")).where(*conds).group_by(column).subquery()
    )
    if field == "issuer":
        named = select(grouped.c.key, Issuer.dn, grouped.c.count).join(Issuer, Issuer.id == grouped.c.key)
        return [
            {"key": dn, "issuer_id": key, "count": count}
            for key, dn, count in session.execute(named.order_by(grouped.c.count.desc()))
        ]
    plain = select(grouped.c.key, grouped.c.count).order_by(grouped.c.count.desc())
    return [{"key": key, "count": count} for key, count in session.execute(plain)]


def _maintained_issuer_counts(session: Session, *, include_archived: bool) -> list[dict[str, Any]]:
    """Count by issuer without a filter, from the per-issuer counters the triggers keep exact.

    Reads one row per issuer instead of every certificate: constant time in the inventory's size.
    """
    counts = IssuerCertificateCount
    count = counts.live + counts.archived if include_archived else counts.live
    stmt = (
        select(Issuer.id, Issuer.dn, count.label("count"))
        .join(counts, counts.issuer_id == Issuer.id)
        .where(count > 0)
        .order_by(count.desc(), Issuer.id)
    )
    return [
        {"key": dn, "issuer_id": key, "count": number}
        for key, dn, number in session.connection().execute(stmt)
    ]
