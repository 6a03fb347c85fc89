"""Stores hosted on agents: which agent runs a store connection, and the sealed jobs sent to it.

A store connection is hosted on one agent (``connections.agent_id``) or on whichever agent carries
a label (``connections.agent_label``); neither means the server runs it. The jobs for a hosted store
carry its whole configuration, secrets included, and often a private key: the server keeps such a
payload sealed with the master key in ``agent_jobs`` and unseals it only to hand it to the agent over
the mutual-TLS channel (``opened``); once the result is in, the payload is dropped.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from sslclm.agents import queue, service
from sslclm.agents.models import Agent, AgentJob, AgentStatus
from sslclm.audit.service import AuditContext, record
from sslclm.core.platform import Platform
from sslclm.deployments.service import store_connection
from sslclm.errors import ConflictError, InvalidInputError
from sslclm.protocol import (
    SEALED_KINDS,
    STORE_DEPLOY,
    STORE_INVENTORY,
    STORE_REMOVE,
    SealedPayload,
    StoreDeployPayload,
    StoreInventoryPayload,
    StoreRemovePayload,
    StoreTarget,
)
from sslclm.protocol import AgentJob as AgentJobMessage
from sslclm.workflows.connections import unseal_secrets
from sslclm.workflows.models import Connection

PLAIN: dict[str, type[BaseModel]] = {
    STORE_DEPLOY: StoreDeployPayload,
    STORE_REMOVE: StoreRemovePayload,
    STORE_INVENTORY: StoreInventoryPayload,
}


@dataclass(frozen=True, slots=True)
class Host:
    """Where a hosted store runs: one agent, or any agent with ``label``."""

    agent: Agent | None
    label: str | None

    @property
    def name(self) -> str:
        return f"agent '{self.agent.name}'" if self.agent is not None else f"agents labelled '{self.label}'"


def host_of(session: Session, connection: Connection) -> Host | None:
    """The agent (or label) running ``connection``; None when the server runs it."""
    if connection.agent_id is not None:
        agent = session.get(Agent, connection.agent_id)
        if agent is None:
            raise ConflictError(
                f"store '{connection.name}' is hosted on agent {connection.agent_id}, which no longer exists",
                field="store",
            )
        return Host(agent, None)
    if connection.agent_label:
        return Host(None, connection.agent_label)
    return None


def describe_host(session: Session, connection: Connection) -> dict[str, Any]:
    host = host_of(session, connection)
    return {
        "store": connection.name,
        "store_id": connection.id,
        "type": connection.type_key,
        "agent": host.agent.name if host and host.agent else None,
        "agent_id": host.agent.id if host and host.agent else None,
        "label": host.label if host else None,
        "runs_on": host.name if host else "server",
    }


def host_store(
    session: Session,
    ctx: AuditContext,
    platform: Platform,
    ref: str | int,
    *,
    agent: str | None = None,
    label: str | None = None,
) -> Connection:
    """Hosts the store on one agent or on the agents with ``label``; with neither, on the server."""
    if agent is not None and label is not None:
        raise InvalidInputError("host the store on an agent or on a label, not both", field="agent")
    connection = store_connection(session, ref)
    before = describe_host(session, connection)
    agent_row: Agent | None = None
    if agent is not None:
        agent_row = service.get_agent(session, agent)
        if agent_row.status == AgentStatus.REVOKED:
            raise ConflictError(f"agent '{agent_row.name}' is revoked", field="agent")
        declared = (agent_row.capabilities or {}).get("connectors") or []
        if connection.type_key not in declared:
            raise ConflictError(
                f"agent '{agent_row.name}' does not run '{connection.type_key}' stores "
                f"(it runs {', '.join(declared) or 'none'})",
                field="agent",
            )
    if label is not None:
        label = label.strip()
        if not label or len(label) > 64:
            raise InvalidInputError("a label is 1 to 64 characters", field="label")
    connection.agent_id = agent_row.id if agent_row is not None else None
    connection.agent_label = label
    connection.updated_at = platform.clock()
    session.flush()
    after = describe_host(session, connection)
    record(
        session,
        ctx,
        "store.host",
        "connection",
        connection.id,
        {"store": connection.name, "before": before["runs_on"], "after": after["runs_on"]},
    )
    return connection


# --- sealed payloads -----------------------------------------------------------------------------


def _aad(kind: str, connection_id: int | None) -> bytes:
    return f"agent-job:{kind}:{connection_id}".encode()


def target_of(platform: Platform, connection: Connection) -> StoreTarget:
    """The store as the agent builds it: type and full configuration, secrets included."""
    config = {**connection.config, **unseal_secrets(platform, connection)}
    return StoreTarget(name=connection.name, type=connection.type_key, config=config)


def sealed(
    platform: Platform, kind: str, body: BaseModel, *, connection_id: int, binding_id: int | None = None
) -> dict[str, Any]:
    """``body`` sealed for storage in ``agent_jobs``, with the ids the server needs beside it."""
    plain = orjson.dumps(body.model_dump(mode="json"))
    blob = platform.envelope.encrypt(plain, _aad(kind, connection_id))
    return SealedPayload(
        sealed=base64.b64encode(blob).decode(), connection_id=connection_id, binding_id=binding_id
    ).model_dump()


def opened(platform: Platform, job: AgentJobMessage) -> AgentJobMessage:
    """The job as the agent must see it: a sealed payload unsealed (for the mutual-TLS answer only)."""
    if job.kind not in SEALED_KINDS or "sealed" not in job.payload:
        return job
    try:
        wrapper = SealedPayload.model_validate(job.payload)
        plain = platform.envelope.decrypt(
            base64.b64decode(wrapper.sealed), _aad(job.kind, wrapper.connection_id)
        )
        payload = PLAIN[job.kind].model_validate(orjson.loads(plain)).model_dump(mode="json")
    except (binascii.Error, ValueError, ValidationError):
        raise ConflictError(f"the payload of agent job {job.id} cannot be unsealed", field="job_id") from None
    return AgentJobMessage(id=job.id, attempt=job.attempt, kind=job.kind, payload=payload)


def dispatch_store_job(
    session: Session,
    ctx: AuditContext,
    platform: Platform,
    connection: Connection,
    kind: str,
    body: BaseModel,
    *,
    job_id: int | None = None,
    binding_id: int | None = None,
) -> tuple[AgentJob, Host]:
    """Queues ``kind`` for the agent hosting ``connection``, its payload sealed at rest."""
    host = host_of(session, connection)
    if host is None:
        raise ConflictError(f"store '{connection.name}' is not hosted on an agent", field="store")
    job = queue.dispatch(
        session,
        ctx,
        kind=kind,
        payload=sealed(platform, kind, body, connection_id=connection.id, binding_id=binding_id),
        agent=host.agent,
        label=host.label,
        job_id=job_id,
        now=platform.clock(),
    )
    return job, host


def forget_payload(job: AgentJob) -> None:
    """Drops a finished job's sealed payload: keys and passwords have no business staying in the queue."""
    if job.kind in SEALED_KINDS and job.payload:
        wrapper = dict(job.payload)
        wrapper.pop("sealed", None)
        job.payload = wrapper
