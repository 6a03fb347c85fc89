"""Registration tokens, agent records and identities: the rules both the API and the listener follow.

Every function works in the caller's session; the caller commits (one commit per unit of work).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from sslclm.agents.ca import AgentCa, renew_after
from sslclm.agents.models import Agent, AgentJob, AgentJobStatus, AgentStatus, AgentToken
from sslclm.audit.service import AuditContext, record
from sslclm.auth.secrets import hash_token
from sslclm.core.clock import as_utc
from sslclm.errors import (
    AuthenticationError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from sslclm.jobs.models import Job, JobStatus
from sslclm.jobs.queue import resume
from sslclm.pki.identity import IdentityFacts
from sslclm.protocol import (
    HeartbeatRequest,
    HeartbeatResponse,
    RegisterRequest,
    RegisterResponse,
)
from sslclm.protocol.messages import LABEL_PATTERN

log = logging.getLogger(__name__)

AGENT_TOKEN_PREFIX = "sslclm_agent_"
DEFAULT_TOKEN_TTL = timedelta(hours=24)
MAX_TOKEN_TTL = timedelta(days=30)
DEFAULT_HEARTBEAT_SECONDS = 30
# An agent is offline after this many heartbeats in a row did not arrive.
MISSED_HEARTBEATS = 3


def heartbeat_seconds() -> int:
    """How often agents are told to report; ``SSLCLM_AGENT_HEARTBEAT_SECONDS`` overrides it."""
    raw = os.environ.get("SSLCLM_AGENT_HEARTBEAT_SECONDS", "")
    try:
        value = int(raw) if raw else DEFAULT_HEARTBEAT_SECONDS
    except ValueError:
        return DEFAULT_HEARTBEAT_SECONDS
    return min(max(value, 1), 3600)


# --- tokens ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IssuedToken:
    row: AgentToken
    secret: str  # shown once; only its hash is kept


def _check_labels(labels: list[str]) -> list[str]:
    pattern = re.compile(LABEL_PATTERN)
    for label in labels:
        if not pattern.match(label):
            raise InvalidInputError(
                f"label {label!r} must be lowercase letters, digits and . _ : - (at most 63)", field="labels"
            )
    return sorted(set(labels))


def create_token(
    session: Session,
    ctx: AuditContext,
    *,
    labels: list[str],
    description: str,
    ttl: timedelta,
    now: datetime,
) -> IssuedToken:
    if ttl <= timedelta(0) or ttl > MAX_TOKEN_TTL:
        raise InvalidInputError("a registration token lives between 1 second and 30 days", field="ttl")
    if len(description) > 200:
        raise InvalidInputError("the description is at most 200 characters", field="description")
    secret = AGENT_TOKEN_PREFIX + secrets.token_urlsafe(32)
    row = AgentToken(
        token_hash=hash_token(secret),
        description=description,
        labels=_check_labels(labels),
        created_by=ctx.actor,
        created_at=now,
        expires_at=now + ttl,
    )
    session.add(row)
    session.flush()
    record(
        session,
        ctx,
        "agent.token-created",
        "agent_token",
        row.id,
        {"labels": row.labels, "expires_at": row.expires_at.isoformat()},
        occurred_at=now,
    )
    return IssuedToken(row, secret)


def list_tokens(session: Session, *, include_finished: bool = False) -> list[AgentToken]:
    query = select(AgentToken).order_by(AgentToken.id)
    if not include_finished:
        query = query.where(AgentToken.used_at.is_(None), AgentToken.revoked_at.is_(None))
    return list(session.execute(query).scalars())


def token_state(token: AgentToken, now: datetime) -> str:
    if token.revoked_at is not None:
        return "revoked"
    if token.used_at is not None:
        return "used"
    if as_utc(token.expires_at) <= now:
        return "expired"
    return "active"


def revoke_token(session: Session, ctx: AuditContext, token_id: int, *, now: datetime) -> AgentToken:
    token = session.get(AgentToken, token_id)
    if token is None:
        raise NotFoundError(f"no registration token {token_id}", field="token_id")
    if token.revoked_at is None:
        token.revoked_at = now
        record(session, ctx, "agent.token-revoked", "agent_token", token.id, {}, occurred_at=now)
    return token


# --- registration ----------------------------------------------------------------------------------


def _usable_token(session: Session, secret: str, now: datetime) -> AgentToken:
    token = session.execute(
        select(AgentToken).where(AgentToken.token_hash == hash_token(secret)).with_for_update()
    ).scalar_one_or_none()
    # One message for unknown, used, revoked and expired alike would hide the operator's mistake;
    # the token itself is secret, its state is not.
    if token is None:
        raise AuthenticationError("unknown registration token")
    state = token_state(token, now)
    if state != "active":
        raise AuthenticationError(f"this registration token is {state}; create a new one")
    return token


def register(
    session: Session,
    ca: AgentCa,
    body: RegisterRequest,
    *,
    address: str | None,
    server_ca_pem: str,
    now: datetime,
) -> RegisterResponse:
    """Consumes the one-time token and issues the agent's first identity certificate."""
    token = _usable_token(session, body.token, now)
    labels = _check_labels(body.labels)
    refused = [label for label in labels if label not in token.labels]
    if refused:
        raise PermissionDeniedError(
            f"this token does not allow the label(s) {', '.join(refused)}", field="labels"
        )
    if session.execute(select(Agent.id).where(Agent.name == body.name)).first() is not None:
        raise ConflictError(f"an agent named '{body.name}' is already registered", field="name")
    identity = ca.issue(body.csr_pem, body.name, now=now)
    # Compare-and-set: of two registrations racing with one token, only one gets it.
    claimed = session.execute(
        update(AgentToken)
        .where(AgentToken.id == token.id, AgentToken.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if getattr(claimed, "rowcount", 1) != 1:
        raise AuthenticationError("this registration token is used; create a new one")
    capabilities = body.capabilities.model_dump()
    agent = Agent(
        name=body.name,
        labels=labels,
        status=AgentStatus.ONLINE.value,
        capabilities=capabilities,
        version=body.capabilities.version or None,
        hostname=body.capabilities.hostname or None,
        address=address,
        cert_serial=identity.serial,
        cert_fingerprint=identity.fingerprint,
        cert_not_after=identity.not_after,
        token_id=token.id,
        registered_at=now,
        last_seen_at=now,
    )
    session.add(agent)
    session.flush()
    session.execute(
        update(AgentToken)
        .where(AgentToken.id == token.id)
        .values(used_by_agent_id=agent.id)
        .execution_options(synchronize_session=False)
    )
    record(
        session,
        AuditContext(actor=f"agent:{agent.name}", source_address=address),
        "agent.registered",
        "agent",
        agent.id,
        {"labels": labels, "token_id": token.id, "serial": identity.serial, "hostname": agent.hostname},
        occurred_at=now,
    )
    return RegisterResponse(
        agent_id=agent.id,
        name=agent.name,
        certificate_pem=identity.certificate_pem,
        agent_ca_pem=ca.cert_pem.decode(),
        server_ca_pem=server_ca_pem,
        not_after=identity.not_after,
        heartbeat_seconds=heartbeat_seconds(),
    )


# --- the identity on every call --------------------------------------------------------------------


def authenticate(session: Session, facts: IdentityFacts) -> Agent:
    """The agent a verified client certificate belongs to; refused unless it is the current one."""
    agent = session.execute(
        select(Agent).where(Agent.cert_fingerprint == facts.fingerprint)
    ).scalar_one_or_none()
    if agent is None or agent.cert_serial != facts.serial:
        raise AuthenticationError("this client certificate belongs to no registered agent")
    if agent.status == AgentStatus.REVOKED or agent.revoked_at is not None:
        raise PermissionDeniedError(f"agent '{agent.name}' is revoked")
    return agent


def heartbeat(
    session: Session, agent: Agent, body: HeartbeatRequest, *, address: str | None, now: datetime
) -> HeartbeatResponse:
    values: dict[str, object] = {"last_seen_at": now, "status": AgentStatus.ONLINE.value, "address": address}
    if body.version:
        values["version"] = body.version
    if body.capabilities is not None:
        values["capabilities"] = body.capabilities.model_dump()
        values["hostname"] = body.capabilities.hostname or agent.hostname
    # Guarded by status, so a revocation that lands between the lookup and this write stays.
    session.execute(
        update(Agent)
        .where(Agent.id == agent.id, Agent.status != AgentStatus.REVOKED.value)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if agent.status == AgentStatus.OFFLINE:
        record(
            session,
            AuditContext(actor=f"agent:{agent.name}", source_address=address),
            "agent.online",
            "agent",
            agent.id,
            {},
            occurred_at=now,
        )
    return HeartbeatResponse(
        agent_id=agent.id,
        server_time=now,
        heartbeat_seconds=heartbeat_seconds(),
        renew_after=renew_after(as_utc(agent.cert_not_after)),
    )


def renew_identity(
    session: Session, ca: AgentCa, agent: Agent, csr_pem: str, *, now: datetime
) -> tuple[str, datetime]:
    identity = ca.issue(csr_pem, agent.name, now=now)
    session.execute(
        update(Agent)
        .where(Agent.id == agent.id, Agent.status != AgentStatus.REVOKED.value)
        .values(
            cert_serial=identity.serial,
            cert_fingerprint=identity.fingerprint,
            cert_not_after=identity.not_after,
            last_seen_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    record(
        session,
        AuditContext(actor=f"agent:{agent.name}"),
        "agent.identity-renewed",
        "agent",
        agent.id,
        {"serial": identity.serial, "not_after": identity.not_after.isoformat()},
        occurred_at=now,
    )
    return identity.certificate_pem, identity.not_after


# --- administration --------------------------------------------------------------------------------


def get_agent(session: Session, ref: str | int) -> Agent:
    text = str(ref)
    # Ids are 64-bit: a longer run of digits is a name (or nothing), not an out-of-range integer.
    query = (
        select(Agent).where(Agent.id == int(text))
        if text.isdigit() and len(text) <= 18
        else select(Agent).where(Agent.name == text)
    )
    agent = session.execute(query).scalar_one_or_none()
    if agent is None:
        raise NotFoundError(f"no agent '{text}'", field="agent")
    return agent


def list_agents(session: Session, *, status: str | None = None, label: str | None = None) -> list[Agent]:
    query = select(Agent).order_by(Agent.id)
    if status is not None:
        query = query.where(Agent.status == status)
    rows = list(session.execute(query).scalars())
    return [row for row in rows if label is None or label in (row.labels or [])]


def revoke_agent(session: Session, ctx: AuditContext, ref: str | int, *, now: datetime) -> Agent:
    """Refuses the agent's certificate from the next call on, and cancels the work queued for it."""
    agent = get_agent(session, ref)
    if agent.status == AgentStatus.REVOKED:
        return agent
    agent.status = AgentStatus.REVOKED.value
    agent.revoked_at = now
    # Server jobs parked until one of these answers (a deployment, an enrollment) would wait forever.
    waiting = [
        job_id
        for job_id in session.execute(
            select(AgentJob.job_id).where(
                AgentJob.agent_id == agent.id,
                AgentJob.status.in_((AgentJobStatus.QUEUED.value, AgentJobStatus.RUNNING.value)),
            )
        ).scalars()
        if job_id is not None
    ]
    cancelled = session.execute(
        update(AgentJob)
        .where(
            AgentJob.agent_id == agent.id,
            AgentJob.status.in_((AgentJobStatus.QUEUED.value, AgentJobStatus.RUNNING.value)),
        )
        .values(status=AgentJobStatus.CANCELLED.value, finished_at=now, updated_at=now, error="agent revoked")
        .execution_options(synchronize_session=False)
    )
    record(
        session,
        ctx,
        "agent.revoked",
        "agent",
        agent.id,
        {
            "name": agent.name,
            "serial": agent.cert_serial,
            "jobs_cancelled": getattr(cancelled, "rowcount", 0),
        },
        occurred_at=now,
    )
    for job_id in waiting:
        parked = session.get(Job, job_id)
        if parked is not None and parked.status == JobStatus.WAITING:
            resume(
                session,
                job_id,
                now=now,
                state={"agent_error": f"agent '{agent.name}' was revoked"},
                message="the agent was revoked",
            )
    return agent


def mark_offline(session: Session, *, now: datetime, interval_seconds: int | None = None) -> list[Agent]:
    """Marks online agents whose last heartbeat is more than MISSED_HEARTBEATS intervals old offline."""
    interval = interval_seconds or heartbeat_seconds()
    cutoff = now - timedelta(seconds=interval * MISSED_HEARTBEATS)
    stale = list(
        session.execute(
            select(Agent)
            .where(
                Agent.status == AgentStatus.ONLINE.value,
                or_(Agent.last_seen_at.is_(None), Agent.last_seen_at < cutoff),
            )
            .order_by(Agent.id)
            .limit(1000)
        ).scalars()
    )
    for agent in stale:
        agent.status = AgentStatus.OFFLINE.value
        record(
            session,
            AuditContext(actor="system:agent-liveness"),
            "agent.offline",
            "agent",
            agent.id,
            {
                "name": agent.name,
                "last_seen_at": agent.last_seen_at.isoformat() if agent.last_seen_at else None,
            },
            occurred_at=now,
        )
        _raise_offline_event(session, agent, now)
    return stale


def _raise_offline_event(session: Session, agent: Agent, now: datetime) -> None:
    # The notification events are optional here: without them the audit log and the agent's status
    # still say it, and a failure to raise one must not keep the agent marked online.
    try:
        from sslclm.notifications import events
    except ImportError:
        return
    kind = getattr(events, "AGENT_OFFLINE", "agent.offline")
    seen = agent.last_seen_at.isoformat() if agent.last_seen_at else "never"
    try:
        with session.begin_nested():
            events.raise_event(
                session,
                kind=kind,
                key=f"agent:{agent.id}:{seen}",
                subject=f"agent {agent.name} is offline",
                body=f"No heartbeat from agent {agent.name} since {seen}.",
                details={"agent_id": agent.id, "name": agent.name, "last_seen_at": seen},
                now=now,
            )
    except Exception as exc:
        log.warning("could not raise the agent_offline event for %s: %s", agent.name, exc)


def describe(agent: Agent) -> dict[str, object]:
    return {
        "id": agent.id,
        "name": agent.name,
        "status": agent.status,
        "labels": list(agent.labels or []),
        "version": agent.version,
        "hostname": agent.hostname,
        "address": agent.address,
        "capabilities": dict(agent.capabilities or {}),
        "certificate_serial": agent.cert_serial,
        "certificate_fingerprint": agent.cert_fingerprint,
        "certificate_not_after": as_utc(agent.cert_not_after),
        "registered_at": as_utc(agent.registered_at),
        "last_seen_at": as_utc(agent.last_seen_at) if agent.last_seen_at else None,
        "revoked_at": as_utc(agent.revoked_at) if agent.revoked_at else None,
    }
