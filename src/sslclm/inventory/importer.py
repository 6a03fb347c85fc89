"""Importing certificates from files, directories and uploads into the inventory.

Files are parsed in worker processes (parsing is CPU-bound; the database writer is not) and
written in batches, one transaction per batch of whole files, so an interrupted import never
leaves a file half-recorded. Memory stays bounded: files are streamed from a directory walk,
and at most a few batches are in flight.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sslclm.audit.service import AuditContext, record
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.inventory.writer import InventoryWriter, ParsedFile, parse_file_bytes

# Files per unit of work handed to a parser process: big enough to amortise pickling.
CHUNK_FILES = 64
# Input bytes per parser task: about 1,500 certificates of PEM.
CHUNK_BYTES = 2 * 1024 * 1024
# Certificates per database transaction (whole files only).
BATCH_CERTIFICATES = 2000


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
                root, onerror=lambda exc: rejected.append(Rejection(str(exc.filename), _os_reason(exc)))
            ):
                dirnames.sort()
                for name in sorted(filenames):
                    yield os.path.join(dirpath, name)
        elif root.exists():
            yield str(root)
        else:
            rejected.append(Rejection(str(root), "no such file or directory"))


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, PermissionError):
        return "unreadable: permission denied"
    return f"unreadable: {exc.strerror or type(exc).__name__}"


def parse_path(path: str, password: str | None, max_bytes: int) -> ParsedFile:
    """Reads and parses one file; every failure becomes a one-line reason, never an exception."""
    try:
        size = os.stat(path).st_size
        if size > max_bytes:
            return ParsedFile(
                path, error=f"too large: {size / 1e6:.1f} MB exceeds the {max_bytes / 1e6:.0f} MB limit"
            )
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        return ParsedFile(path, error=_os_reason(exc))
    # Rows, not CertificateInfo objects: they cross the process boundary and go straight to the driver.
    return parse_file_bytes(path, data, password, as_rows=True)


def _parse_chunk(chunk: list[str], password: str | None, max_bytes: int) -> list[ParsedFile]:
    return [parse_path(path, password, max_bytes) for path in chunk]


def _chunks(items: Iterable[str], size: int, max_bytes: int = CHUNK_BYTES) -> Iterator[list[str]]:
    """Groups files into parser tasks of at most ``size`` files and about ``max_bytes`` of input.

    Sized by bytes as well as by count: one large bundle is a task of its own, so a task's results
    (and the memory holding them) stay small whatever the files look like, and both cores get work.
    """
    chunk: list[str] = []
    chunk_bytes = 0
    for item in items:
        try:
            item_bytes = os.stat(item).st_size
        except OSError:
            item_bytes = 0  # the parser reports why it cannot be read
        if chunk and chunk_bytes + item_bytes > max_bytes:
            yield chunk
            chunk, chunk_bytes = [], 0
        chunk.append(item)
        chunk_bytes += item_bytes
        if len(chunk) >= size:
            yield chunk
            chunk, chunk_bytes = [], 0
    if chunk:
        yield chunk


def _parsed_files(
    files: Iterable[str], password: str | None, max_bytes: int, workers: int
) -> Iterator[ParsedFile]:
    if workers <= 1:
        for path in files:
            yield parse_path(path, password, max_bytes)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending: list[object] = []
        chunk_iter = _chunks(files, CHUNK_FILES)
        # Keep a bounded window of chunks in flight so memory does not grow with the corpus.
        window = workers * 2
        for chunk in chunk_iter:
            pending.append(pool.submit(_parse_chunk, chunk, password, max_bytes))
            if len(pending) >= window:
                yield from pending.pop(0).result()  # type: ignore[attr-defined]
        for future in pending:
            yield from future.result()  # type: ignore[attr-defined]


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
) -> ImportSummary:
    """Imports every certificate found under ``paths``; rejected files are listed with a reason."""
    summary = ImportSummary()
    files = _walk(paths, summary.rejected)
    max_bytes = platform.settings.max_upload_bytes
    parsed = _parsed_files(files, password, max_bytes, workers if workers is not None else default_workers())
    _write(platform, parsed, ctx, summary, source=source, sighting_kind="file", progress=progress)
    return summary


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
) -> None:
    writer = InventoryWriter(platform, source=source, sighting_kind=sighting_kind)
    batch: list[ParsedFile] = []
    batch_certs = 0

    def flush() -> None:
        nonlocal batch, batch_certs
        if not batch:
            return
        with session_scope(platform.sessions) as session:
            result = writer.write(session, batch)
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
