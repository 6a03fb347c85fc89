"""The per-agent job queue: work routed to one agent (by id) or to any agent with a label.

An agent claims its jobs by long-polling; a claimed job is leased to it (``lease_expires_at``),
and each claim raises ``attempt``. A result is accepted once per (job id, attempt): the agent
keeps a result on disk until the server acknowledges it, so it may upload the same result again
after a lost answer or a server restart, and the repeat is acknowledged without being applied
twice. A result for an older attempt (the lease expired and the job was claimed again) is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from sslclm.agents.models import Agent, AgentJob, AgentJobStatus, AgentStatus
from sslclm.audit.service import AuditContext, record
from sslclm.core.clock import as_utc
from sslclm.errors import ConflictError, InvalidInputError, NotFoundError, PermissionDeniedError
from sslclm.jobs.queue import add_events
from sslclm.protocol import (
    DISCOVER_FILESYSTEM,
    PEM_INSTALL,
    PEM_KEYGEN,
    STORE_DEPLOY,
    STORE_INVENTORY,
    STORE_REMOVE,
    DiscoverFilesystemPayload,
    JobResult,
    PemInstallPayload,
    PemKeygenPayload,
    ProgressEvent,
    ResultAck,
    SealedPayload,
)
from sslclm.protocol import AgentJob as AgentJobMessage

LEASE = timedelta(minutes=10)
PAYLOADS: dict[str, type[BaseModel]] = {
    DISCOVER_FILESYSTEM: DiscoverFilesystemPayload,
    PEM_KEYGEN: PemKeygenPayload,
    PEM_INSTALL: PemInstallPayload,
    # Stored sealed (see ``sslclm.agents.hosting``); the agent receives them unsealed.
    STORE_DEPLOY: SealedPayload,
    STORE_REMOVE: SealedPayload,
    STORE_INVENTORY: SealedPayload,
}
# Applies an accepted result in the transaction that records it (see ``sslclm.agents.remote``).
ResultApplier = Callable[[Session, Agent, AgentJob, JobResult], None]
_OPEN = (AgentJobStatus.QUEUED.value, AgentJobStatus.RUNNING.value)
_FINISHED = (AgentJobStatus.SUCCEEDED.value, AgentJobStatus.FAILED.value, AgentJobStatus.CANCELLED.value)


def validate_payload(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    model = PAYLOADS.get(kind)
    if model is None:
        raise InvalidInputError(
            f"unknown agent job kind '{kind}'; choose one of {', '.join(PAYLOADS)}", field="kind"
        )
    try:
        return model.model_validate(payload).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise InvalidInputError(f"payload.{where}: {first.get('msg')}", field="payload") from None


def dispatch(
    session: Session,
    ctx: AuditContext,
    *,
    kind: str,
    payload: dict[str, Any],
    now: datetime,
    agent: Agent | None = None,
    label: str | None = None,
    job_id: int | None = None,
) -> AgentJob:
    """Queues a job for ``agent``, or for whichever agent carrying ``label`` asks first."""
    if (agent is None) == (label is None):
        raise InvalidInputError("route the job to an agent or to a label (one of them)", field="agent")
    body = validate_payload(kind, payload)
    if agent is not None:
        if agent.status == AgentStatus.REVOKED:
            raise ConflictError(f"agent '{agent.name}' is revoked", field="agent")
        declared = (agent.capabilities or {}).get("job_kinds") or []
        if kind not in declared:
            raise ConflictError(f"agent '{agent.name}' does not run '{kind}' jobs", field="kind")
    row = AgentJob(
        agent_id=agent.id if agent else None,
        label=label,
        kind=kind,
        payload=body,
        status=AgentJobStatus.QUEUED.value,
        attempt=0,
        job_id=job_id,
        requested_by=ctx.actor,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    record(
        session,
        ctx,
        "agent.job-queued",
        "agent_job",
        row.id,
        {"kind": kind, "agent": agent.name if agent else None, "label": label},
        occurred_at=now,
    )
    return row


def _routed_to(agent: Agent) -> Any:
    labels = list(agent.labels or [])
    mine = AgentJob.agent_id == agent.id
    return or_(mine, and_(AgentJob.agent_id.is_(None), AgentJob.label.in_(labels))) if labels else mine


def claim(session: Session, agent: Agent, *, now: datetime, limit: int = 10) -> list[AgentJobMessage]:
    """Leases up to ``limit`` of the agent's ready jobs (queued, or leased before and expired)."""
    ready = or_(
        AgentJob.status == AgentJobStatus.QUEUED.value,
        and_(AgentJob.status == AgentJobStatus.RUNNING.value, AgentJob.lease_expires_at < now),
    )
    candidates = select(AgentJob.id).where(_routed_to(agent), ready).order_by(AgentJob.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    ids = list(session.execute(candidates).scalars())
    if not ids:
        return []
    rows = session.execute(
        update(AgentJob)
        .where(AgentJob.id.in_(ids), ready)
        .values(
            status=AgentJobStatus.RUNNING.value,
            attempt=AgentJob.attempt + 1,
            claimed_by=agent.id,
            lease_expires_at=now + LEASE,
            updated_at=now,
        )
        .returning(AgentJob.id, AgentJob.attempt, AgentJob.kind, AgentJob.payload, AgentJob.job_id)
        .execution_options(synchronize_session=False)
    ).all()
    for row in rows:
        if row.job_id is not None:
            add_events(
                session,
                row.job_id,
                [(None, f"agent {agent.name} took job {row.id} (try {row.attempt})")],
                now,
            )
    return [
        AgentJobMessage(id=row.id, attempt=row.attempt, kind=row.kind, payload=row.payload)
        for row in sorted(rows, key=lambda r: r.id)
    ]


def job_for_agent(session: Session, agent: Agent, job_id: int, *, lock: bool = False) -> AgentJob:
    """The job, if it is this agent's: routed to it, or claimed by it. Anything else is refused."""
    query = select(AgentJob).where(AgentJob.id == job_id)
    if lock:
        query = query.with_for_update()
    job = session.execute(query).scalar_one_or_none()
    if job is None:
        raise NotFoundError(f"no agent job {job_id}", field="job_id")
    routed = job.agent_id == agent.id or (job.agent_id is None and job.label in (agent.labels or []))
    claimed_by_other = job.claimed_by is not None and job.claimed_by != agent.id
    if not routed or claimed_by_other:
        raise PermissionDeniedError(f"job {job_id} is not agent '{agent.name}''s", field="job_id")
    return job


def report_progress(
    session: Session, agent: Agent, job_id: int, event: ProgressEvent, *, now: datetime
) -> None:
    job = job_for_agent(session, agent, job_id, lock=True)
    if job.status != AgentJobStatus.RUNNING or job.attempt != event.attempt:
        raise ConflictError(f"job {job_id} try {event.attempt} is not running", field="attempt")
    job.progress = event.message
    job.lease_expires_at = now + LEASE  # progress is proof of life: the lease runs on
    job.updated_at = now
    if job.job_id is not None:
        add_events(session, job.job_id, [(None, f"agent {agent.name}: {event.message}")], now)


def accept_result(
    session: Session,
    agent: Agent,
    job_id: int,
    result: JobResult,
    *,
    now: datetime,
    apply: ResultApplier,
) -> ResultAck:
    """Records a result once; ``apply(session, agent, job, result)`` runs in the same transaction."""
    job = job_for_agent(session, agent, job_id, lock=True)
    if job.status in _FINISHED and job.attempt == result.attempt and job.claimed_by == agent.id:
        return ResultAck(job_id=job.id, attempt=result.attempt, recorded=False)
    if job.status != AgentJobStatus.RUNNING or job.attempt != result.attempt:
        raise ConflictError(
            f"job {job_id} is {job.status} at try {job.attempt}; a result for try {result.attempt} is stale",
            field="attempt",
        )
    # Compare-and-set on (status, attempt): of two uploads racing, one applies and the other acks.
    moved = session.execute(
        update(AgentJob)
        .where(
            AgentJob.id == job.id,
            AgentJob.status == AgentJobStatus.RUNNING.value,
            AgentJob.attempt == result.attempt,
        )
        .values(
            status=result.status,
            result=result.result if result.status == "succeeded" else None,
            error=result.error if result.status == "failed" else None,
            lease_expires_at=None,
            finished_at=now,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if getattr(moved, "rowcount", 1) != 1:
        return ResultAck(job_id=job.id, attempt=result.attempt, recorded=False)
    apply(session, agent, job, result)
    record(
        session,
        AuditContext(actor=f"agent:{agent.name}"),
        "agent.job-finished",
        "agent_job",
        job.id,
        {"kind": job.kind, "status": result.status, "attempt": result.attempt, "error": result.error},
        occurred_at=now,
    )
    return ResultAck(job_id=job.id, attempt=result.attempt, recorded=True)


def list_jobs(session: Session, *, agent_id: int | None = None, limit: int = 100) -> Sequence[AgentJob]:
    query = select(AgentJob).order_by(AgentJob.id.desc()).limit(limit)
    if agent_id is not None:
        query = query.where(or_(AgentJob.agent_id == agent_id, AgentJob.claimed_by == agent_id))
    return list(session.execute(query).scalars())


def describe_job(job: AgentJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "agent_id": job.agent_id,
        "label": job.label,
        "kind": job.kind,
        "status": job.status,
        "attempt": job.attempt,
        "claimed_by": job.claimed_by,
        "progress": job.progress,
        "error": job.error,
        "job_id": job.job_id,
        "requested_by": job.requested_by,
        "created_at": as_utc(job.created_at),
        "finished_at": as_utc(job.finished_at) if job.finished_at else None,
        # Results of discovery can be large; the inventory holds what they found.
        "result_keys": sorted((job.result or {}).keys()),
    }
