"""An initial load builds four of the certificates' indexes once, at its end.

Four indexes of ``certificates`` take their keys in random order: serial, common name, expiry,
and issuer then expiry. A directory import maintains them row by row. At a million certificates,
each batch then lands on leaf pages all over them, and that upkeep costs the single writer about
as much CPU as everything else it does. Building an index once from the finished table is a sort
instead, a few seconds at a million rows. Database manuals give the same advice for a bulk load
(PostgreSQL's "Populating a Database": "create the indexes after loading the data").

So a directory import into an inventory that holds fewer than :data:`INITIAL_LOAD_MAX_ROWS`
certificates drops those four indexes first and builds them again when it ends, whether it ends
well or not. Meanwhile lookups that would use them still answer correctly, only by scanning, which
matters little while the inventory is that young. An import into a larger inventory keeps them:
building them again would cost more than it saves.

The other indexes stay whatever happens:

- the fingerprint's unique index, which the import itself looks up and relies on to never
  duplicate a certificate;
- the public key's, which matches a private key to its certificate during the import and counts
  key reuse in the policy evaluation jobs a worker may run meanwhile;
- the rest, which take keys in insertion order and cost little.

On PostgreSQL an initial load also checks two foreign keys once, at its end, instead of row by
row: a certificate's issuer, and a sighting's certificate (the same manual: "remove foreign key
constraints"). Row by row, each costs the server an index lookup and a row lock for every
certificate and sighting; at the end it is one join. Should a row written meanwhile by another
process break one (a certificate deleted under its sightings), the key comes back unchecked for
the rows already there (``NOT VALID``) and checked for every new one, and a warning says so.

An initial load holds a lock from start to end (a PostgreSQL advisory lock, or a file lock beside
the SQLite database), which its process's death releases. If the process dies before it could
build the indexes, the next start builds them: see :func:`restore_deferred_indexes`, which
``upgrade_database`` runs after every upgrade, and which leaves them alone while a load holds the
lock (a ``sslclm certs list`` beside a running import must not build them under it).
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, ForeignKeyConstraint, Index, Table, func, inspect, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.schema import AddConstraint, DropConstraint, DropIndex

from sslclm.inventory.models import Certificate, IssuerCertificateCount, Sighting

log = logging.getLogger(__name__)

DEFERRED_INDEXES = (
    "ix_certificates_serial",
    "ix_certificates_common_name_id",
    "ix_certificates_not_after_id",
    "ix_certificates_issuer_archived_expiry",
)
DEFERRED_FOREIGN_KEYS = (
    "fk_certificates_issuer_id_issuers",
    "fk_sightings_certificate_id_certificates",
)
# Building the four indexes over this many certificates takes a fraction of a second.
INITIAL_LOAD_MAX_ROWS = 50_000
# The PostgreSQL advisory lock an initial load holds ("SSLCLM" and 1).
_ADVISORY_LOCK = 0x53534C434C4D0001


def deferred_indexes() -> list[Index]:
    table = Certificate.__table__
    assert isinstance(table, Table)
    deferred = [index for index in table.indexes if index.name in DEFERRED_INDEXES]
    return sorted(deferred, key=lambda index: str(index.name))


def deferred_foreign_keys() -> list[ForeignKeyConstraint]:
    found = []
    for table in (Certificate.__table__, Sighting.__table__):
        assert isinstance(table, Table)
        found += [fk for fk in table.foreign_key_constraints if fk.name in DEFERRED_FOREIGN_KEYS]
    return sorted(found, key=lambda fk: str(fk.name))


def stored_certificates(connection: Connection) -> int:
    """Every certificate, archived ones included, from the per-issuer counts triggers keep exact."""
    counts = IssuerCertificateCount
    total = select(func.coalesce(func.sum(counts.live + counts.archived), 0))
    return int(connection.execute(total).scalar_one())


@contextmanager
def initial_load_lock(engine: Engine) -> Iterator[bool]:
    """Takes the initial-load lock if no other process holds it; yields whether this one does."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            taken = connection.exec_driver_sql(f"SELECT pg_try_advisory_lock({_ADVISORY_LOCK})").scalar()
            connection.commit()  # a session lock: no transaction stays open while it is held
            try:
                yield bool(taken)
            finally:
                if taken:
                    connection.exec_driver_sql(f"SELECT pg_advisory_unlock({_ADVISORY_LOCK})")
                    connection.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield True  # no file, so no other process can share the database
        return
    # A file lock, released with the process: a lock file beside the database, like its -wal file.
    with Path(f"{database}-initial-load.lock").open("ab") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            taken = True
        except BlockingIOError:
            taken = False
        try:
            yield taken
        finally:
            if taken:
                fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def indexes_built_at_end(engine: Engine) -> Iterator[bool]:
    """Runs the block with the deferred indexes (and, on PostgreSQL, foreign keys) dropped if the
    inventory is still small.

    Yields whether they were dropped. They come back when the block ends, even by an error. While
    another initial load runs, this import leaves them to it.
    """
    with ExitStack() as held_lock:
        initial = False
        if held_lock.enter_context(initial_load_lock(engine)):
            with engine.begin() as connection:
                initial = stored_certificates(connection) < INITIAL_LOAD_MAX_ROWS
                if initial:
                    for index in deferred_indexes():
                        connection.execute(DropIndex(index, if_exists=True))
                    if connection.dialect.name == "postgresql":
                        for fk in deferred_foreign_keys():
                            connection.execute(DropConstraint(fk, if_exists=True))
        if not initial:
            held_lock.close()  # this import keeps every index: nothing for the lock to guard
            yield False
            return
        deferred = [*DEFERRED_INDEXES]
        if engine.dialect.name == "postgresql":
            deferred += DEFERRED_FOREIGN_KEYS
        log.info("initial load: %s come back once the import ends", ", ".join(deferred))
        try:
            yield True
        finally:
            with engine.begin() as connection:
                _build_missing(connection)


def restore_deferred_indexes(engine: Engine) -> list[str]:
    """Builds whichever of the deferred indexes (and foreign keys) is missing, unless an initial
    load is running.

    Returns the names of those it built.
    """
    with initial_load_lock(engine) as held:
        if not held:
            log.info("an initial load is running: it builds the certificates' indexes when it ends")
            return []
        with engine.begin() as connection:
            return _build_missing(connection)


def _build_missing(connection: Connection) -> list[str]:
    inspector = inspect(connection)
    present = {index["name"] for index in inspector.get_indexes(Certificate.__tablename__)}
    built = []
    for index in deferred_indexes():
        if index.name not in present:
            index.create(connection)
            built.append(str(index.name))
    if connection.dialect.name == "postgresql":
        foreign_keys = deferred_foreign_keys()
        tables = {str(fk.table.name) for fk in foreign_keys}
        present = {fk["name"] for table in tables for fk in inspector.get_foreign_keys(table)}
        for fk in foreign_keys:
            if fk.name not in present:
                _add_foreign_key(connection, fk)
                built.append(str(fk.name))
    if built:
        log.info("built the certificates' indexes and keys %s", ", ".join(built))
    return built


def _add_foreign_key(connection: Connection, fk: ForeignKeyConstraint) -> None:
    add = AddConstraint(fk)
    try:
        with connection.begin_nested():
            connection.execute(add)  # checks every row already there: one join
    except IntegrityError as exc:
        # A row written beside the load breaks it; enforce the key for new rows all the same.
        connection.exec_driver_sql(f"{add.compile(dialect=connection.dialect)} NOT VALID")
        log.warning("%s holds for new rows only: rows already stored break it (%s)", fk.name, exc.orig)
