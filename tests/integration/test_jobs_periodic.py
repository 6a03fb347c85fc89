"""Periodic ticks are de-duplicated in the database, however many schedulers race for them."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.jobs import Job, JobStatus, Schedule, Scheduler, StepContext, TaskRegistry, Worker
from sslclm.jobs.models import PeriodicTick

T0 = datetime(2030, 6, 1, 12, 0, 30, tzinfo=UTC)
EVERY_MINUTE = Schedule(name="sweep", kind="demo.sweep", every=timedelta(minutes=1), payload={"scope": "all"})


def jobs(platform: Platform) -> list[Job]:
    with platform.sessions() as session:
        return list(session.execute(select(Job).order_by(Job.id)).scalars())


def test_one_job_per_due_time(platform: Platform) -> None:
    first = Scheduler(platform, [EVERY_MINUTE])
    second = Scheduler(platform, [EVERY_MINUTE])

    assert len(first.tick(T0)) == 1
    assert second.tick(T0) == []  # the same due time, from another process
    assert first.tick(T0 + timedelta(seconds=20)) == []  # still the same minute
    (job,) = jobs(platform)
    assert job.kind == "demo.sweep"
    assert job.payload == {"scope": "all", "due_at": "2030-06-01T12:00:00+00:00"}

    # The job of the last tick is still queued: the next tick does not stack a second run on it.
    assert second.tick(T0 + timedelta(minutes=1)) == [job.id]
    assert len(jobs(platform)) == 1


def test_a_late_scheduler_enqueues_the_latest_due_time_once(platform: Platform) -> None:
    registry = TaskRegistry()
    runs: list[str] = []

    @registry.task("demo.sweep")
    def sweep(ctx: StepContext) -> None:
        runs.append(ctx.payload["due_at"])

    platform.clock = lambda: T0 + timedelta(hours=4)  # the workers' "now": both jobs are due
    scheduler = Scheduler(platform, [EVERY_MINUTE])
    scheduler.tick(T0)
    Worker(platform, registry=registry, poll_interval=0.05).run_until_idle(timeout=30)
    scheduler.tick(T0 + timedelta(hours=3))  # down for three hours: no backlog of 180 runs
    Worker(platform, registry=registry, poll_interval=0.05).run_until_idle(timeout=30)
    assert runs == ["2030-06-01T12:00:00+00:00", "2030-06-01T15:00:00+00:00"]
    assert {job.status for job in jobs(platform)} == {JobStatus.SUCCEEDED}


def test_racing_schedulers_enqueue_each_tick_exactly_once(platform: Platform) -> None:
    """Eight schedulers (threads with their own connections) tick the same 20 due times at once."""
    schedules = [
        Schedule(name="fast", kind="demo.fast", every=timedelta(seconds=10)),
        Schedule(name="slow", kind="demo.slow", every=timedelta(seconds=30)),
    ]
    times = [T0 + timedelta(seconds=10 * n) for n in range(20)]
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []
    enqueued: list[int] = []
    lock = threading.Lock()

    def scheduler() -> None:
        mine = Scheduler(platform, schedules)
        try:
            for when in times:
                barrier.wait(timeout=30)
                ids = mine.tick(when)
                with lock:
                    enqueued.extend(ids)
                # Finish each job at once so the dedupe key never hides a tick.
                with session_scope(platform.sessions) as session:
                    for job in session.execute(select(Job).where(Job.id.in_(ids))).scalars():
                        job.status = JobStatus.SUCCEEDED.value
                barrier.wait(timeout=30)
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=scheduler) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(enqueued) == len(set(enqueued))
    with platform.sessions() as session:
        per_schedule = dict(
            session.execute(select(PeriodicTick.schedule, func.count()).group_by(PeriodicTick.schedule)).all()
        )
        kinds = dict(session.execute(select(Job.kind, func.count()).group_by(Job.kind)).all())
    assert per_schedule == {"fast": 20, "slow": 7}
    assert kinds == {"demo.fast": 20, "demo.slow": 7}
    assert len(enqueued) == 27


def test_old_ticks_are_pruned(platform: Platform) -> None:
    scheduler = Scheduler(platform, [EVERY_MINUTE])
    scheduler.tick(T0)
    with session_scope(platform.sessions) as session:
        for job in session.execute(select(Job)).scalars():
            job.status = JobStatus.SUCCEEDED.value
    scheduler.tick(T0 + timedelta(days=2))
    with platform.sessions() as session:
        due = list(session.execute(select(PeriodicTick.due_at)).scalars())
    assert due == [datetime(2030, 6, 3, 12, 0, tzinfo=UTC)]


def test_the_worker_runs_the_scheduler(platform: Platform) -> None:
    registry = TaskRegistry()
    ran: list[str] = []

    @registry.periodic(every=timedelta(hours=1))
    @registry.task("demo.hourly")
    def hourly(ctx: StepContext) -> None:
        ran.append(ctx.payload["due_at"])

    worker = Worker(
        platform, registry=registry, poll_interval=0.05, scheduler=Scheduler(platform, registry.schedules())
    )
    worker.run_until_idle(timeout=30)
    worker.run_until_idle(timeout=30)  # the tick is recorded: nothing new this hour
    assert len(ran) == 1
    assert worker.stats.scheduled == 1
