"""The queue and the worker on real databases (SQLite and PostgreSQL): every state a job can take."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.errors import CARejectedError, CAUnavailableError
from sslclm.jobs import (
    Done,
    ExponentialBackoff,
    FixedDelay,
    Job,
    JobSpec,
    JobStatus,
    Next,
    StepContext,
    TaskRegistry,
    Wait,
    Worker,
    enqueue,
    enqueue_many,
    queue,
    resume,
)
from sslclm.jobs.models import JobEvent

START = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime = START) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, **delta: float) -> None:
        with self._lock:
            self.now += timedelta(**delta)


@pytest.fixture
def clock(platform: Platform) -> FakeClock:
    fake = FakeClock()
    platform.clock = fake
    return fake


def add(platform: Platform, kind: str, payload: dict[str, Any] | None = None, **options: Any) -> int:
    with session_scope(platform.sessions) as session:
        return enqueue(session, kind, payload, now=platform.clock(), **options).id


def load(platform: Platform, job_id: int) -> Job:
    with platform.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job


def history(platform: Platform, job_id: int) -> list[str]:
    with platform.sessions() as session:
        events = session.execute(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
        return [event.message for event in events.scalars()]


def drain(platform: Platform, registry: TaskRegistry, **options: Any) -> Worker:
    worker = Worker(platform, registry=registry, poll_interval=0.05, **options)
    worker.run_until_idle(timeout=60)
    return worker


def test_steps_run_in_order_and_hand_state_on(platform: Platform) -> None:
    registry = TaskRegistry()
    seen: list[tuple[str, int, dict[str, Any]]] = []

    @registry.task("demo.greet")
    def greet(ctx: StepContext) -> Next:
        seen.append((ctx.step, ctx.attempt, dict(ctx.state)))
        ctx.progress(f"greeting {ctx.payload['name']}")
        return Next("record", state={"greeting": f"hello {ctx.payload['name']}"}, message="composed")

    @greet.step("record")
    def record(ctx: StepContext) -> Done:
        seen.append((ctx.step, ctx.attempt, dict(ctx.state)))
        return Done({"greeting": ctx.state["greeting"]})

    job_id = add(platform, "demo.greet", {"name": "world"}, target="demo:1")
    worker = drain(platform, registry)

    job = load(platform, job_id)
    assert job.status == JobStatus.SUCCEEDED
    assert job.result == {"greeting": "hello world"}
    assert job.state == {"greeting": "hello world"}
    assert job.step == "record" and job.finished_at is not None and job.lease_owner is None
    assert seen == [("start", 1, {}), ("record", 1, {"greeting": "hello world"})]
    assert history(platform, job_id) == ["greeting world", "composed"]
    assert worker.stats.succeeded == 1 and worker.stats.steps == 2


def test_a_step_commits_its_writes_with_the_job(platform: Platform) -> None:
    registry = TaskRegistry()

    @registry.task("demo.write")
    def write(ctx: StepContext) -> Done:
        enqueue(ctx.session, "demo.child", {"parent": ctx.job_id}, now=ctx.now)
        return Done()

    @registry.task("demo.write-then-fail", retry=FixedDelay(max_attempts=1))
    def write_then_fail(ctx: StepContext) -> Done:
        enqueue(ctx.session, "demo.child", {"parent": ctx.job_id}, now=ctx.now)
        raise CARejectedError("refused after writing")

    ok = add(platform, "demo.write")
    failed = add(platform, "demo.write-then-fail")
    drain(platform, registry)
    with platform.sessions() as session:
        parents = [
            job.payload["parent"]
            for job in session.execute(select(Job).where(Job.kind == "demo.child")).scalars()
        ]
    assert parents == [ok]  # the failed step's child job was rolled back with it
    assert load(platform, failed).status == JobStatus.FAILED


def test_retry_with_backoff_then_fail_after_max_attempts(platform: Platform, clock: FakeClock) -> None:
    registry = TaskRegistry()
    tries: list[datetime] = []

    @registry.task(
        "demo.flaky", retry=ExponentialBackoff(max_attempts=3, base=timedelta(seconds=10), jitter=0)
    )
    def flaky(ctx: StepContext) -> None:
        tries.append(ctx.now)
        raise CAUnavailableError("CA answered 503")

    job_id = add(platform, "demo.flaky")
    drain(platform, registry)
    job = load(platform, job_id)
    assert (job.status, job.attempts) == (JobStatus.QUEUED, 1)
    assert job.run_after == START + timedelta(seconds=10)
    assert job.last_error == "ca-unavailable: CA answered 503"

    drain(platform, registry)  # not due yet: nothing runs
    assert len(tries) == 1
    clock.advance(seconds=10)
    drain(platform, registry)
    job = load(platform, job_id)
    assert (job.status, job.attempts, job.run_after) == (
        JobStatus.QUEUED,
        2,
        clock.now + timedelta(seconds=20),
    )
    clock.advance(seconds=20)
    worker = drain(platform, registry)
    job = load(platform, job_id)
    assert (job.status, job.attempts) == (JobStatus.FAILED, 3)
    assert job.last_error == "ca-unavailable: CA answered 503"
    assert worker.stats.failed == 1
    assert history(platform, job_id) == [
        "attempt 1 failed: ca-unavailable: CA answered 503; retrying in 10s",
        "attempt 2 failed: ca-unavailable: CA answered 503; retrying in 20s",
        "failed (gave up after 3 attempts): ca-unavailable: CA answered 503",
    ]


@pytest.mark.parametrize(
    ("error", "last_error"),
    [
        (
            CARejectedError("name example.org is not allowed by the CA"),
            "ca-rejected: name example.org is not allowed by the CA",
        ),
        (KeyError("csr"), "KeyError: 'csr'"),
    ],
)
def test_non_retryable_errors_fail_at_once_with_the_reason(
    platform: Platform, error: Exception, last_error: str
) -> None:
    registry = TaskRegistry()
    calls: list[int] = []

    @registry.task("demo.refused")
    def refused(ctx: StepContext) -> None:
        calls.append(ctx.attempt)
        raise error

    job_id = add(platform, "demo.refused")
    drain(platform, registry)
    job = load(platform, job_id)
    assert (job.status, job.attempts, job.last_error) == (JobStatus.FAILED, 1, last_error)
    assert calls == [1]
    assert history(platform, job_id) == [f"failed (not retryable): {last_error}"]


def test_per_job_max_attempts_wins(platform: Platform) -> None:
    registry = TaskRegistry()

    @registry.task("demo.once", retry=ExponentialBackoff(max_attempts=10))
    def once(ctx: StepContext) -> None:
        raise CAUnavailableError("down")

    job_id = add(platform, "demo.once", max_attempts=1)
    drain(platform, registry)
    assert load(platform, job_id).status == JobStatus.FAILED


def test_cancel_a_queued_job_and_a_running_one(platform: Platform) -> None:
    registry = TaskRegistry()
    ran: list[str] = []

    @registry.task("demo.cancel-me")
    def first(ctx: StepContext) -> Next:
        ran.append(ctx.step)
        # An operator cancels while this step runs (another connection, as the API would).
        with session_scope(ctx.platform.sessions) as other:
            queue.request_cancel(other, ctx.job_id, now=ctx.now)
        return Next("second")

    @first.step("second")
    def second(ctx: StepContext) -> Done:
        ran.append(ctx.step)
        return Done()

    queued = add(platform, "demo.other")
    with session_scope(platform.sessions) as session:
        assert queue.request_cancel(session, queued, now=platform.clock()).status == JobStatus.CANCELLED
    running = add(platform, "demo.cancel-me")
    worker = drain(platform, registry)

    assert ran == ["start"]  # the current step finished; the next one never started
    job = load(platform, running)
    assert (job.status, job.step, job.cancel_requested) == (JobStatus.CANCELLED, "second", True)
    assert history(platform, running) == ["cancellation requested", "cancelled on request"]
    assert worker.stats.cancelled == 1
    with session_scope(platform.sessions) as session, pytest.raises(Exception, match="already cancelled"):
        queue.request_cancel(session, running, now=platform.clock())


def test_dedupe_key_returns_the_active_job(platform: Platform) -> None:
    registry = TaskRegistry()

    @registry.task("demo.renew")
    def renew(ctx: StepContext) -> None:
        return None

    first = add(platform, "demo.renew", {"n": 1}, dedupe_key="renew:42")
    again = add(platform, "demo.renew", {"n": 2}, dedupe_key="renew:42")
    assert again == first
    with session_scope(platform.sessions) as session:
        added = enqueue_many(
            session,
            [JobSpec("demo.renew", dedupe_key="renew:42"), JobSpec("demo.renew", dedupe_key="renew:43")],
            now=platform.clock(),
        )
    assert added == 1
    drain(platform, registry)
    after = add(platform, "demo.renew", {"n": 3}, dedupe_key="renew:42")
    assert after != first  # a finished job frees its key
    assert load(platform, first).payload == {"n": 1}


def test_expired_lease_is_taken_over_and_the_stale_worker_is_fenced(
    platform: Platform, clock: FakeClock
) -> None:
    registry = TaskRegistry()

    @registry.task("demo.takeover")
    def takeover(ctx: StepContext) -> Done:
        return Done({"by": "second worker"})

    job_id = add(platform, "demo.takeover")
    with session_scope(platform.sessions) as session:
        (stale,) = queue.claim(
            session,
            owner="dead-worker#1",
            kinds=["demo.takeover"],
            limit=5,
            lease=timedelta(seconds=30),
            now=clock(),
        )
    drain(platform, registry)  # the lease is still valid: nobody else may run it
    assert load(platform, job_id).status == JobStatus.RUNNING

    clock.advance(seconds=31)
    worker = drain(platform, registry)
    job = load(platform, job_id)
    assert (job.status, job.result, job.attempts) == (JobStatus.SUCCEEDED, {"by": "second worker"}, 2)
    assert worker.stats.reaped == 1
    assert history(platform, job_id)[0] == (
        "lease of dead-worker#1 expired during step start (worker stopped or stalled)"
    )
    # The first worker wakes up and tries to record its result: refused.
    with session_scope(platform.sessions) as session, pytest.raises(queue.LeaseLostError):
        queue.finish_step(session, stale, Done({"by": "stale worker"}), now=clock())
    assert load(platform, job_id).result == {"by": "second worker"}


def test_a_job_that_keeps_killing_workers_is_given_up(platform: Platform, clock: FakeClock) -> None:
    registry = TaskRegistry()

    @registry.task("demo.poison", retry=ExponentialBackoff(max_attempts=2))
    def poison(ctx: StepContext) -> None:
        return None

    job_id = add(platform, "demo.poison")
    for n in range(2):
        with session_scope(platform.sessions) as session:
            queue.claim(
                session,
                owner=f"w{n}#1",
                kinds=["demo.poison"],
                limit=1,
                lease=timedelta(seconds=5),
                now=clock(),
            )
        clock.advance(seconds=6)
        with session_scope(platform.sessions) as session:
            assert queue.reap_expired(session, now=clock()) == [job_id]
    drain(platform, registry)
    job = load(platform, job_id)
    assert job.status == JobStatus.FAILED
    assert history(platform, job_id)[-1] == (
        "failed (gave up after 2 attempts): step 'start' was interrupted 2 times (worker stopped or stalled)"
    )


def test_wait_polls_later_and_resume_wakes_a_parked_job(platform: Platform, clock: FakeClock) -> None:
    registry = TaskRegistry()
    polls: list[int] = []

    @registry.task("demo.async-ca")
    def submit(ctx: StepContext) -> Wait:
        return Wait("CA accepted the order", delay=timedelta(minutes=5), step="collect", state={"ref": "abc"})

    @submit.step("collect")
    def collect(ctx: StepContext) -> Wait | Next:
        polls.append(ctx.attempt)
        if len(polls) < 2:
            return Wait("still pending", delay=timedelta(minutes=5))
        return Next("approve", state={"cert": ctx.state["ref"].upper()})

    @submit.step("approve")
    def approve(ctx: StepContext) -> Wait | Done:
        if not ctx.state.get("approved"):
            return Wait("needs an approver")
        return Done({"cert": ctx.state["cert"]})

    job_id = add(platform, "demo.async-ca")
    drain(platform, registry)
    job = load(platform, job_id)
    assert (job.status, job.step, job.run_after) == (
        JobStatus.WAITING,
        "collect",
        START + timedelta(minutes=5),
    )
    clock.advance(minutes=5)
    drain(platform, registry)
    assert polls == [1]
    clock.advance(minutes=5)
    drain(platform, registry)
    job = load(platform, job_id)
    assert (job.status, job.step, job.run_after, job.attempts) == (JobStatus.WAITING, "approve", None, 0)
    clock.advance(days=3)
    drain(platform, registry)  # waiting for a person: time alone does not wake it
    assert load(platform, job_id).status == JobStatus.WAITING

    with session_scope(platform.sessions) as session:
        resume(session, job_id, now=clock(), state={"approved": True}, message="approved by admin")
    drain(platform, registry)
    job = load(platform, job_id)
    assert (job.status, job.result) == (JobStatus.SUCCEEDED, {"cert": "ABC"})
    assert history(platform, job_id)[-1] == "approved by admin"


def test_unknown_step_fails_the_job(platform: Platform) -> None:
    registry = TaskRegistry()

    @registry.task("demo.typo")
    def typo(ctx: StepContext) -> Next:
        return Next("no-such-step")

    job_id = add(platform, "demo.typo")
    drain(platform, registry)
    job = load(platform, job_id)
    assert job.status == JobStatus.FAILED
    assert job.last_error == "task 'demo.typo' has no step 'no-such-step'"


def test_priority_and_kinds_decide_what_is_claimed(platform: Platform) -> None:
    low = add(platform, "demo.a", priority=0)
    high = add(platform, "demo.a", priority=10)
    other = add(platform, "demo.b", priority=100)
    with session_scope(platform.sessions) as session:
        claimed = queue.claim(
            session, owner="w#1", kinds=["demo.a"], limit=1, lease=timedelta(seconds=30), now=platform.clock()
        )
    assert [job.id for job in claimed] == [high]
    with session_scope(platform.sessions) as session:
        claimed = queue.claim(
            session, owner="w#2", kinds=["demo.a"], limit=5, lease=timedelta(seconds=30), now=platform.clock()
        )
    assert [job.id for job in claimed] == [low]
    assert load(platform, other).status == JobStatus.QUEUED


def test_concurrent_claims_never_share_a_job(platform: Platform) -> None:
    with session_scope(platform.sessions) as session:
        enqueue_many(session, [JobSpec("demo.many") for _ in range(300)], now=platform.clock())
    claimed: list[list[int]] = []
    barrier = threading.Barrier(4)

    def claimer(n: int) -> None:
        mine: list[int] = []
        barrier.wait()
        while True:
            with session_scope(platform.sessions) as session:
                batch = queue.claim(
                    session,
                    owner=f"w{n}#1",
                    kinds=["demo.many"],
                    limit=7,
                    lease=timedelta(seconds=30),
                    now=platform.clock(),
                )
            if not batch:
                break
            mine.extend(job.id for job in batch)
        claimed.append(mine)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [job_id for mine in claimed for job_id in mine]
    assert len(every) == len(set(every)) == 300


def test_graceful_stop_finishes_the_step_and_hands_the_job_back(platform: Platform) -> None:
    registry = TaskRegistry()
    inside = threading.Event()
    release = threading.Event()

    @registry.task("demo.slow")
    def slow(ctx: StepContext) -> Next:
        inside.set()
        assert release.wait(30)
        return Next("after")

    @slow.step("after")
    def after(ctx: StepContext) -> Done:
        return Done()

    job_id = add(platform, "demo.slow")
    waiting = [add(platform, "demo.slow") for _ in range(2)]
    worker = Worker(platform, registry=registry, concurrency=1, poll_interval=0.05)
    worker.start()
    assert inside.wait(30)
    worker.stop(timeout=0)  # ask, without waiting
    release.set()
    worker.stop(timeout=30)
    job = load(platform, job_id)
    assert (job.status, job.step, job.attempts, job.lease_owner) == (JobStatus.QUEUED, "after", 0, None)
    for other in waiting:
        assert (load(platform, other).status, load(platform, other).attempts) == (JobStatus.QUEUED, 0)
    assert worker.stats.released == 3

    drain(platform, registry)  # another worker resumes at the step after the one that finished
    assert load(platform, job_id).status == JobStatus.SUCCEEDED


def test_retry_a_failed_job_from_the_step_that_failed(platform: Platform) -> None:
    registry = TaskRegistry()
    broken = {"on": True}

    @registry.task("demo.fixable")
    def first(ctx: StepContext) -> Next:
        return Next("second", state={"first": "done"})

    @first.step("second")
    def second(ctx: StepContext) -> Done:
        if broken["on"]:
            raise CARejectedError("profile forbids this name")
        return Done({"state": dict(ctx.state)})

    job_id = add(platform, "demo.fixable")
    drain(platform, registry)
    assert load(platform, job_id).status == JobStatus.FAILED
    broken["on"] = False
    with session_scope(platform.sessions) as session:
        queue.requeue(session, job_id, now=platform.clock())
    drain(platform, registry)
    job = load(platform, job_id)
    assert (job.status, job.result) == (JobStatus.SUCCEEDED, {"state": {"first": "done"}})


def test_prune_removes_finished_jobs_and_their_history(platform: Platform, clock: FakeClock) -> None:
    registry = TaskRegistry()

    @registry.task("demo.note")
    def note(ctx: StepContext) -> Done:
        ctx.progress("noted")
        return Done()

    old = add(platform, "demo.note")
    drain(platform, registry)
    clock.advance(days=40)
    kept = add(platform, "demo.note")
    with session_scope(platform.sessions) as session:
        assert queue.prune_finished(session, finished_before=clock() - timedelta(days=30)) == 1
    with platform.sessions() as session:
        assert session.get(Job, old) is None
        assert session.get(Job, kept) is not None
    assert history(platform, old) == []
