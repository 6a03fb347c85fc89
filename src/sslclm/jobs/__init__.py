"""Durable jobs: workflows as state machines of idempotent steps, run by any number of workers.

Define a task kind and its steps::

    from sslclm.jobs import Done, Next, StepContext, task

    @task("demo.greet")
    def greet(ctx: StepContext) -> Next:  # the first step is named "start"
        return Next("record", state={"greeting": f"hello {ctx.payload['name']}"})

    @greet.step("record")
    def record(ctx: StepContext) -> Done:
        ctx.session.add(...)  # committed together with the job's status change
        return Done({"greeting": ctx.state["greeting"]})

Enqueue one inside any transaction (``enqueue(session, "demo.greet", {"name": "x"}, now=...)``)
and run ``sslclm worker --import my.tasks`` (or ``Worker(platform).run_forever()``).
"""

from __future__ import annotations

from sslclm.jobs.models import Job, JobEvent, JobStatus
from sslclm.jobs.periodic import Schedule, Scheduler
from sslclm.jobs.queue import JobSpec, enqueue, enqueue_many, resume
from sslclm.jobs.registry import Task, TaskRegistry, default_registry, load_task_modules, periodic, task
from sslclm.jobs.retry import ExponentialBackoff, FixedDelay, NoRetry, RetryStrategy, is_retryable
from sslclm.jobs.steps import Done, Next, StepContext, Wait
from sslclm.jobs.worker import Worker, WorkerStats

__all__ = [
    "Done",
    "ExponentialBackoff",
    "FixedDelay",
    "Job",
    "JobEvent",
    "JobSpec",
    "JobStatus",
    "Next",
    "NoRetry",
    "RetryStrategy",
    "Schedule",
    "Scheduler",
    "StepContext",
    "Task",
    "TaskRegistry",
    "Wait",
    "Worker",
    "WorkerStats",
    "default_registry",
    "enqueue",
    "enqueue_many",
    "is_retryable",
    "load_task_modules",
    "periodic",
    "resume",
    "task",
]
