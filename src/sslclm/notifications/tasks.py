"""The notification sweep: queue new events and fold finished days into digests, then deliver."""

from __future__ import annotations

from datetime import timedelta

from sslclm.jobs import Done, Next, StepContext, periodic, task
from sslclm.notifications.digest import build_digests
from sslclm.notifications.service import deliver_pending, queue_events

SWEEP_TASK = "notifications.sweep"


@periodic(every=timedelta(minutes=5))
@task(SWEEP_TASK)
def sweep(ctx: StepContext) -> Next:
    """Queues a log row per new event; the unique event key makes a repeated sweep add nothing."""
    queued = queue_events(ctx.session, now=ctx.now)
    return Next("deliver", state={"queued": queued, "digests": build_digests(ctx.session, now=ctx.now)})


@sweep.step("deliver")
def deliver(ctx: StepContext) -> Done:
    # Delivery records each outcome in its own transaction, so a crash mid-way resends at most one.
    queued, digests = ctx.state.get("queued", 0), ctx.state.get("digests", 0)
    return Done({"queued": queued, "digests": digests, **deliver_pending(ctx.platform)})
