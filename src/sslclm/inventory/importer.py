"""Importing certificates from files, directories and uploads into the inventory.

Files are parsed in parser processes (parsing is CPU-bound; the database writer is not) and
written in batches, one transaction per batch of whole files, so an interrupted import never
leaves a file half-recorded. Memory stays bounded: files are streamed from a directory walk, a
large PEM bundle is parsed in parts, and at most ``workers + 1`` parser tasks are in flight.

A directory import leaves the policy evaluation of what it inserted to a job
(``policies.evaluate-written``, one per batch, enqueued in the batch's transaction): the import's
own time goes to parsing and writing. Likewise the search index takes the new certificates in
bulk (``inventory.index-search``, enqueued once the import has written; search is exact before
that: see :mod:`sslclm.inventory.search`). :func:`import_paths` runs those jobs before it returns
unless told not to (then a worker, such as the one ``sslclm serve`` embeds, runs them).

An import into a young inventory builds some of the certificates' indexes once at its end instead
of row by row: see :mod:`sslclm.inventory.initial_load`.
"""

from __future__ import annotations

import itertools
import mmap
import multiprocessing
import os
import sys
import types
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sslclm.audit.service import AuditContext, record
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.inventory.initial_load import indexes_built_at_end
from sslclm.inventory.parsing import ParsedFile, Piece, os_reason, parse_file_bytes, parse_path, parse_pieces
from sslclm.inventory.search import INDEX_SEARCH_TASK
from sslclm.inventory.writer import InventoryWriter
from sslclm.jobs import TaskRegistry, Worker, default_registry, enqueue
from sslclm.policies.tasks import EVALUATE_WRITTEN_TASK

# Files per unit of work handed to a parser process: big enough to amortise pickling.
CHUNK_FILES = 64
# Input bytes per parser task: about 1,300 certificates of PEM. A larger PEM bundle is split
# into parts of about this size, so a task's results (and the memory holding them) stay small.
CHUNK_BYTES = 2 * 1024 * 1024
# Certificates per database transaction (whole files only). Each commit writes every page the
# batch dirtied, and fingerprints, serials and names land on pages all over their indexes: at
# 300,000 certificates, batches of 10,000 cost the importing process 20% less CPU per certificate
# than batches of 2,000 with a 16 MB page cache (a page takes several rows per commit, and stays
# cached between them), for about 30 MB more of rows held and the usual 64 MB cache.
BATCH_CERTIFICATES = 10_000
# Parser tasks queued beyond one per parser: about 8,000 certificates parsed ahead (tasks are at
# most CHUNK_BYTES of input), so the parsers keep working while the writer commits a batch instead
# of idling once their next task is done. What they parse ahead waits here as rows.
PARSE_AHEAD_TASKS = 6
# Parsers run at a lower priority than the writer: writing is the one serial part of an import,
# so when the parsers and the writer contend for the cores the writer should not wait its turn.
PARSER_NICENESS = 10
_PEM_CERTIFICATE = b"-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True, slots=True)
class Rejection:
    path: str
    reason: str


@dataclass
class ImportSummary:
    files: int = 0
    imported: int = 0
    updated: int = 0
    keys_stored: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    # The policy evaluation jobs this import enqueued (see the module's docstring).
    evaluation_jobs: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "files": self.files,
            "imported": self.imported,
            "updated": self.updated,
            "keys_stored": self.keys_stored,
            "rejected": [{"path": r.path, "reason": r.reason} for r in self.rejected],
        }


def _walk(paths: Sequence[Path], rejected: list[Rejection]) -> Iterator[str]:
    for root in paths:
        if root.is_dir():
            for dirpath, dirnames, filenames in os.walk(
                root, onerror=lambda exc: rejected.append(Rejection(str(exc.filename), os_reason(exc)))
            ):
                dirnames.sort()
                for name in sorted(filenames):
                    yield os.path.join(dirpath, name)
        elif root.exists():
            yield str(root)
        else:
            rejected.append(Rejection(str(root), "no such file or directory"))


def pem_parts(path: str, part_bytes: int) -> list[Piece] | None:
    """A PEM bundle of certificates only, cut at ``BEGIN CERTIFICATE`` lines every ``part_bytes``.

    None when the file is not such a bundle (DER, PKCS#12, keys that must meet their certificate
    in one parse) or is too small to be worth cutting. Read through ``mmap``: the pages are the
    page cache's, found with a few ``find`` calls and never copied into this process.
    """
    try:
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            size = len(data)
            first = data.find(_PEM_CERTIFICATE)
            if size <= part_bytes or first < 0 or data[:first].strip():
                return None
            if data.find(b"PRIVATE KEY") >= 0 or data.find(b"-----BEGIN PKCS7") >= 0:
                return None
            cuts = [0]
            while True:
                cut = data.find(_PEM_CERTIFICATE, cuts[-1] + part_bytes)
                if cut < 0 or size - cut < part_bytes // 4:
                    break  # a small tail stays with the part before it
                cuts.append(cut)
    except (OSError, ValueError):
        return None  # unreadable or empty: parsed whole, which reports why
    if len(cuts) == 1:
        return None
    bounds = [*cuts, size]
    return [
        Piece(path, start, stop, last=index == len(cuts) - 1)
        for index, (start, stop) in enumerate(itertools.pairwise(bounds))
    ]


def _tasks(paths: Iterable[str], size: int, max_file_bytes: int) -> Iterator[list[Piece]]:
    """Groups files into parser tasks of at most ``size`` files and about ``max_bytes`` of input.

    Sized by bytes as well as by count: a large file is a task of its own, and a large PEM bundle
    is several, so a task's results stay small whatever the files look like and both cores get work.
    """
    max_bytes = CHUNK_BYTES
    chunk: list[Piece] = []
    chunk_bytes = 0
    for path in paths:
        try:
            item_bytes = os.stat(path).st_size
        except OSError:
            item_bytes = 0  # the parser reports why it cannot be read
        parts = pem_parts(path, max_bytes) if max_bytes < item_bytes <= max_file_bytes else None
        if parts is not None:
            if chunk:
                yield chunk
                chunk, chunk_bytes = [], 0
            yield from ([part] for part in parts)
            continue
        if chunk and chunk_bytes + item_bytes > max_bytes:
            yield chunk
            chunk, chunk_bytes = [], 0
        chunk.append(Piece(path))
        chunk_bytes += item_bytes
        if len(chunk) >= size:
            yield chunk
            chunk, chunk_bytes = [], 0
    if chunk:
        yield chunk


def _joined(
    results: Iterable[tuple[Piece, ParsedFile]], password: str | None, max_bytes: int
) -> Iterator[ParsedFile]:
    """Files whole again: the parts of a bundle come one after another and are joined.

    A part that fails makes the whole file fail; it is then parsed once more in one piece here
    (rare), so the reason is the one the whole file gives (block numbers count from its start).
    """
    parts: list[ParsedFile] = []
    for piece, parsed in results:
        if piece.whole:
            yield parsed
            continue
        parts.append(parsed)
        if not piece.last:
            continue
        if any(part.error is not None for part in parts):
            yield parse_path(piece.path, password, max_bytes)
        else:
            yield ParsedFile(
                piece.path,
                keys=[key for part in parts for key in part.keys],
                format=parts[0].format,
                rows=[row for part in parts for row in part.rows],
            )
        parts = []


def _parsed_files(
    files: Iterable[str], password: str | None, max_bytes: int, workers: int
) -> Iterator[ParsedFile]:
    if workers <= 1:
        for path in files:
            yield parse_path(path, password, max_bytes)
        return
    yield from _joined(_pooled(files, password, max_bytes, workers), password, max_bytes)


@contextmanager
def _main_module_hidden() -> Iterator[None]:
    """Starts processes without telling them this program's main module.

    A forkserver (or spawn) child imports the parent's ``__main__`` module before its first task,
    which for ``sslclm`` means the whole command line and web stack, some 50 MB per parser that
    parsing never uses. A stand-in ``__main__`` with no file or spec is what it is told instead.
    """
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def parser_pool(workers: int) -> ProcessPoolExecutor:
    """The parser processes of an import, each at :data:`PARSER_NICENESS` below this process."""
    # forkserver: a parser starts from a small server process that has imported only the parsing
    # module, not as a copy of this one (its database pools, caches and whatever else it holds).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["sslclm.inventory.parsing"])
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=os.nice, initargs=(PARSER_NICENESS,)
    )


def _pooled(
    files: Iterable[str], password: str | None, max_bytes: int, workers: int
) -> Iterator[tuple[Piece, ParsedFile]]:
    with parser_pool(workers) as pool:
        pending: list[tuple[list[Piece], Future[list[ParsedFile]]]] = []
        # Each parser has its next task ready, and a batch's worth of tasks more is queued or
        # done: results pile up here only while the writer commits, bounded by this window.
        window = workers + 1 + PARSE_AHEAD_TASKS
        for task in _tasks(files, CHUNK_FILES, max_bytes):
            # The pool starts its parsers inside submit(), whenever none is idle.
            with _main_module_hidden():
                future = pool.submit(parse_pieces, task, password, max_bytes)
            pending.append((task, future))
            if len(pending) >= window:
                done, future = pending.pop(0)
                yield from zip(done, future.result(), strict=True)
        for done, future in pending:
            yield from zip(done, future.result(), strict=True)


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))


def import_paths(
    platform: Platform,
    paths: Sequence[Path],
    ctx: AuditContext,
    *,
    password: str | None = None,
    source: str = "import",
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    evaluate: bool = True,
) -> ImportSummary:
    """Imports every certificate found under ``paths``; rejected files are listed with a reason.

    The new certificates' policy evaluation and search indexing are queued as jobs; with
    ``evaluate`` (the default) they are run here before returning, so the violations are current
    and the search index complete when the import is done.
    """
    summary = ImportSummary()
    files = _walk(paths, summary.rejected)
    max_bytes = platform.settings.max_upload_bytes
    parsed = _parsed_files(files, password, max_bytes, workers if workers is not None else default_workers())
    with indexes_built_at_end(platform.engine):
        _write(
            platform, parsed, ctx, summary, source=source, sighting_kind="file", progress=progress, defer=True
        )
    if summary.imported:
        with session_scope(platform.sessions) as session:
            enqueue(session, INDEX_SEARCH_TASK, {}, now=platform.clock())
    if evaluate:
        run_indexing(platform)
        if summary.evaluation_jobs:
            run_evaluations(platform)
    return summary


def run_indexing(platform: Platform) -> None:
    """Runs queued search-index jobs here until none is ready (see :func:`run_evaluations`)."""
    _run_queued(platform, INDEX_SEARCH_TASK)


def run_evaluations(platform: Platform) -> None:
    """Runs queued import evaluations (this import's and any other's) here until none is ready.

    Another worker (``sslclm serve``'s, say) may hold some of them meanwhile: those finish there.
    A job that fails is left to its retries, as under any worker.
    """
    _run_queued(platform, EVALUATE_WRITTEN_TASK)


def _run_queued(platform: Platform, kind: str) -> None:
    registry = TaskRegistry()
    registry.add(default_registry.get(kind))
    Worker(
        platform, registry=registry, concurrency=1, poll_interval=0.05, name=f"import:{os.getpid()}"
    ).run_until_idle()


def import_bytes(
    platform: Platform,
    data: bytes,
    filename: str,
    ctx: AuditContext,
    *,
    password: str | None = None,
    source: str = "upload",
) -> ImportSummary:
    """Imports one uploaded file; a file that cannot be parsed is reported, not raised."""
    summary = ImportSummary()
    parsed = parse_file_bytes(filename, data, password)
    _write(platform, [parsed], ctx, summary, source=source, sighting_kind="upload")
    return summary


def _write(
    platform: Platform,
    parsed: Iterable[ParsedFile],
    ctx: AuditContext,
    summary: ImportSummary,
    *,
    source: str,
    sighting_kind: str,
    progress: Callable[[int], None] | None = None,
    defer: bool = False,
) -> None:
    writer = InventoryWriter(
        platform, source=source, sighting_kind=sighting_kind, evaluate_policies=not defer
    )
    batch: list[ParsedFile] = []
    batch_certs = 0
    # The import's first new id: certificates below it were there before (see the evaluation job).
    first_new: int | None = None

    def flush() -> None:
        nonlocal batch, batch_certs, first_new
        if not batch:
            return
        with session_scope(platform.sessions) as session:
            result = writer.write(session, batch)
            if defer and result.new_ids:
                first_new = first_new or min(result.new_ids)
                job = enqueue(
                    session,
                    EVALUATE_WRITTEN_TASK,
                    {"ranges": id_ranges(result.new_ids), "older_than": first_new},
                    now=platform.clock(),
                )
                summary.evaluation_jobs.append(job.id)
            # Audited per batch, in the batch's own transaction: what is recorded was written.
            record(
                session,
                ctx,
                "certificate.import",
                "inventory",
                None,
                {
                    "source": source,
                    "files": len(batch),
                    "first_file": batch[0].path,
                    "imported": result.inserted,
                    "updated": result.updated,
                    "keys_stored": result.keys_stored,
                },
            )
        summary.imported += result.inserted
        summary.updated += result.updated
        summary.keys_stored += result.keys_stored
        if progress is not None:
            progress(len(batch))
        batch, batch_certs = [], 0

    for item in parsed:
        summary.files += 1
        if item.error is not None:
            summary.rejected.append(Rejection(item.path, item.error))
            if progress is not None:
                progress(1)
            continue
        batch.append(item)
        batch_certs += item.count
        if batch_certs >= BATCH_CERTIFICATES:
            flush()
    flush()


def id_ranges(ids: Iterable[int]) -> list[list[int]]:
    """``ids`` as ``[after, last]`` runs (``after < id <= last``): one run for a batch's usual
    consecutive ids, a few when a concurrent writer took ids in between."""
    runs: list[list[int]] = []
    for value in sorted(ids):
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value - 1, value])
    return runs
