"""Periodic policy work: time-dependent verdicts, and revocation lists.

``policies.reevaluate`` (hourly) re-evaluates only the certificates time may have changed since the
last run (see :mod:`sslclm.policies.incremental`). The first run, with no clock yet, walks the
whole inventory in id order, a batch per step, and starts the clock at the time the walk began.
The same task re-evaluates the whole inventory after a policy set changed on a large inventory
(``{"full": true}``; a walk that began before a later change starts over), and only the
certificates an exemption covers (``{"covered": {"certificate_id", "policy", "check"}}``).
``policies.refresh-crls`` (every 15 minutes) fetches due CRLs and marks the certificates they list.
``policies.evaluate-written`` evaluates certificates a bulk import wrote, after the import, so that
the import's own transactions carry only the writes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sslclm.jobs import Done, Next, StepContext, periodic, task
from sslclm.policies.driver import Driver
from sslclm.policies.engine import BATCH, evaluate_batch, evaluate_certificates, rebuild_counts
from sslclm.policies.incremental import (
    POLICIES_CLOCK,
    certificates_written,
    clock,
    covered,
    covered_condition,
    evaluate_elapsed,
    set_clock,
)
from sslclm.policies.revocation import refresh_due

REEVALUATE_TASK = "policies.reevaluate"
REFRESH_CRLS_TASK = "policies.refresh-crls"
EVALUATE_WRITTEN_TASK = "policies.evaluate-written"
CRL_BATCH = 50


@periodic(every=timedelta(hours=1))
@task(REEVALUATE_TASK)
def reevaluate(ctx: StepContext) -> Next | Done:
    """Brings the stored verdicts up to now: what time changed, or everything on the first run."""
    covered = ctx.payload.get("covered")
    if isinstance(covered, dict):
        return Next("covered", state={"after_id": 0, "certificates": 0})
    since = clock(ctx.session)
    if since is not None and not ctx.payload.get("full"):
        stats = evaluate_elapsed(ctx.session, since=since, now=ctx.now)
        return Done({"mode": "elapsed", **stats.as_dict()})
    return Next("walk", state=_walk_start(ctx))


def _policies_changed_at(ctx: StepContext) -> str | None:
    changed = clock(ctx.session, POLICIES_CLOCK)
    return changed.isoformat() if changed is not None else None


def _walk_start(ctx: StepContext) -> dict[str, Any]:
    return {
        "after_id": 0,
        "certificates": 0,
        "started": ctx.now.isoformat(),
        "policies_changed_at": _policies_changed_at(ctx),
    }


@reevaluate.step("walk")
def walk(ctx: StepContext) -> Next | Done:
    """One batch of the full walk; each commit stays small."""
    started = datetime.fromisoformat(str(ctx.state["started"]))
    if _policies_changed_at(ctx) != ctx.state.get("policies_changed_at"):
        # A policy set changed after the walk began (the change enqueued this same job, which
        # was already running): what it evaluated so far used the old sets.
        ctx.progress("policy sets changed: starting over")
        return Next("walk", state=_walk_start(ctx))
    after = int(ctx.state.get("after_id", 0))
    last, stats = evaluate_batch(
        ctx.session, after_id=after, limit=int(ctx.payload.get("batch", BATCH)), now=ctx.now
    )
    done = int(ctx.state.get("certificates", 0)) + stats.certificates
    if last is None:
        rebuild_counts(ctx.session)
        set_clock(ctx.session, started)
        return Done({"mode": "full", "certificates": done})
    ctx.progress(f"evaluated {done} certificates")
    return Next("walk", state={**ctx.state, "after_id": last, "certificates": done})


@reevaluate.step("covered")
def covered_step(ctx: StepContext) -> Next | Done:
    """One batch of the violations an exemption (granted or withdrawn) covers: their certificates."""
    spec = ctx.payload["covered"]
    condition = covered_condition(spec.get("certificate_id"), spec.get("policy"), spec.get("check"))
    found = covered(
        ctx.session,
        condition,
        after_id=int(ctx.state.get("after_id", 0)),
        limit=int(ctx.payload.get("batch", BATCH)),
    )
    if not found:
        return Done({"mode": "covered", "certificates": int(ctx.state.get("certificates", 0))})
    stats = evaluate_certificates(ctx.session, {cid for _, cid in found}, now=ctx.now)
    done = int(ctx.state.get("certificates", 0)) + stats.certificates
    ctx.progress(f"evaluated {done} certificates")
    return Next("covered", state={"after_id": found[-1][0], "certificates": done})


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


# Holders of the batch's keys that existed before the import (ids below ``older_than``), per key.
_OLDER_HOLDERS_SQL = (
    "SELECT min(id) FROM certificates WHERE id < {mark} AND public_key_sha256 IN "
    "(SELECT public_key_sha256 FROM certificates WHERE {batch}) "
    "GROUP BY public_key_sha256 HAVING count(*) = 1"
)


@task(EVALUATE_WRITTEN_TASK)
def evaluate_written(ctx: StepContext) -> Done:
    """Evaluates certificates an import inserted: payload ``ranges`` of ids ``[after, last]``
    (``after < id <= last``) and ``older_than``, the first id of the import.

    One import writes in several batches, each with a job of its own, so a public key may arrive in
    more than one of them; the certificate that held it alone before the import is found here
    (``certificates_written`` sees one batch's new certificates only) and re-evaluated too.
    """
    driver = Driver(ctx.session)
    older_than = int(ctx.payload.get("older_than", 0))
    ids: list[int] = []
    older: list[int] = []
    batch = f"id > {driver.mark} AND id <= {driver.mark}"
    for after, last in ctx.payload["ranges"]:
        params = [int(after), int(last)]
        ids.extend(row[0] for row in driver.fetch(f"SELECT id FROM certificates WHERE {batch}", params))  # noqa: S608
        if older_than > 1:
            sql = _OLDER_HOLDERS_SQL.format(mark=driver.mark, batch=batch)
            older.extend(row[0] for row in driver.fetch(sql, [older_than, *params]))
    return Done(certificates_written(ctx.session, ids, now=ctx.now, also=older).as_dict())
