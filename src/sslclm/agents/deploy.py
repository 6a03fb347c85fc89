"""Deployments to stores hosted on agents: the ``certificate.deploy`` job hands the work to the agent.

For a binding whose store is hosted on an agent, ``start_deploy`` (``sslclm.deployments.tasks``)
calls :func:`route_to_agent` after writing the history row. That queues a ``store-deploy`` (or
``store-remove``) agent job carrying the connector type, its configuration with secrets, the
certificate, its chain and the key (sealed at rest, see ``sslclm.agents.hosting``), and parks the job.
The agent adds, reloads, verifies and rolls back on its host exactly as the server does for its own
stores; its result resumes the job at ``agent-done``, which records the outcome as a local deployment
would (binding status, history, audit). A failure raises, so the task's failure hook marks the binding
failed and the worker raises the ``job.failed`` notification, as for any deployment.

The key: when the platform holds it, it is sent (unsealed only for the mutual-TLS answer). When the
platform does not (it was made on an agent, ``agents.enroll``), only the SHA-256 of its public key is
sent and the agent uses the key it keeps; an agent that does not hold it fails the deployment.
"""

from __future__ import annotations

from pydantic import BaseModel
from sqlalchemy import select

from sslclm.agents.hosting import dispatch_store_job, host_of, target_of
from sslclm.audit.service import AuditContext
from sslclm.deployments.models import StoreBinding
from sslclm.deployments.service import ChainLink, build_store, chain_for, get_binding, needs_private_key
from sslclm.deployments.tasks import mark_deployed, mark_undeployed, start_deploy
from sslclm.errors import ConnectorError, InvalidInputError, NotFoundError
from sslclm.inventory.models import Certificate
from sslclm.jobs.steps import Done, StepContext, Wait
from sslclm.pki import certificate_to_pem, private_key_to_pem
from sslclm.protocol import (
    STORE_DEPLOY,
    STORE_REMOVE,
    StoreDeployPayload,
    StoreDeployResult,
    StoreRemovePayload,
    VerifyTarget,
)
from sslclm.workflows.models import Connection
from sslclm.workflows.recording import load_key

AGENT_STEP = "agent-done"


def _audit(ctx: StepContext) -> AuditContext:
    return AuditContext(actor=f"job:{ctx.job_id}")


def _platform_key(ctx: StepContext, public_key_sha256: str) -> str | None:
    try:
        return private_key_to_pem(load_key(ctx.session, ctx.platform, public_key_sha256)).decode()
    except NotFoundError:
        return None  # not stored here after all: the agent may hold it


def _deploy_body(ctx: StepContext, binding: StoreBinding, connection: Connection) -> StoreDeployPayload:
    certificate_id = int(ctx.payload["certificate_id"])
    row = ctx.session.execute(
        select(
            Certificate.der,
            Certificate.self_signed,
            Certificate.issuer_id,
            Certificate.has_private_key,
            Certificate.public_key_sha256,
        ).where(Certificate.id == certificate_id)
    ).first()
    if row is None:
        raise NotFoundError(f"certificate {certificate_id} no longer exists", field="certificate")
    key_pem: str | None = None
    key_ref: str | None = None
    if needs_private_key(build_store(ctx.platform, connection)):
        key_pem = _platform_key(ctx, row.public_key_sha256) if row.has_private_key else None
        if key_pem is None:
            key_ref = row.public_key_sha256  # made on an agent: only that agent holds it
    chain = chain_for(ctx.session, ChainLink(row.der, row.self_signed, row.issuer_id))
    verify = None
    if binding.verify_host and binding.verify_port:
        verify = VerifyTarget(
            host=binding.verify_host,
            port=binding.verify_port,
            sni=binding.verify_sni,
            timeout=float(binding.options.get("verify_timeout", 15)),
        )
    return StoreDeployPayload(
        store=target_of(ctx.platform, connection),
        alias=binding.alias,
        certificate_pem=certificate_to_pem(row.der).decode(),
        chain_pem=[certificate_to_pem(der).decode() for der in chain],
        private_key_pem=key_pem,
        key_ref=key_ref,
        verify=verify,
    )


def route_to_agent(ctx: StepContext, binding: StoreBinding, deployment_id: int, action: str) -> Wait | None:
    """Queues the deployment on the agent hosting the binding's store; None when the server runs it."""
    connection = ctx.session.get(Connection, binding.store_connection_id)
    if connection is None or host_of(ctx.session, connection) is None:
        return None
    body: BaseModel
    if action == "deploy":
        kind, body = STORE_DEPLOY, _deploy_body(ctx, binding, connection)
        doing = "deploy to"
    else:
        kind, body = (
            STORE_REMOVE,
            StoreRemovePayload(store=target_of(ctx.platform, connection), alias=binding.alias),
        )
        doing = "remove from"
    job, host = dispatch_store_job(
        ctx.session,
        _audit(ctx),
        ctx.platform,
        connection,
        kind,
        body,
        job_id=ctx.job_id,
        binding_id=binding.id,
    )
    ctx.progress(f"agent job {job.id} queued for {host.name}")
    return Wait(
        reason=f"waiting for {host.name} to {doing} store '{connection.name}'",
        step=AGENT_STEP,
        state={"deployment_id": deployment_id, "agent_job": job.id},
    )


@start_deploy.step(AGENT_STEP)
def agent_done(ctx: StepContext) -> Done:
    """Records what the agent did, as the server records a deployment to its own stores."""
    binding = get_binding(ctx.session, int(ctx.payload["binding_id"]))
    connection = ctx.session.get(Connection, binding.store_connection_id)
    if connection is None:
        raise NotFoundError("the binding's store no longer exists", field="store")
    error = ctx.state.get("agent_error")
    if error:
        raise ConnectorError(f"the agent reported: {error}", retryable=False)
    if str(ctx.payload.get("action", "deploy")) != "deploy":
        mark_undeployed(ctx, binding, connection, agent_job=ctx.state.get("agent_job"))
        return Done({"binding_id": binding.id}, message="removed from the store by the agent")
    answer = ctx.state.get(f"agent_{STORE_DEPLOY.replace('-', '_')}")
    if not isinstance(answer, dict):
        raise InvalidInputError("the agent's answer holds no deployment result")
    fingerprint = StoreDeployResult.model_validate(answer).fingerprint
    mark_deployed(ctx, binding, connection, fingerprint, agent_job=ctx.state.get("agent_job"))
    return Done(
        {"binding_id": binding.id, "fingerprint": fingerprint}, message="deployed and verified by the agent"
    )
