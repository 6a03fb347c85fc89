"""Validation of stores hosted on agents: what each store holds, compared with what was deployed.

agents.validate-stores: hourly (and on demand, ``POST /api/v1/stores/{ref}/validate``), queues a
                        ``store-inventory`` job for each hosted store that can list what it holds,
                        naming the aliases of its deployed bindings. The agent reads the store on
                        its host; when its result is accepted (in that same transaction) each
                        binding is compared with what was deployed there and a difference raises the
                        same ``deployment.drift`` audit event and notification as the server's own
                        ``deployments.drift`` check; everything the store holds goes into the
                        inventory as sightings of kind ``store`` (``<agent>:<store>/<alias>``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from sslclm.agents.hosting import dispatch_store_job, host_of, target_of
from sslclm.agents.models import Agent, AgentJob, AgentStatus
from sslclm.audit.service import AuditContext, record
from sslclm.core.platform import Platform
from sslclm.deployments.models import StoreBinding
from sslclm.deployments.service import store_connection
from sslclm.errors import CertificateFormatError, ConflictError, NotFoundError, NotSupportedError
from sslclm.inventory.writer import InventoryWriter, ParsedFile
from sslclm.jobs.registry import periodic, task
from sslclm.jobs.steps import Done, Next, StepContext
from sslclm.notifications.events import raise_drift
from sslclm.pki import load_bundle
from sslclm.protocol import STORE_INVENTORY, SealedPayload, StoreInventoryPayload, StoreInventoryResult
from sslclm.spi.capabilities import Capability, ConnectorKind
from sslclm.workflows.connections import connector_registry
from sslclm.workflows.models import Connection

VALIDATE_TASK = "agents.validate-stores"
STORES_PER_STEP = 100
ALIASES_PER_JOB = 10_000
CHECKED = ("deployed", "drifted")


def _lists_entries(connection: Connection) -> bool:
    try:
        kind = connector_registry().get(ConnectorKind.CERT_STORE, connection.type_key)
    except NotFoundError:
        return False
    return Capability.INVENTORY in kind.capabilities


def _alias_chunks(session: Session, connection_id: int) -> Iterator[list[str]]:
    """The aliases of the store's deployed bindings, in chunks of at most ``ALIASES_PER_JOB``."""
    after = 0
    while True:
        rows = session.execute(
            select(StoreBinding.id, StoreBinding.alias)
            .where(
                StoreBinding.store_connection_id == connection_id,
                StoreBinding.status.in_(CHECKED),
                StoreBinding.id > after,
            )
            .order_by(StoreBinding.id)
            .limit(ALIASES_PER_JOB)
        ).all()
        if rows or after == 0:
            yield [row.alias for row in rows]
        if len(rows) < ALIASES_PER_JOB:
            return
        after = rows[-1].id


def request_validation(
    session: Session,
    ctx: AuditContext,
    platform: Platform,
    connection: Connection,
    *,
    job_id: int | None = None,
) -> list[AgentJob]:
    """Queues the read of a hosted store on its agent; the first job also lists every entry."""
    if host_of(session, connection) is None:
        raise ConflictError(
            f"store '{connection.name}' is not hosted on an agent; 'sslclm store scan' reads it",
            field="store",
        )
    if not _lists_entries(connection):
        raise NotSupportedError(
            f"store type '{connection.type_key}' cannot list what it holds", field="store"
        )
    target = target_of(platform, connection)
    jobs: list[AgentJob] = []
    for number, aliases in enumerate(_alias_chunks(session, connection.id)):
        body = StoreInventoryPayload(store=target, aliases=aliases, limit=10_000 if number == 0 else 0)
        job, _ = dispatch_store_job(session, ctx, platform, connection, STORE_INVENTORY, body, job_id=job_id)
        jobs.append(job)
    return jobs


def validate_store(session: Session, ctx: AuditContext, platform: Platform, ref: str | int) -> list[AgentJob]:
    connection = store_connection(session, ref)
    jobs = request_validation(session, ctx, platform, connection)
    record(
        session,
        ctx,
        "store.validate-requested",
        "connection",
        connection.id,
        {"agent_jobs": [j.id for j in jobs]},
    )
    return jobs


@periodic(every=timedelta(hours=1))
@task(VALIDATE_TASK)
def validate_hosted_stores(ctx: StepContext) -> Next | Done:
    """Queues the validation of every hosted store whose agent is not known to be offline."""
    after = int(ctx.state.get("after_id", 0))
    rows = (
        ctx.session.execute(
            select(Connection)
            .where(
                Connection.kind == ConnectorKind.CERT_STORE.value,
                Connection.enabled.is_(True),
                or_(Connection.agent_id.is_not(None), Connection.agent_label.is_not(None)),
                Connection.id > after,
            )
            .order_by(Connection.id)
            .limit(STORES_PER_STEP)
        )
        .scalars()
        .all()
    )
    queued = int(ctx.state.get("queued", 0))
    skipped = int(ctx.state.get("skipped", 0))
    audit = AuditContext(actor=f"job:{ctx.job_id}")
    for connection in rows:
        host = host_of(ctx.session, connection)
        offline = host is not None and host.agent is not None and host.agent.status != AgentStatus.ONLINE
        if offline or not _lists_entries(connection):
            skipped += 1  # an offline agent would only pile up jobs; it is checked once back
            continue
        queued += len(request_validation(ctx.session, audit, ctx.platform, connection))
    if len(rows) == STORES_PER_STEP:
        return Next("start", {"after_id": rows[-1].id, "queued": queued, "skipped": skipped})
    return Done({"queued": queued, "skipped": skipped})


# --- applying the agent's answer -------------------------------------------------------------------


def _mark(
    session: Session,
    ctx: AuditContext,
    binding: StoreBinding,
    connection: Connection,
    problem: str | None,
    now: datetime,
) -> bool:
    """Sets the binding drifted (with audit and notification on a change) or back to deployed."""
    if problem is None:
        if binding.status == "drifted":
            binding.status, binding.error, binding.updated_at = "deployed", None, now
        return False
    if binding.status != "drifted" or binding.error != problem:
        binding.status, binding.error, binding.updated_at = "drifted", problem, now
        record(
            session,
            ctx,
            "deployment.drift",
            "store_binding",
            binding.id,
            {"store": connection.name, "alias": binding.alias, "finding": problem},
            occurred_at=now,
        )
        raise_drift(
            session,
            binding_id=binding.id,
            store=connection.name,
            alias=binding.alias,
            finding=problem,
            now=now,
        )
    return True


def _bindings(session: Session, connection_id: int, aliases: set[str]) -> Iterator[StoreBinding]:
    after = 0
    while True:
        page = (
            session.execute(
                select(StoreBinding)
                .where(
                    StoreBinding.store_connection_id == connection_id,
                    StoreBinding.status.in_(CHECKED),
                    StoreBinding.id > after,
                )
                .order_by(StoreBinding.id)
                .limit(1000)
            )
            .scalars()
            .all()
        )
        yield from (binding for binding in page if binding.alias in aliases)
        if len(page) < 1000:
            return
        after = page[-1].id


def apply_inventory(
    session: Session,
    platform: Platform,
    agent: Agent,
    job: AgentJob,
    status: str,
    answer: dict[str, Any] | None,
    error: str | None,
) -> dict[str, Any] | None:
    """Compares and records what the agent read; returns the summary kept on the agent job."""
    wrapper = SealedPayload.model_validate(job.payload)
    connection = session.get(Connection, wrapper.connection_id) if wrapper.connection_id else None
    if connection is None:
        return None
    now = platform.clock()
    ctx = AuditContext(actor=f"agent:{agent.name}")
    if status != "succeeded":
        # As the server's own check: a store that cannot be read is a finding for every binding in it.
        unreadable = f"cannot read the store: {(error or 'unknown error')[:500]}"
        drifted = 0
        for binding in _bindings(session, connection.id, _Everything()):
            drifted += _mark(session, ctx, binding, connection, unreadable, now)
        return {"drifted": drifted}
    result = StoreInventoryResult.model_validate(answer or {})
    checked = drifted = 0
    for binding in _bindings(session, connection.id, set(result.held) | set(result.problems)):
        checked += 1
        if binding.alias in result.problems:
            problem: str | None = f"cannot read the store: {result.problems[binding.alias]}"
        else:
            held = result.held.get(binding.alias)
            if held is None:
                problem = f"the store holds nothing under '{binding.alias}'"
            elif held != binding.last_deployed_fingerprint:
                problem = f"the store holds {held}, expected {binding.last_deployed_fingerprint}"
            else:
                problem = None
        drifted += _mark(session, ctx, binding, connection, problem, now)
    files = []
    for entry in result.entries:
        try:
            bundle = load_bundle((entry.certificate_pem + "".join(entry.chain_pem)).encode())
        except (ValueError, CertificateFormatError):
            continue  # one unreadable entry does not stop the rest
        files.append(
            ParsedFile(f"{agent.name}:{connection.name}/{entry.alias}", bundle.infos(), format="PEM")
        )
    inserted = 0
    if files:
        writer = InventoryWriter(platform, source=f"agent:{agent.name}", sighting_kind="store")
        inserted = writer.write(session, files, now=now).inserted
    return {
        "store": connection.name,
        "entries": len(result.entries),
        "new_certificates": inserted,
        "checked": checked,
        "drifted": drifted,
        "truncated": result.truncated,
    }


class _Everything(set[str]):
    """Matches every alias (a failed read concerns every deployed binding of the store)."""

    def __contains__(self, item: object) -> bool:
        return True
