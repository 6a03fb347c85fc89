"""The periodic re-evaluation: time moves certificates into expiry windows without any other change."""

from __future__ import annotations

from datetime import timedelta

from sslclm.jobs import Done, Next, StepContext, periodic, task
from sslclm.policies.engine import BATCH, evaluate_batch

REEVALUATE_TASK = "policies.reevaluate"


@periodic(every=timedelta(hours=1))
@task(REEVALUATE_TASK)
def reevaluate(ctx: StepContext) -> Next | Done:
    """Re-evaluates the inventory in id order, one batch per step, so each commit stays small."""
    after = int(ctx.state.get("after_id", 0))
    last, stats = evaluate_batch(
        ctx.session, after_id=after, limit=int(ctx.payload.get("batch", BATCH)), now=ctx.now
    )
    done = int(ctx.state.get("certificates", 0)) + stats.certificates
    if last is None:
        return Done({"certificates": done})
    ctx.progress(f"evaluated {done} certificates")
    return Next("start", state={"after_id": last, "certificates": done})
