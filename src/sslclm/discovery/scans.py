"""Running a stored scan: the scanner streams results, a writer thread records them in batches.

:func:`run_scan` is the one entry point, used by the ``discovery.scan`` job and by ``sslclm scan``
alike. It is idempotent: a scan that already finished is left alone, and one interrupted mid-way
(a worker died) starts over with fresh counters, every write being an upsert.

The event loop only scans; each batch of results (``BATCH_SIZE`` results, or whatever arrived in
``FLUSH_SECONDS``) is written by a thread while the next batch is being scanned, and at most one
write is in flight, so memory stays bounded and a slow database slows the scan rather than
filling memory. Every write also advances the scan's progress counters and reads its cancel flag.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, distinct, func, select, update

from sslclm.audit.service import AuditContext, record
from sslclm.connectors.tls_scan import ScanResult, TlsScanner
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.discovery.diff import compare_scans
from sslclm.discovery.models import FINISHED_SCAN_STATUSES, Scan, ScanEndpointResult, ScanStatus
from sslclm.discovery.recording import BatchOutcome, ResultRecorder
from sslclm.discovery.service import SCAN_TASK, scanner_options, target_set
from sslclm.errors import SslClmError
from sslclm.jobs import Done, Next, StepContext, task
from sslclm.jobs.models import Job
from sslclm.notifications.events import raise_new_certificates

log = logging.getLogger(__name__)

BATCH_SIZE = 500
FLUSH_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class ScanProgress:
    scan_id: int
    total: int
    done: int
    found: int
    failed: int
    batch: tuple[ScanResult, ...] = ()  # the results just recorded, for a live display


ProgressCallback = Callable[[ScanProgress], None]


@dataclass(frozen=True, slots=True)
class ScanOutcome:
    scan_id: int
    status: str
    total: int
    done: int
    found: int
    failed: int
    certificates: int
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "scan_id": self.scan_id,
            "status": self.status,
            "total": self.total,
            "done": self.done,
            "found": self.found,
            "failed": self.failed,
            "certificates": self.certificates,
            "error": self.error,
        }


def _outcome(scan: Scan) -> ScanOutcome:
    return ScanOutcome(
        scan.id, scan.status, scan.total, scan.done, scan.found, scan.failed, scan.certificates, scan.error
    )


class _Batches:
    """Writes batches for one scan and keeps the counters the progress display shows."""

    def __init__(self, platform: Platform, scan: Scan, progress: ProgressCallback | None) -> None:
        self.platform = platform
        self.scan_id = scan.id
        self.job_id = scan.job_id
        self.total = scan.total
        self.done = self.found = self.failed = 0
        self.recorder = ResultRecorder(platform, scan.id)
        self.progress = progress
        self.audit = AuditContext(actor=f"scan:{scan.id}")

    def write(self, results: list[ScanResult]) -> bool:
        """Records ``results``; returns whether the scan (or its job) was asked to stop."""
        now = self.platform.clock()
        with session_scope(self.platform.sessions) as session:
            outcome: BatchOutcome = self.recorder.record(session, results, now)
            session.execute(
                update(Scan)
                .where(Scan.id == self.scan_id)
                .values(
                    done=Scan.done + outcome.results,
                    found=Scan.found + outcome.ok,
                    failed=Scan.failed + outcome.failed,
                )
            )
            if outcome.recorded:
                # Audited per batch in the batch's transaction, as imports are: what is logged was written.
                record(
                    session,
                    self.audit,
                    "scan.record",
                    "scan",
                    self.scan_id,
                    {
                        "endpoints": outcome.recorded,
                        "new_endpoints": outcome.new_endpoints,
                        "changed": outcome.changed,
                        "certificates_inserted": outcome.certificates_inserted,
                    },
                    occurred_at=now,
                )
            stop = bool(
                session.execute(select(Scan.cancel_requested).where(Scan.id == self.scan_id)).scalar()
            )
            if not stop and self.job_id is not None:
                stop = bool(
                    session.execute(select(Job.cancel_requested).where(Job.id == self.job_id)).scalar()
                )
        self.done += outcome.results
        self.found += outcome.ok
        self.failed += outcome.failed
        if self.progress is not None:
            self.progress(
                ScanProgress(self.scan_id, self.total, self.done, self.found, self.failed, tuple(results))
            )
        return stop


async def _stream(scanner: TlsScanner, targets: Any, batches: _Batches) -> bool:
    """Scans and records everything; returns whether it stopped because it was cancelled."""
    # The queue absorbs results while a batch is being written; when it is full the scanner waits.
    queue: asyncio.Queue[ScanResult | None] = asyncio.Queue(maxsize=BATCH_SIZE * 2)

    async def produce() -> None:
        try:
            async for result in scanner.scan(targets):
                await queue.put(result)
        finally:
            await queue.put(None)

    producer = asyncio.create_task(produce())
    loop = asyncio.get_running_loop()
    batch: list[ScanResult] = []
    writing: asyncio.Future[bool] | None = None
    cancelled = finished = False
    deadline = loop.time() + FLUSH_SECONDS
    try:
        while not finished:
            try:
                item = await asyncio.wait_for(queue.get(), timeout=max(deadline - loop.time(), 0.0))
            except TimeoutError:
                pass
            else:
                if item is None:
                    finished = True
                else:
                    batch.append(item)
            if not (finished or len(batch) >= BATCH_SIZE or loop.time() >= deadline):
                continue
            if writing is not None:
                cancelled = await writing
                writing = None
                if cancelled:
                    break
            if batch:
                writing = asyncio.ensure_future(asyncio.to_thread(batches.write, batch))
                batch = []
            deadline = loop.time() + FLUSH_SECONDS
        if writing is not None:
            cancelled = await writing or cancelled
            writing = None
    finally:
        producer.cancel()
        await asyncio.gather(producer, return_exceptions=True)
        if writing is not None:
            await asyncio.gather(writing, return_exceptions=True)
    return cancelled


def _start(platform: Platform, scan_id: int, *, retry: bool) -> Scan | None:
    """Marks the scan running (resetting what an interrupted run left); None if there is nothing to do.

    With ``retry`` (the job's next attempt) a scan that failed is run again too.
    """
    now = platform.clock()
    with session_scope(platform.sessions) as session:
        scan = session.execute(select(Scan).where(Scan.id == scan_id).with_for_update()).scalar_one_or_none()
        if scan is None:
            raise SslClmError(f"scan {scan_id} no longer exists")
        if scan.status in FINISHED_SCAN_STATUSES and not (retry and scan.status == ScanStatus.FAILED):
            return None
        if scan.cancel_requested:
            scan.status, scan.finished_at = ScanStatus.CANCELLED.value, now
            return None
        session.execute(delete(ScanEndpointResult).where(ScanEndpointResult.scan_id == scan_id))
        scan.status = ScanStatus.RUNNING.value
        scan.started_at = now
        scan.finished_at = None
        scan.done = scan.found = scan.failed = scan.certificates = 0
        scan.error = None
        session.flush()
        session.expunge(scan)
        return scan


def _finish(platform: Platform, scan_id: int, status: ScanStatus, error: str | None) -> ScanOutcome:
    now = platform.clock()
    with session_scope(platform.sessions) as session:
        scan = session.get(Scan, scan_id)
        assert scan is not None
        scan.status = status.value
        scan.error = error
        scan.finished_at = now
        scan.certificates = session.execute(
            select(func.count(distinct(ScanEndpointResult.certificate_id))).where(
                ScanEndpointResult.scan_id == scan_id
            )
        ).scalar_one()
        record(
            session,
            AuditContext(actor=f"scan:{scan_id}"),
            "scan.finish",
            "scan",
            scan_id,
            {
                "status": scan.status,
                "done": scan.done,
                "found": scan.found,
                "failed": scan.failed,
                "certificates": scan.certificates,
                "error": error,
            },
            occurred_at=now,
        )
        session.flush()
        return _outcome(scan)


def run_scan(
    platform: Platform, scan_id: int, *, progress: ProgressCallback | None = None, retry: bool = False
) -> ScanOutcome:
    """Runs scan ``scan_id`` to the end (or until cancelled) and returns how it ended.

    A scan that already finished is returned as it is (unless ``retry`` and it failed).
    """
    scan = _start(platform, scan_id, retry=retry)
    if scan is None:
        with session_scope(platform.sessions) as session:
            return _outcome(session.get_one(Scan, scan_id))
    try:
        targets = target_set(scan.targets, scan.options)
        scanner = TlsScanner(scanner_options(scan.options, platform.clock))
        cancelled = asyncio.run(_stream(scanner, targets, _Batches(platform, scan, progress)))
    except SslClmError as exc:
        return _finish(platform, scan_id, ScanStatus.FAILED, exc.message)
    except KeyboardInterrupt:
        _finish(platform, scan_id, ScanStatus.CANCELLED, "interrupted")
        raise
    except Exception as exc:
        # The scan is marked failed either way; the job decides whether to try again.
        _finish(platform, scan_id, ScanStatus.FAILED, f"{type(exc).__name__}: {exc}")
        raise
    return _finish(platform, scan_id, ScanStatus.CANCELLED if cancelled else ScanStatus.SUCCEEDED, None)


@task(SCAN_TASK)
def scan_job(ctx: StepContext) -> Next:
    """Run a network TLS scan (payload: ``scan_id``)."""
    scan_id = int(ctx.payload["scan_id"])
    # Nothing is read or written through ctx.session before the scan: on SQLite, a transaction held
    # open across the scan would be refused its write at the end (the database moved on meanwhile).
    outcome = run_scan(ctx.platform, scan_id, retry=ctx.attempt > 1)
    if outcome.status == ScanStatus.FAILED:
        raise SslClmError(f"scan {scan_id} failed: {outcome.error}")
    return Next("summarize", state={"outcome": outcome.as_dict()})


@scan_job.step("summarize")
def summarize(ctx: StepContext) -> Done:
    outcome = dict(ctx.state.get("outcome") or {})
    scan_id = int(ctx.payload["scan_id"])
    diff = compare_scans(ctx.session, scan_id, limit=0)
    outcome["changes"] = diff["counts"]
    raise_new_certificates(ctx.session, scan_id=scan_id, counts=diff["counts"], now=ctx.now)
    outcome["previous_scan_id"] = diff["previous_scan_id"]
    return Done(outcome)
