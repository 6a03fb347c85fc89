"""The worker: claims jobs in batches and runs their steps on a pool of threads.

One thread (the one that calls :meth:`Worker.run_forever`) claims, renews leases, requeues jobs
of dead workers and ticks the periodic scheduler; ``concurrency`` executor threads run steps. A
job stays with one executor from its first step to its last, so consecutive steps cost no extra
claim. Per step the database sees one transaction: the step's own writes plus one compare-and-set
``UPDATE`` of the job row (see ``sslclm.jobs.queue``).
"""

from __future__ import annotations

import logging
import os
import queue as stdlib_queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from itertools import count
from types import FrameType
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from sslclm.core.db import create_db_engine
from sslclm.errors import SslClmError
from sslclm.jobs import queue
from sslclm.jobs.models import JobStatus
from sslclm.jobs.periodic import Scheduler
from sslclm.jobs.registry import Task, TaskRegistry, UnknownTaskError, default_registry
from sslclm.jobs.steps import StepContext

# A module reference, not a name: notifications imports the jobs package, which imports this module.
from sslclm.notifications import events as notification_events

if TYPE_CHECKING:
    from sslclm.core.platform import Platform

log = logging.getLogger(__name__)

DEFAULT_LEASE = timedelta(seconds=30)


@dataclass
class WorkerStats:
    claimed: int = 0
    steps: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    waiting: int = 0
    cancelled: int = 0
    released: int = 0
    lease_lost: int = 0
    reaped: int = 0
    scheduled: int = 0


class Worker:
    """Runs jobs of the kinds in ``registry`` until stopped.

    ``concurrency`` jobs run at once, each executor thread on a database connection of its own;
    up to ``prefetch`` more wait claimed in memory, so an executor that finishes a job starts the
    next without a round trip. ``lease`` is how long a job stays ours without a heartbeat: a
    worker that dies loses its jobs to the others after that long.
    """

    def __init__(
        self,
        platform: Platform,
        *,
        registry: TaskRegistry | None = None,
        concurrency: int = 4,
        poll_interval: float = 1.0,
        batch_size: int | None = None,
        prefetch: int | None = None,
        lease: timedelta = DEFAULT_LEASE,
        name: str | None = None,
        scheduler: Scheduler | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if lease < timedelta(seconds=1):
            raise ValueError("the lease must be at least one second")
        self.platform = platform
        self.registry = registry or default_registry
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.prefetch = concurrency * 2 if prefetch is None else prefetch
        self.batch_size = batch_size or max(self.concurrency + self.prefetch, 10)
        self.lease = lease
        self.id = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.scheduler = scheduler
        self.stats = WorkerStats()
        self._claims = count(1)
        self._buffer: stdlib_queue.SimpleQueue[queue.ClaimedJob | None] = stdlib_queue.SimpleQueue()
        self._held: dict[int, queue.ClaimedJob] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._stats_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._aborted = threading.Event()
        self._thread: threading.Thread | None = None
        self._engine: Engine = platform.engine
        self._next_heartbeat = 0.0
        self._executors: list[threading.Thread] = []

    # -- running ---------------------------------------------------------------------------------

    def run_forever(self, *, handle_signals: bool = True) -> WorkerStats:
        """Runs until :meth:`stop` (or SIGTERM/SIGINT: finish the current steps, hand the rest back).

        A second signal stops at once; the jobs still held come back to the queue when their leases
        expire.
        """
        if handle_signals and threading.current_thread() is threading.main_thread():
            self._install_signal_handlers()
        return self._run(until_idle=False, deadline=None)

    def run_until_idle(self, *, timeout: float | None = None) -> WorkerStats:
        """Runs until no job is ready to start (or ``timeout`` seconds pass), then returns.

        For tests and for running the queue from a cron job. Jobs that wait for a retry or a poll
        in the future are not ready: this returns without them.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._run(until_idle=True, deadline=deadline)

    def start(self) -> None:
        """Runs the worker in a background thread (e.g. embedded in ``sslclm serve``)."""
        if self._thread is not None:
            raise RuntimeError("worker already started")
        self._thread = threading.Thread(
            target=self._run,
            kwargs={"until_idle": False, "deadline": None},
            name="sslclm-worker",
            daemon=True,
        )
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Asks the worker to stop gracefully; with a background thread, waits up to ``timeout``."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: FrameType | None) -> None:
            if self._stopping.is_set():
                log.warning("worker %s: second signal, stopping now", self.id)
                self._aborted.set()
            else:
                log.info("worker %s: stopping after the current steps (signal again to stop now)", self.id)
            self.stop()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def _run(self, *, until_idle: bool, deadline: float | None) -> WorkerStats:
        self._stopping.clear()
        self._aborted.clear()
        self._engine = self._open_engine()
        kinds = self.registry.kinds()
        if not kinds and self.scheduler is None:
            log.warning("worker %s: no task kinds registered; nothing to run", self.id)
        self._executors = [
            threading.Thread(target=self._execute_loop, name=f"sslclm-job-{n}", daemon=True)
            for n in range(self.concurrency)
        ]
        for thread in self._executors:
            thread.start()
        log.info("worker %s: %d threads, kinds: %s", self.id, self.concurrency, ", ".join(kinds) or "-")
        # Dead workers' jobs are looked for twice per lease (at least every 10 s), not at every poll.
        reap_every = min(self.lease.total_seconds() / 2, 10.0)
        next_reap = 0.0
        self._next_heartbeat = 0.0
        try:
            while not self._stopping.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._wake.clear()
                claimed: list[queue.ClaimedJob] | None = None
                reaped = scheduled = 0
                try:
                    now = time.monotonic()
                    self._heartbeat_if_due()
                    claimed = self._claim(kinds)
                    if now >= next_reap:
                        reaped = self._reap()
                        next_reap = now + reap_every
                    if self.scheduler is not None:
                        scheduled = len(self.scheduler.tick())
                        self._bump("scheduled", scheduled)
                except Exception as exc:
                    # The database may be restarting: keep going, the leases protect the jobs.
                    log.error("worker %s: %s: %s", self.id, type(exc).__name__, exc)
                if claimed or reaped or scheduled:
                    continue
                with self._lock:
                    busy = bool(self._held)
                if until_idle and not busy and claimed is not None:
                    break
                self._wake.wait(self.poll_interval)
        finally:
            self._shut_down()
            self._close_connection()
            if self._engine is not self.platform.engine:
                self._engine.dispose()
        return self.stats

    def _open_engine(self) -> Engine:
        """The worker's own engine: each thread keeps one connection, outside the platform's pool.

        Sharing the platform's pool, busy executors would hold all of it and starve what their own
        steps (and the scheduler) open through ``platform.sessions``.
        """
        url = self.platform.engine.url
        if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
            return self.platform.engine  # an in-memory database lives only in the platform's engine
        return create_db_engine(
            url.render_as_string(hide_password=False), pool_size=self.concurrency + 1, max_overflow=2
        )

    def _shut_down(self) -> None:
        self._stopping.set()
        unstarted: list[queue.ClaimedJob] = []
        while True:
            try:
                item = self._buffer.get_nowait()
            except stdlib_queue.Empty:
                break
            if item is not None:
                unstarted.append(item)
        self._release(unstarted)
        for _ in self._executors:
            self._buffer.put(None)
        if self._aborted.is_set():
            return
        for thread in self._executors:
            while thread.is_alive() and not self._aborted.is_set():
                thread.join(0.2)
                # Leases must stay fresh while the last steps finish.
                try:
                    self._heartbeat_if_due()
                except Exception as exc:
                    log.error("worker %s: heartbeat failed: %s", self.id, exc)

    # -- the claiming side -----------------------------------------------------------------------

    def _claim(self, kinds: list[str]) -> list[queue.ClaimedJob] | None:
        """Claims what fits; None when there was no room to try."""
        capacity = self.concurrency + self.prefetch
        with self._lock:
            room = capacity - len(self._held)
        # Small top-ups cost a round trip each: wait for a worthwhile batch unless executors idle.
        if room <= 0 or (room * 2 < capacity and not self._buffer.empty()):
            return None
        if not kinds:
            return []
        token = f"{self.id}#{next(self._claims)}"
        with self._unit() as session:
            claimed = queue.claim(
                session,
                owner=token,
                kinds=kinds,
                limit=min(room, self.batch_size),
                lease=self.lease,
                now=self.platform.clock(),
            )
        with self._lock:
            for job in claimed:
                self._held[job.id] = job
        for job in claimed:
            self._buffer.put(job)
        self._bump("claimed", len(claimed))
        return claimed

    def _heartbeat_if_due(self) -> None:
        if time.monotonic() < self._next_heartbeat:
            return
        self._next_heartbeat = time.monotonic() + self.lease.total_seconds() / 3
        with self._lock:
            held = {job_id: job.lease_owner for job_id, job in self._held.items()}
        if held:
            # A job missing from the renewed set either just finished or was taken over; a taken-over
            # job's next write is refused by its compare-and-set, so nothing more is needed here.
            with self._unit() as session:
                queue.heartbeat(session, held, lease=self.lease, now=self.platform.clock())

    def _reap(self) -> int:
        with self._unit() as session:
            reaped = queue.reap_expired(session, now=self.platform.clock())
        if reaped:
            self._bump("reaped", len(reaped))
            log.warning("worker %s: took back jobs %s whose lease expired", self.id, reaped)
        return len(reaped)

    def _release(self, jobs: list[queue.ClaimedJob]) -> None:
        if not jobs:
            return
        try:
            with self._unit() as session:
                self._bump("released", queue.release(session, jobs, now=self.platform.clock()))
        except Exception as exc:
            log.error(
                "worker %s: could not hand back %d jobs (their leases will expire): %s",
                self.id,
                len(jobs),
                exc,
            )
        self._forget(*jobs)

    def _forget(self, *jobs: queue.ClaimedJob) -> None:
        with self._lock:
            for job in jobs:
                self._held.pop(job.id, None)
            room = self.concurrency + self.prefetch - len(self._held)
        # Wake the claiming thread only when a batch is worth claiming (see _claim).
        if room * 2 >= self.concurrency + self.prefetch or self._buffer.empty():
            self._wake.set()

    # -- the executing side ----------------------------------------------------------------------

    def _connection(self) -> Connection:
        """This thread's own connection: no pool checkout, ping or reset per transaction."""
        connection: Connection | None = getattr(self._local, "connection", None)
        if connection is not None and connection.invalidated:
            # The database went away under it (a restart, a failover): start afresh.
            connection.close()
        if connection is None or connection.closed:
            connection = self._engine.connect()
            self._local.connection = connection
        return connection

    def _close_connection(self) -> None:
        connection: Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None

    @contextmanager
    def _unit(self) -> Iterator[Session]:
        """One transaction on this thread's own connection, committed unless it raises."""
        connection = self._connection()
        if connection.in_transaction():
            connection.rollback()  # never join whatever an interrupted caller left open
        session = Session(bind=connection, expire_on_commit=False)
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def _execute_loop(self) -> None:
        try:
            self._execute_jobs()
        finally:
            self._close_connection()

    def _execute_jobs(self) -> None:
        while True:
            job = self._buffer.get()
            if job is None:
                return
            if self._stopping.is_set():
                self._release([job])
                continue
            try:
                self._run_job(job)
            except Exception:
                log.exception("worker %s: job %s: unexpected failure in the worker itself", self.id, job.id)
            finally:
                self._forget(job)

    def _run_job(self, job: queue.ClaimedJob) -> None:
        try:
            task = self.registry.get(job.kind)
        except UnknownTaskError as exc:
            self._fail(job, queue.error_line(exc), retry_in=None, note="unknown kind")
            return
        limit = job.max_attempts or task.retry.max_attempts
        if job.attempts > limit:
            self._fail(
                job,
                f"step '{job.step}' was interrupted {job.attempts - 1} times (worker stopped or stalled)",
                retry_in=None,
                note=f"gave up after {limit} attempts",
                task=task,
            )
            return
        while True:
            if self._stopping.is_set():
                self._release([job])
                return
            status = self._run_step(task, job)
            if status != JobStatus.RUNNING:
                return

    def _run_step(self, task: Task, job: queue.ClaimedJob) -> str | None:
        """Runs the job's current step; returns its new status, or None when the job left our hands."""
        function = task.steps.get(job.step)
        if function is None:
            self._fail(
                job, f"task '{task.name}' has no step '{job.step}'", retry_in=None, note="unknown step"
            )
            return None
        self._bump("steps")
        connection = self._connection()
        context = StepContext(
            job_id=job.id,
            kind=job.kind,
            step=job.step,
            attempt=job.attempts,
            payload=job.payload,
            state=dict(job.state),
            platform=self.platform,
            now=self.platform.clock(),
            connection=connection,
            target=job.target,
        )
        try:
            outcome = function(context)
            session = context.opened_session
            if session is None:
                if not connection.in_transaction():
                    connection.begin()
                transition = queue.finish_step(
                    connection, job, outcome, events=context.events, now=self.platform.clock()
                )
                connection.commit()
            else:
                transition = queue.finish_step(
                    session, job, outcome, events=context.events, now=self.platform.clock()
                )
                session.commit()
        except queue.LeaseLostError:
            self._roll_back(context)
            self._bump("lease_lost")
            log.warning("worker %s: job %s step %s: lease lost, result discarded", self.id, job.id, job.step)
            return None
        except Exception as exc:
            self._roll_back(context)
            self._step_failed(task, job, exc)
            return None
        finally:
            if context.opened_session is not None:
                context.opened_session.close()
        job.step, job.state, job.attempts = transition.step, transition.state, transition.attempts
        self._count(transition.status)
        if transition.status == JobStatus.CANCELLED and task.failure_hook is not None:
            # Cancelled right after a step that committed: undo what the job left behind, separately.
            try:
                with self._unit() as cleanup:
                    self._call_hook(task, job, cleanup, "cancelled on request")
            except Exception as exc:
                log.error("job %s (%s): failure hook failed after cancellation: %s", job.id, job.kind, exc)
        return transition.status

    @staticmethod
    def _roll_back(context: StepContext) -> None:
        if context.opened_session is not None:
            context.opened_session.rollback()
        elif context.connection.in_transaction():
            context.connection.rollback()

    def _step_failed(self, task: Task, job: queue.ClaimedJob, exc: Exception) -> None:
        decision = task.retry.decide(exc, job.attempts, job.max_attempts)
        error = queue.error_line(exc)
        if decision.retry:
            log.info(
                "job %s (%s) step %s attempt %d failed, retrying: %s",
                job.id,
                job.kind,
                job.step,
                job.attempts,
                error,
            )
        elif not isinstance(exc, SslClmError):
            # An error nobody expected is a bug: the traceback goes to the log, the summary to the job.
            log.error("job %s (%s) step %s failed", job.id, job.kind, job.step, exc_info=exc)
        else:
            log.info("job %s (%s) step %s failed: %s", job.id, job.kind, job.step, error)
        self._fail(
            job, error, retry_in=decision.delay if decision.retry else None, note=decision.reason, task=task
        )

    def _call_hook(self, task: Task, job: queue.ClaimedJob, session: Session, error: str) -> None:
        assert task.failure_hook is not None
        context = StepContext(
            job_id=job.id,
            kind=job.kind,
            step=job.step,
            attempt=job.attempts,
            payload=job.payload,
            state=dict(job.state),
            platform=self.platform,
            now=self.platform.clock(),
            connection=session.connection(),
            target=job.target,
            opened_session=session,
        )
        task.failure_hook(context, error)
        session.flush()

    def _record_failure(
        self, job: queue.ClaimedJob, error: str, retry_in: timedelta | None, note: str, task: Task | None
    ) -> str:
        """Records the failed try; a job that ended runs its task's failure hook in the same commit."""
        hook_failed: Exception | None = None
        try:
            with self._unit() as session:
                status = queue.fail_step(
                    session, job, error, retry_in=retry_in, now=self.platform.clock(), note=note
                )
                self._announce_failure(session, job, error, status)
                if task is not None and task.failure_hook is not None and status in _ENDED:
                    try:
                        self._call_hook(task, job, session, error)
                    except Exception as exc:
                        hook_failed = exc
                        raise
        except Exception:
            if hook_failed is None:
                raise
            log.error("job %s (%s): failure hook failed: %s", job.id, job.kind, hook_failed)
            # The end of the job is recorded all the same, without what the hook would have changed.
            with self._unit() as session:
                status = queue.fail_step(
                    session, job, error, retry_in=retry_in, now=self.platform.clock(), note=note
                )
                self._announce_failure(session, job, error, status)
        return status

    def _announce_failure(self, session: Session, job: queue.ClaimedJob, error: str, status: str) -> None:
        """Raises the ``job.failed`` notification event with the record of a job that ended failed."""
        if status == JobStatus.FAILED.value:
            notification_events.raise_job_failed(
                session,
                job_id=job.id,
                kind=job.kind,
                target=job.target,
                error=error,
                now=self.platform.clock(),
            )

    def _fail(
        self,
        job: queue.ClaimedJob,
        error: str,
        *,
        retry_in: timedelta | None,
        note: str,
        task: Task | None = None,
    ) -> None:
        try:
            status = self._record_failure(job, error, retry_in, note, task)
        except queue.LeaseLostError:
            self._bump("lease_lost")
            return
        except Exception as exc:
            log.error(
                "worker %s: could not record the failure of job %s (lease will expire): %s",
                self.id,
                job.id,
                exc,
            )
            return
        if status == JobStatus.QUEUED:
            self._bump("retried")
        else:
            self._count(status)

    def _count(self, status: str) -> None:
        if status in _COUNTED:
            self._bump(_COUNTED[status])

    def _bump(self, counter: str, amount: int = 1) -> None:
        if amount:
            with self._stats_lock:
                setattr(self.stats, counter, getattr(self.stats, counter) + amount)


_ENDED = (JobStatus.FAILED.value, JobStatus.CANCELLED.value)
_COUNTED = {
    JobStatus.SUCCEEDED.value: "succeeded",
    JobStatus.FAILED.value: "failed",
    JobStatus.WAITING.value: "waiting",
    JobStatus.CANCELLED.value: "cancelled",
}
