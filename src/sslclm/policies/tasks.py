"""Periodic policy work: time-dependent verdicts, and revocation lists.

``policies.reevaluate`` (hourly) re-evaluates only the certificates time may have changed since the
last run (see :mod:`sslclm.policies.incremental`). The first run, with no clock yet, walks the
whole inventory in id order, a batch per step, and starts the clock at the time the walk began.
``policies.refresh-crls`` (every 15 minutes) fetches due CRLs and marks the certificates they list.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sslclm.jobs import Done, Next, StepContext, periodic, task
from sslclm.policies.engine import BATCH, evaluate_batch, evaluate_certificates, rebuild_counts
from sslclm.policies.incremental import clock, evaluate_elapsed, set_clock
from sslclm.policies.revocation import refresh_due

REEVALUATE_TASK = "policies.reevaluate"
REFRESH_CRLS_TASK = "policies.refresh-crls"
CRL_BATCH = 50


@periodic(every=timedelta(hours=1))
@task(REEVALUATE_TASK)
def reevaluate(ctx: StepContext) -> Next | Done:
    """Brings the stored verdicts up to now: what time changed, or everything on the first run."""
    since = clock(ctx.session)
    if since is not None and not ctx.payload.get("full"):
        stats = evaluate_elapsed(ctx.session, since=since, now=ctx.now)
        return Done({"mode": "elapsed", **stats.as_dict()})
    return Next("walk", state={"after_id": 0, "certificates": 0, "started": ctx.now.isoformat()})


@reevaluate.step("walk")
def walk(ctx: StepContext) -> Next | Done:
    """One batch of the full walk; each commit stays small."""
    after = int(ctx.state.get("after_id", 0))
    last, stats = evaluate_batch(
        ctx.session, after_id=after, limit=int(ctx.payload.get("batch", BATCH)), now=ctx.now
    )
    done = int(ctx.state.get("certificates", 0)) + stats.certificates
    if last is None:
        rebuild_counts(ctx.session)
        set_clock(ctx.session, datetime.fromisoformat(str(ctx.state["started"])))
        return Done({"mode": "full", "certificates": done})
    ctx.progress(f"evaluated {done} certificates")
    return Next("walk", state={**ctx.state, "after_id": last, "certificates": done})


@periodic(every=timedelta(minutes=15))
@task(REFRESH_CRLS_TASK)
def refresh_crls(ctx: StepContext) -> Next | Done:
    """Fetches up to ``CRL_BATCH`` due lists per step and re-evaluates the certificates they revoke."""
    stats, revoked = refresh_due(ctx.session, now=ctx.now, limit=int(ctx.payload.get("batch", CRL_BATCH)))
    evaluate_certificates(ctx.session, revoked, now=ctx.now)
    total = {k: int(ctx.state.get(k, 0)) + v for k, v in stats.as_dict().items()}
    if stats.fetched + stats.failed + stats.reapplied >= int(ctx.payload.get("batch", CRL_BATCH)):
        ctx.progress(f"{total['fetched']} fetched, {total['revoked']} certificates revoked")
        return Next("start", state=total)
    return Done(total)
