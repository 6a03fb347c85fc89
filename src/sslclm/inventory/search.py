"""Free-text search over the inventory, and the background upkeep of its index.

What ``q`` matches (case-insensitive):

- a substring of the subject DN or of any SAN value (``search_text``, kept by the writer);
- a substring of the issuer's DN (the small ``issuers`` table, matched first);
- the start of the serial number or of the SHA-256 fingerprint, in hex, colons and spaces
  ignored (B-tree indexes of their own: hex identifiers are pasted whole or by their start).

The substring match on ``search_text`` goes through a trigram index (migration 0017):
``certificates_search``, an FTS5 table with the trigram tokenizer on SQLite, a ``pg_trgm`` GIN
index on a table of the same name on PostgreSQL. That index is not written by the statement that
inserts a certificate: a trigger queues the id in ``certificates_search_pending`` and the
``inventory.index-search`` job (every minute, and after each import) indexes the queue in bulk,
so a large import is not slowed by tokenising every certificate's text. Search stays exact
meanwhile: the queued certificates are matched by scanning their text, which is quick while the
queue is short and, just after an import of a million certificates, costs a scan until the job
has caught up (about 40 µs a certificate of a core's time).
"""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import ColumnElement, Select, and_, func, or_, select, text, union_all
from sqlalchemy import column as sql_column
from sqlalchemy import table as sql_table
from sqlalchemy.orm import Session

from sslclm.inventory.models import Certificate, Issuer, IssuerCertificateCount
from sslclm.jobs import Done, Next, StepContext, periodic, task

INDEX_SEARCH_TASK = "inventory.index-search"
# Queued certificates indexed per step, each step one transaction (on SQLite about 0.4 s of the
# write lock).
INDEX_CHUNK = 10_000
# The trigram tokenizer indexes three-character slices: shorter literal runs cannot be looked up.
MIN_INDEXED_TERM = 3
# Beyond this many matches a term is common: walking the sort order fills a page sooner than
# collecting (and sorting) every match from the index would.
COMMON_TERM_MATCHES = 5000

_SEARCH = sql_table(
    "certificates_search",
    sql_column("rowid"),
    sql_column("certificate_id"),
    sql_column("search_text"),
)
_PENDING = sql_table("certificates_search_pending", sql_column("certificate_id"))
_HEX = re.compile(r"[0-9a-f]+")
_HEX_NEXT = {a: b for a, b in zip("0123456789abcde", "123456789abcdef", strict=True)}


def like_pattern(term: str) -> str:
    """``%term%`` with LIKE's wildcards and escape character taken literally (escape ``\\``)."""
    escaped = term.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def longest_literal_run(term: str) -> int:
    """The longest run of ``term`` free of LIKE wildcards: what a trigram lookup can use."""
    return max((len(run) for run in re.split(r"[%_\\]", term)), default=0)


def indexable(term: str) -> bool:
    return longest_literal_run(term) >= MIN_INDEXED_TERM


def _hex_prefix(term: str) -> str | None:
    candidate = term.replace(":", "").replace(" ", "")
    return candidate if _HEX.fullmatch(candidate) else None


def _after_prefix(prefix: str) -> str | None:
    """The smallest hex string above every string starting with ``prefix`` (None: no bound)."""
    for position in range(len(prefix) - 1, -1, -1):
        if prefix[position] != "f":
            return prefix[:position] + _HEX_NEXT[prefix[position]]
    return None


def _prefix_conditions(term: str) -> list[ColumnElement[bool]]:
    """Serial and SHA-256 fingerprint starting with ``term``, as index ranges."""
    prefix = _hex_prefix(term)
    if prefix is None:
        return []
    upper = _after_prefix(prefix)
    conditions: list[ColumnElement[bool]] = []
    for column in (Certificate.serial, Certificate.fingerprint_sha256):
        low = column >= prefix
        conditions.append(low if upper is None else and_(low, column < upper))
    return conditions


def _matching_issuers(session: Session, term: str) -> list[int]:
    like = func.lower(Issuer.dn).like(like_pattern(term), escape="\\")
    return list(session.execute(select(Issuer.id).where(like)).scalars())


def _issuer_certificates(session: Session, issuer_ids: list[int]) -> int:
    if not issuer_ids:
        return 0
    total = select(func.coalesce(func.sum(IssuerCertificateCount.live + IssuerCertificateCount.archived), 0))
    return int(session.execute(total.where(IssuerCertificateCount.issuer_id.in_(issuer_ids))).scalar_one())


def _text_matches(session: Session, term: str) -> Select[tuple[int]]:
    """Ids whose ``search_text`` holds ``term``: the indexed ones and the queued ones."""
    exact = Certificate.search_text.like(like_pattern(term), escape="\\")
    queued = select(Certificate.id).join(_PENDING, _PENDING.c.certificate_id == Certificate.id).where(exact)
    if session.get_bind().dialect.name == "sqlite":
        # FTS5 serves LIKE only without ESCAPE: the pattern as written matches a superset (its
        # wildcards match their own characters too), which the content's exact LIKE then narrows.
        loose = _SEARCH.c.search_text.like(f"%{term.lower()}%")
        indexed = select(_SEARCH.c.rowid.label("id")).where(loose)
        if longest_literal_run(term) != len(term):
            indexed = (
                select(Certificate.id).join(_SEARCH, _SEARCH.c.rowid == Certificate.id).where(loose, exact)
            )
    else:
        pattern = _SEARCH.c.search_text.like(like_pattern(term), escape="\\")
        indexed = select(_SEARCH.c.certificate_id.label("id")).where(pattern)
    return union_all(indexed, queued)  # type: ignore[return-value]


def text_condition(session: Session, q: str) -> ColumnElement[bool]:
    """What ``q`` matches (see the module's docstring), as one condition on ``certificates``.

    A term the indexes find in more than ``COMMON_TERM_MATCHES`` rows, and a term without three
    literal characters in a row (which has no trigram), are tested row by row instead: the query
    then walks the sort order's index and stops when the page is full, which is quick precisely
    because such terms match many rows (short terms are bounded by the caller).
    """
    term = q.lower()
    issuers = _matching_issuers(session, term)
    by_identifier = _prefix_conditions(term)
    if issuers:
        by_identifier.append(Certificate.issuer_id.in_(issuers))
    row_by_row = or_(Certificate.search_text.like(like_pattern(term), escape="\\"), *by_identifier)
    if not indexable(term):
        return row_by_row
    matches = _text_matches(session, term)
    probe = select(func.count()).select_from(matches.limit(COMMON_TERM_MATCHES + 1).subquery())
    found = session.connection().execute(probe).scalar_one() + _issuer_certificates(session, issuers)
    if found > COMMON_TERM_MATCHES:
        return row_by_row
    return or_(Certificate.id.in_(matches.scalar_subquery()), *by_identifier)


_SQLITE_INDEX = (
    "INSERT INTO certificates_search (rowid, search_text) "
    "SELECT c.id, c.search_text FROM certificates_search_pending p "
    "JOIN certificates c ON c.id = p.certificate_id "
    "WHERE p.certificate_id BETWEEN :low AND :high"
)
_SQLITE_DEQUEUE = "DELETE FROM certificates_search_pending WHERE certificate_id BETWEEN :low AND :high"
# Concurrent indexers share the queue: each takes the rows no other one holds.
_PG_INDEX = """
    WITH batch AS (
        DELETE FROM certificates_search_pending WHERE certificate_id IN (
            SELECT certificate_id FROM certificates_search_pending
            ORDER BY certificate_id LIMIT :limit FOR UPDATE SKIP LOCKED
        )
        RETURNING certificate_id
    )
    INSERT INTO certificates_search (certificate_id, search_text)
    SELECT c.id, c.search_text FROM certificates c JOIN batch b ON b.certificate_id = c.id
    ON CONFLICT (certificate_id) DO UPDATE SET search_text = EXCLUDED.search_text
"""


def index_pending(session: Session, limit: int = INDEX_CHUNK) -> int:
    """Indexes up to ``limit`` queued certificates in the session's transaction; returns how many."""
    if session.get_bind().dialect.name != "sqlite":
        return int(session.execute(text(_PG_INDEX), {"limit": limit}).rowcount)  # type: ignore[attr-defined]
    queued = (
        select(_PENDING.c.certificate_id.label("id"))
        .order_by(_PENDING.c.certificate_id)
        .limit(limit)
        .subquery()
    )
    low, high, count = session.execute(
        select(func.min(queued.c.id), func.max(queued.c.id), func.count()).select_from(queued)
    ).one()
    if not count:
        return 0
    session.execute(text(_SQLITE_INDEX), {"low": low, "high": high})
    session.execute(text(_SQLITE_DEQUEUE), {"low": low, "high": high})
    return int(count)


def pending_count(session: Session) -> int:
    return int(session.execute(select(func.count()).select_from(_PENDING)).scalar_one())


@periodic(every=timedelta(minutes=1))
@task(INDEX_SEARCH_TASK)
def index_search(ctx: StepContext) -> Next | Done:
    """Indexes the certificates queued for search, a chunk per step, until the queue is empty."""
    return _index_chunk(ctx)


@index_search.step("more")
def index_more(ctx: StepContext) -> Next | Done:
    return _index_chunk(ctx)


def _index_chunk(ctx: StepContext) -> Next | Done:
    """One chunk, one commit."""
    indexed = index_pending(ctx.session)
    total = int(ctx.state.get("indexed", 0)) + indexed
    if indexed >= INDEX_CHUNK:
        return Next("more", state={"indexed": total})
    return Done({"indexed": total})
