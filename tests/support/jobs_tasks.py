"""Task kinds for the worker-crash test, loaded by real worker processes (``--import``).

``test.crash`` has two steps. ``start`` logs that it began (in its own, immediately committed
transaction, so the log survives a kill), then works for a while: the window in which the test
kills a worker. ``record`` writes the job's one effect, a row under a unique key, in the same
transaction as the job's completion: if any step ran to completion twice, the second insert
would violate the key and the job would fail. The test creates both tables.
"""

from __future__ import annotations

import os
import time

from sqlalchemy import text

from sslclm.jobs import Done, Next, StepContext, task


def _log_attempt(ctx: StepContext) -> None:
    with ctx.platform.engine.begin() as connection:
        connection.execute(
            text("INSERT INTO crash_attempts (job_id, step, pid) VALUES (:job, :step, :pid)"),
            {"job": ctx.job_id, "step": ctx.step, "pid": os.getpid()},
        )


@task("test.crash")
def start(ctx: StepContext) -> Next:
    _log_attempt(ctx)
    time.sleep(float(ctx.payload.get("work_seconds", 0.2)))
    return Next("record")


@start.step("record")
def record(ctx: StepContext) -> Done:
    _log_attempt(ctx)
    ctx.session.execute(
        text("INSERT INTO crash_effects (job_id, pid) VALUES (:job, :pid)"),
        {"job": ctx.job_id, "pid": os.getpid()},
    )
    return Done({"pid": os.getpid()})
