"""The issuance and revocation workflows as durable job steps.

certificate.issue:  start (policy, approval; key and CSR) → issue (CA; record when issued, else wait
                    → collect → record); when it ends failed or cancelled, its key is deleted unless a
                    certificate uses it
certificate.revoke: start (CA revoke) → record
renewals.tick:      every minute, enqueues the renewals that have come due
renewals.ari:       every six hours, asks ARI-capable CAs for their suggested renewal windows
certificates.sweep-keys: hourly, deletes keys that ended issuance jobs left behind

Each step makes one persisted change (see ``sslclm.jobs.registry.TaskRegistry.task`` for the
contract). The key is generated and sealed in the same commit that moves the job on to the CA, so a
worker killed at any moment neither loses a key nor leaves one behind. The CA is called with an
idempotency key derived from the job, so a step retried after a crash gets the certificate the
first try obtained, never a second one, and records it in the same commit that ends the job.
(The ``key``, ``csr`` and ``record`` steps are the earlier, longer path, kept for jobs in flight.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import delete, select

from sslclm.audit.service import AuditContext, record
from sslclm.deployments.service import enqueue_deployments
from sslclm.errors import ConflictError, InvalidInputError, NotFoundError
from sslclm.inventory.models import Certificate, PrivateKey
from sslclm.jobs.registry import periodic, task
from sslclm.jobs.steps import Done, Next, StepContext, Wait
from sslclm.pki import SigningKey, build_csr, certificate_to_pem, generate_private_key
from sslclm.pki.ca_tools import csr_to_pem
from sslclm.policies.engine import evaluate_certificates
from sslclm.policies.enrollment import enforce_managed
from sslclm.policies.incremental import certificates_written
from sslclm.spi.ca import CAGateway
from sslclm.spi.capabilities import Capability, ConnectorKind
from sslclm.spi.registry import call
from sslclm.spi.types import (
    CertificatePurpose,
    CollectRequest,
    IssueRequest,
    IssueResult,
    IssueStatus,
    RevocationReason,
    RevokeRequest,
)
from sslclm.workflows.ari import ARI_BATCH, refresh_windows
from sslclm.workflows.connections import build_ca_gateway, ca_gateway_by_id
from sslclm.workflows.managed import IN_PROCESS_CA_TYPES, enqueue_due_renewals, sweep_orphan_keys
from sslclm.workflows.models import Approval, Connection, ManagedCertificate
from sslclm.workflows.names import check_allowed
from sslclm.workflows.recording import (
    Target,
    current_key_fingerprint,
    load_key,
    load_target,
    record_certificate,
    store_key,
)
from sslclm.workflows.state_store import state_in_transaction

DEFAULT_POLL = timedelta(seconds=30)
PURPOSES = {
    "server": (CertificatePurpose.SERVER_AUTH,),
    "client": (CertificatePurpose.CLIENT_AUTH,),
    "both": (CertificatePurpose.SERVER_AUTH, CertificatePurpose.CLIENT_AUTH),
}


def _audit(ctx: StepContext) -> AuditContext:
    return AuditContext(actor=f"job:{ctx.job_id}", request_id=None, source_address=None)


def _target(ctx: StepContext) -> Target:
    return load_target(ctx.session, int(ctx.payload["managed_id"]))


def _await_approval(ctx: StepContext, target: Target) -> Wait | None:
    """Parks the job until a second person decides; None once the request is approved."""
    session = ctx.session
    approval = session.execute(select(Approval).where(Approval.job_id == ctx.job_id)).scalar_one_or_none()
    if approval is None:
        session.add(
            Approval(
                managed_certificate_id=target.managed_id,
                job_id=ctx.job_id,
                requested_by=str(ctx.payload.get("requested_by") or "scheduler"),
                requested_at=ctx.now,
                status="pending",
            )
        )
        managed = session.get(ManagedCertificate, target.managed_id)
        assert managed is not None
        managed.status = "awaiting-approval"
        managed.updated_at = ctx.now
        ctx.progress("waiting for a second person to approve")
        return Wait(reason="awaiting approval")
    if approval.status != "approved":
        raise InvalidInputError(f"the request was {approval.status}")
    return None


def _key_for(ctx: StepContext, target: Target) -> tuple[SigningKey, str]:
    """The key to certify: the current one under a reuse policy, else a new one, sealed in this step."""
    if target.key_policy == "reuse" and target.current_certificate_id is not None:
        fingerprint = current_key_fingerprint(ctx.session, target.current_certificate_id)
        if fingerprint is not None:
            ctx.progress("reusing the current key")
            return load_key(ctx.session, ctx.platform, fingerprint), fingerprint
    key = generate_private_key(target.key_type)
    return key, store_key(ctx.session, ctx.platform, key, ctx.now)


def _csr_pem(key: SigningKey, target: Target) -> str:
    return csr_to_pem(build_csr(key, target.common_name, target.dns_names, target.ip_addresses)).decode()


def _enforce_policy(ctx: StepContext, target: Target) -> None:
    """Refuses, with every reason, a request that breaks a blocking policy rule (checked again at each
    renewal: the policy may have changed since the certificate was declared)."""
    enforce_managed(
        ctx.session,
        names=[*target.dns_names, *target.ip_addresses] or [target.common_name],
        key_type=target.key_type,
        validity_days=target.validity_days,
        purpose=target.purpose,
        profile=target.profile_name,
        owner=target.owner,
        team=target.team,
        tags=target.tags,
        now=ctx.now,
    )


@task("certificate.issue")
def start_issue(ctx: StepContext) -> Next | Wait:
    """Checks the request against the profile (waiting for an approval when it needs one), then
    makes the key and the CSR; the sealed key commits with the move to the CA step."""
    target = _target(ctx)
    if target.status in ("revoked", "disabled"):
        # Revoked or switched off after this job was queued: issuing now would undo that decision.
        raise ConflictError(f"managed certificate '{target.name}' is {target.status}")
    check_allowed(target.dns_names, target.ip_addresses, target.allowed_names, target.profile_name)
    _enforce_policy(ctx, target)
    if target.approval_required:
        parked = _await_approval(ctx, target)
        if parked is not None:
            return parked
    key, fingerprint = _key_for(ctx, target)
    return Next("issue", {"public_key_sha256": fingerprint, "csr_pem": _csr_pem(key, target)})


@start_issue.step("key")
def make_key(ctx: StepContext) -> Next:
    target = _target(ctx)
    _, fingerprint = _key_for(ctx, target)
    return Next("csr", {"public_key_sha256": fingerprint})


@start_issue.step("csr")
def make_csr(ctx: StepContext) -> Next:
    target = _target(ctx)
    key = load_key(ctx.session, ctx.platform, str(ctx.state["public_key_sha256"]))
    return Next("issue", {"csr_pem": _csr_pem(key, target)})


def _gateway(ctx: StepContext, target: Target) -> CAGateway:
    return ca_gateway_by_id(ctx.platform, ctx.session, target.connection_id, target.connection_updated_at)


@contextmanager
def _ca_transaction(ctx: StepContext, target: Target, gateway: CAGateway) -> Iterator[None]:
    if target.connection_type not in IN_PROCESS_CA_TYPES:
        yield
        return
    # The CA's own hierarchy is made (and committed) on its own, before anything joins this step.
    gateway.get_chain()
    with state_in_transaction(f"{ConnectorKind.CA_GATEWAY.value}:{target.connection_id}", ctx.session):
        yield


def _finish(ctx: StepContext, target: Target, result: IssueResult) -> Done | Wait:
    """Waits for a pending CA; records an issued certificate in this step's commit."""
    if result.status is IssueStatus.PENDING:
        delay = result.retry_after or DEFAULT_POLL
        ctx.progress(f"the CA is working on it; asking again in {int(delay.total_seconds())} s")
        return Wait(
            reason="pending at the CA", delay=delay, step="collect", state={"pending_ref": result.pending_ref}
        )
    assert result.certificate_pem is not None
    return _record(ctx, target, result.certificate_pem.decode(), [pem.decode() for pem in result.chain_pem])


def _record(ctx: StepContext, target: Target, certificate_pem: str, chain_pem: list[str]) -> Done:
    outcome = record_certificate(
        ctx.session,
        ctx.platform,
        target,
        certificate_pem=certificate_pem,
        chain_pem=chain_pem,
        public_key=str(ctx.state["public_key_sha256"]),
        job_id=ctx.job_id,
        reason=str(ctx.payload.get("reason", "enroll")),
        actor=_audit(ctx),
        now=ctx.now,
    )
    # Every binding of the managed certificate gets the new certificate, in the same commit.
    enqueue_deployments(ctx.session, target.managed_id, int(outcome["certificate_id"]), now=ctx.now)
    # The new certificate's compliance is known from the start (and its CRL will be watched).
    certificates_written(ctx.session, [int(outcome["certificate_id"])], now=ctx.now)
    # The serial, the certificate and the renewal time are in the job's result; no history line is
    # added, which saves a write on the busiest path.
    return Done(outcome)


@start_issue.step("issue")
def ask_ca(ctx: StepContext) -> Done | Wait:
    """Sends the CSR to the CA; the job id is the idempotency key, so a retry never issues twice."""
    target = _target(ctx)
    gateway = _gateway(ctx, target)
    request = IssueRequest(
        csr_pem=str(ctx.state["csr_pem"]).encode(),
        idempotency_key=f"sslclm-job-{ctx.job_id}",
        names=(*target.dns_names, *target.ip_addresses),
        common_name=target.common_name,
        validity_days=target.validity_days,
        purposes=PURPOSES.get(target.purpose, PURPOSES["server"]),
        profile=target.options,
    )
    with _ca_transaction(ctx, target, gateway):
        result: IssueResult = call(gateway, Capability.ISSUE, request)
    return _finish(ctx, target, result)


@start_issue.step("collect")
def collect_from_ca(ctx: StepContext) -> Done | Wait:
    target = _target(ctx)
    gateway = _gateway(ctx, target)
    collect = CollectRequest(
        pending_ref=str(ctx.state["pending_ref"]), idempotency_key=f"sslclm-job-{ctx.job_id}"
    )
    with _ca_transaction(ctx, target, gateway):
        result: IssueResult = call(gateway, Capability.ASYNC_ISSUE, collect)
    return _finish(ctx, target, result)


@start_issue.step("record")
def record_issued(ctx: StepContext) -> Done:
    return _record(
        ctx, _target(ctx), str(ctx.state["certificate_pem"]), [str(c) for c in ctx.state.get("chain_pem", [])]
    )


@start_issue.on_failure
def issue_failed(ctx: StepContext, error: str) -> None:
    """Deletes the job's key unless a certificate uses it, and says on the managed certificate why."""
    session = ctx.session
    fingerprint = ctx.state.get("public_key_sha256")
    if fingerprint:
        in_use = session.execute(
            select(Certificate.id).where(Certificate.public_key_sha256 == str(fingerprint)).limit(1)
        ).first()
        if in_use is None:
            session.execute(delete(PrivateKey).where(PrivateKey.public_key_sha256 == str(fingerprint)))
    managed = session.get(ManagedCertificate, int(ctx.payload["managed_id"]))
    if managed is None:
        return
    reason = str(ctx.payload.get("reason", "enroll"))
    if managed.current_certificate_id is None:
        managed.status = "failed"
    elif managed.status in ("issuing", "awaiting-approval"):
        managed.status = "active"  # the current certificate is still there and valid
    managed.status_message = f"{reason} failed (job {ctx.job_id}): {error}"[:2000]
    managed.updated_at = ctx.now
    record(
        session,
        _audit(ctx),
        "certificate.issue-failed",
        "managed_certificate",
        managed.id,
        {"job_id": ctx.job_id, "step": ctx.step, "reason": reason, "error": error},
    )


@task("certificate.revoke")
def revoke_at_ca(ctx: StepContext) -> Next:
    """Asks the issuing CA to revoke; revoking twice is harmless at the CA, so a retry is safe."""
    session = ctx.session
    certificate = session.get(Certificate, int(ctx.payload["certificate_id"]))
    connection = session.get(Connection, int(ctx.payload["ca_connection_id"]))
    if certificate is None or connection is None:
        raise NotFoundError("the certificate or its CA connection no longer exists")
    gateway = build_ca_gateway(ctx.platform, connection)
    reason = RevocationReason(str(ctx.payload["reason"]))
    call(
        gateway,
        Capability.REVOKE,
        RevokeRequest(certificate_pem=certificate_to_pem(certificate.der), reason=reason),
    )
    ctx.progress(f"revoked at CA connection '{connection.name}' ({reason.value})")
    return Next("record")


@revoke_at_ca.step("record")
def record_revoked(ctx: StepContext) -> Done:
    session = ctx.session
    certificate = session.get(Certificate, int(ctx.payload["certificate_id"]))
    assert certificate is not None
    if certificate.revoked_at is None:
        certificate.revoked_at = ctx.now
        certificate.revocation_reason = str(ctx.payload["reason"])
        certificate.updated_at = ctx.now
        evaluate_certificates(session, [certificate.id], now=ctx.now)
    managed_id = ctx.payload.get("managed_id")
    managed = session.get(ManagedCertificate, int(managed_id)) if managed_id else None
    if (
        managed is not None
        and managed.current_certificate_id == certificate.id
        and ctx.payload.get("stop_renewal", True)
    ):
        managed.status = "revoked"
        managed.auto_renew = False
        managed.renew_at = None
        managed.updated_at = ctx.now
    record(
        session,
        _audit(ctx),
        "certificate.revoked",
        "certificate",
        certificate.id,
        {"reason": ctx.payload["reason"], "fingerprint": certificate.fingerprint_sha256},
    )
    return Done({"certificate_id": certificate.id, "revoked_at": ctx.now.isoformat()})


@periodic(every=timedelta(minutes=1))
@task("renewals.tick")
def renewal_tick(ctx: StepContext) -> Done:
    """Enqueues the renewals that have come due (one tick per minute across every scheduler)."""
    enqueued = enqueue_due_renewals(ctx.session, now=ctx.now)
    return Done({"enqueued": enqueued})


@periodic(every=timedelta(hours=6))
@task("renewals.ari")
def ari_refresh(ctx: StepContext) -> Next | Done:
    """Asks ARI-capable CAs for the renewal window of each managed certificate in ARI mode.

    One batch per step, so a fleet of any size is worked through in short transactions; a CA that
    cannot be reached is skipped until the next run, and its certificates keep their planned time.
    """
    summary = refresh_windows(
        ctx.session, ctx.platform, now=ctx.now, after_id=int(ctx.state.get("after_id", 0)), limit=ARI_BATCH
    )
    totals = {key: int(ctx.state.get(key, 0)) + value for key, value in summary.counts.items()}
    if summary.last_id is not None:
        return Next("start", {"after_id": summary.last_id, **totals})
    return Done(totals)


@periodic(every=timedelta(hours=1))
@task("certificates.sweep-keys")
def sweep_keys(ctx: StepContext) -> Done:
    """Deletes keys of issuance jobs that ended without a certificate (e.g. cancelled while pending)."""
    return Done({"deleted": sweep_orphan_keys(ctx.session, now=ctx.now)})
