"""Server jobs around agents.

agents.liveness: every minute, marks agents offline after missed heartbeats (the agent listener
                 also does it every interval; this covers deployments where it is not running).
agents.enroll:   issues a managed certificate whose key is made on an agent and never leaves it:
                 start (queue pem-keygen on the agent, wait) → issue (CSR to the CA, record the
                 certificate, queue pem-install, wait) → installed (done). Each wait ends when the
                 agent's result arrives (``sslclm.agents.remote.resume_waiting_job``).
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from sslclm.agents import deploy, queue, service, validation
from sslclm.audit.service import AuditContext
from sslclm.errors import ConnectorError, InvalidInputError
from sslclm.inventory.models import Certificate
from sslclm.jobs.registry import periodic, task
from sslclm.jobs.steps import Done, StepContext, Wait
from sslclm.protocol import PEM_INSTALL, PEM_KEYGEN
from sslclm.spi.capabilities import Capability
from sslclm.spi.registry import call
from sslclm.spi.types import IssueRequest, IssueResult, IssueStatus
from sslclm.workflows.connections import ca_gateway_by_id
from sslclm.workflows.names import check_allowed
from sslclm.workflows.recording import load_target, record_certificate
from sslclm.workflows.tasks import PURPOSES

ENROLL_TASK = "agents.enroll"
# Deployments to agent-hosted stores add a step to ``certificate.deploy``, and store validation is a
# periodic task of its own: both register when this module (the ``sslclm.tasks`` entry point) loads.
TASK_MODULES = (deploy, validation)


def _audit(ctx: StepContext) -> AuditContext:
    return AuditContext(actor=f"job:{ctx.job_id}")


@periodic(every=timedelta(minutes=1))
@task("agents.liveness")
def liveness(ctx: StepContext) -> Done:
    """Marks quiet agents offline."""
    stale = service.mark_offline(ctx.session, now=ctx.now)
    return Done({"marked_offline": [agent.name for agent in stale]})


def _agent_failed(ctx: StepContext) -> None:
    error = ctx.state.get("agent_error")
    if error:
        raise ConnectorError(f"the agent reported: {error}", retryable=False)


@task(ENROLL_TASK)
def ask_agent_for_csr(ctx: StepContext) -> Wait:
    """Queues key generation on the agent; only the CSR will come back."""
    target = load_target(ctx.session, int(ctx.payload["managed_id"]))
    check_allowed(target.dns_names, target.ip_addresses, target.allowed_names, target.profile_name)
    agent = service.get_agent(ctx.session, int(ctx.payload["agent_id"]))
    job = queue.dispatch(
        ctx.session,
        _audit(ctx),
        kind=PEM_KEYGEN,
        payload={
            "store": ctx.payload["store"],
            "alias": ctx.payload["alias"],
            "key_type": target.key_type,
            "common_name": target.common_name,
            "dns_names": list(target.dns_names),
            "ip_addresses": list(target.ip_addresses),
        },
        agent=agent,
        job_id=ctx.job_id,
        now=ctx.now,
    )
    return Wait(
        reason=f"waiting for agent {agent.name} to make the key", step="issue", state={"keygen_job": job.id}
    )


@ask_agent_for_csr.step("issue")
def issue_for_agent(ctx: StepContext) -> Wait:
    """Sends the agent's CSR to the CA, records the certificate, queues its installation."""
    _agent_failed(ctx)
    answer = ctx.state.get("agent_pem_keygen") or {}
    if not isinstance(answer, dict) or "csr_pem" not in answer:
        raise InvalidInputError("the agent's answer holds no CSR")
    target = load_target(ctx.session, int(ctx.payload["managed_id"]))
    gateway = ca_gateway_by_id(ctx.platform, ctx.session, target.connection_id, target.connection_updated_at)
    request = IssueRequest(
        csr_pem=str(answer["csr_pem"]).encode(),
        idempotency_key=f"sslclm-job-{ctx.job_id}",
        names=(*target.dns_names, *target.ip_addresses),
        common_name=target.common_name,
        validity_days=target.validity_days,
        purposes=PURPOSES.get(target.purpose, PURPOSES["server"]),
        profile=target.options,
    )
    result: IssueResult = call(gateway, Capability.ISSUE, request)
    if result.status is IssueStatus.PENDING or result.certificate_pem is None:
        raise ConnectorError("the CA answered 'pending'; agent enrollment needs a CA that issues at once")
    certificate_pem = result.certificate_pem.decode()
    chain = [pem.decode() for pem in result.chain_pem]
    outcome = record_certificate(
        ctx.session,
        ctx.platform,
        target,
        certificate_pem=certificate_pem,
        chain_pem=chain,
        public_key=str(answer["public_key_sha256"]),
        job_id=ctx.job_id,
        reason="agent-enroll",
        actor=_audit(ctx),
        now=ctx.now,
    )
    # The recorder marks what it records as held with its key; this key stays on the agent, and a
    # deployment must know to ask the agent for it (sslclm.agents.deploy).
    ctx.session.execute(
        update(Certificate)
        .where(Certificate.id == int(outcome["certificate_id"]))
        .values(has_private_key=False)
    )
    agent = service.get_agent(ctx.session, int(ctx.payload["agent_id"]))
    job = queue.dispatch(
        ctx.session,
        _audit(ctx),
        kind=PEM_INSTALL,
        payload={
            "store": ctx.payload["store"],
            "alias": ctx.payload["alias"],
            "certificate_pem": certificate_pem,
            "chain_pem": chain,
            "public_key_sha256": str(answer["public_key_sha256"]),
        },
        agent=agent,
        job_id=ctx.job_id,
        now=ctx.now,
    )
    return Wait(
        reason=f"waiting for agent {agent.name} to install the certificate",
        step="installed",
        state={"certificate_id": outcome["certificate_id"], "install_job": job.id},
    )


@ask_agent_for_csr.step("installed")
def installed(ctx: StepContext) -> Done:
    _agent_failed(ctx)
    answer = ctx.state.get("agent_pem_install") or {}
    return Done(
        {
            "certificate_id": ctx.state.get("certificate_id"),
            "fingerprint": answer.get("fingerprint") if isinstance(answer, dict) else None,
            "agent_id": ctx.payload["agent_id"],
            "store": ctx.payload["store"],
            "alias": ctx.payload["alias"],
        },
        message="installed on the agent",
    )
