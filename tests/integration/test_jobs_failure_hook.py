"""A task's failure hook: run when a job ends failed or cancelled, in the transaction that records it,
so a workflow can undo what its earlier steps left behind (the issuance workflow deletes its key)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text, update

from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.errors import CAUnavailableError, InvalidInputError
from sslclm.jobs import Done, Job, JobStatus, Next, NoRetry, StepContext, TaskRegistry, Worker, enqueue
from sslclm.jobs.retry import FixedDelay


@pytest.fixture
def effects(platform: Platform) -> Iterator[None]:
    with platform.engine.begin() as connection:
        connection.execute(
            text("CREATE TABLE hook_effects (job_id INTEGER, step TEXT, error TEXT, made TEXT)")
        )
    yield
    with platform.engine.begin() as connection:
        connection.execute(text("DROP TABLE hook_effects"))


def _registry(failure: Exception | None, *, hook_raises: bool = False, cancel: bool = False) -> TaskRegistry:
    registry = TaskRegistry()

    @registry.task("test.hooked", retry=FixedDelay(max_attempts=2) if failure is None else NoRetry())
    def start(ctx: StepContext) -> Next:
        return Next("work", {"made": f"thing-{ctx.job_id}"})

    @start.step("work")
    def work(ctx: StepContext) -> Next:
        if cancel:
            # An operator cancels while the step runs: the job stops before its next step.
            with ctx.platform.engine.begin() as connection:
                connection.execute(update(Job).where(Job.id == ctx.job_id).values(cancel_requested=True))
            return Next("never")
        if failure is not None:
            raise failure
        raise CAUnavailableError("the CA is down")

    @start.step("never")
    def never(ctx: StepContext) -> Done:
        raise AssertionError("a cancelled job ran on")

    @start.on_failure
    def undo(ctx: StepContext, error: str) -> None:
        if hook_raises:
            raise RuntimeError("the hook itself is broken")
        ctx.session.execute(
            text("INSERT INTO hook_effects VALUES (:job, :step, :error, :made)"),
            {"job": ctx.job_id, "step": ctx.step, "error": error, "made": ctx.state.get("made")},
        )

    return registry


def _run(platform: Platform, registry: TaskRegistry) -> tuple[Job, list[tuple[object, ...]]]:
    with session_scope(platform.sessions) as session:
        job_id = enqueue(session, "test.hooked", {}, now=platform.clock()).id
    Worker(platform, registry=registry, concurrency=1, poll_interval=0.05).run_until_idle(timeout=60)
    with platform.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        rows = [tuple(row) for row in session.execute(text("SELECT * FROM hook_effects"))]
    return job, rows


def test_a_failed_job_runs_the_hook_with_its_state_and_error(platform: Platform, effects: None) -> None:
    job, rows = _run(platform, _registry(InvalidInputError("the names are not allowed")))
    assert job.status == JobStatus.FAILED
    assert rows == [(job.id, "work", "invalid-input: the names are not allowed", f"thing-{job.id}")]


def test_a_job_that_will_be_retried_does_not_run_it(platform: Platform, effects: None) -> None:
    job, rows = _run(platform, _registry(None))
    assert job.status == JobStatus.QUEUED and job.attempts == 1
    assert rows == []


def test_a_broken_hook_does_not_keep_the_job_from_failing(platform: Platform, effects: None) -> None:
    job, rows = _run(platform, _registry(InvalidInputError("nope"), hook_raises=True))
    assert job.status == JobStatus.FAILED and job.last_error == "invalid-input: nope"
    assert rows == []


def test_a_job_cancelled_during_a_step_runs_it(platform: Platform, effects: None) -> None:
    job, rows = _run(platform, _registry(None, cancel=True))
    assert job.status == JobStatus.CANCELLED
    assert [(r[0], r[2]) for r in rows] == [(job.id, "cancelled on request")]
