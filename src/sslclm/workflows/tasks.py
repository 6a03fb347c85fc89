"""The issuance and revocation workflows as durable job steps.

certificate.issue:  start (policy, approval) → key → csr → issue (→ collect while pending) → record;
                    when it ends failed or cancelled, its key is deleted unless a certificate uses it
certificate.revoke: start (CA revoke) → record
renewals.tick:      every minute, enqueues the renewals that have come due
renewals.ari:       every six hours, asks ARI-capable CAs for their suggested renewal windows
certificates.sweep-keys: hourly, deletes keys that ended issuance jobs left behind

Each step makes one persisted change (see ``sslclm.jobs.registry.TaskRegistry.task`` for the
contract). The key is generated and sealed in the same commit that moves the job on, so a worker
killed at any moment neither loses a key nor leaves one behind; the CA is called with an
idempotency key derived from the job, so a retried step never obtains a second certificate.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.errors import InvalidInputError, NotFoundError
from sslclm.inventory.models import Certificate, PrivateKey
from sslclm.inventory.writer import InventoryWriter, ParsedFile, private_key_aad
from sslclm.jobs.registry import periodic, task
from sslclm.jobs.steps import Done, Next, StepContext, Wait
from sslclm.pki import (
    build_csr,
    certificate_to_pem,
    generate_private_key,
    load_bundle,
    load_private_key_der,
    private_key_to_pkcs8_der,
    public_key_sha256,
)
from sslclm.pki.ca_tools import csr_to_pem
from sslclm.spi.capabilities import Capability
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
from sslclm.workflows.connections import build_ca_gateway
from sslclm.workflows.managed import enqueue_due_renewals, sweep_orphan_keys
from sslclm.workflows.models import Approval, Connection, Issuance, ManagedCertificate, Profile
from sslclm.workflows.names import check_allowed
from sslclm.workflows.planner import policy_for, renewal_time

DEFAULT_POLL = timedelta(seconds=30)
PURPOSES = {
    "server": (CertificatePurpose.SERVER_AUTH,),
    "client": (CertificatePurpose.CLIENT_AUTH,),
    "both": (CertificatePurpose.SERVER_AUTH, CertificatePurpose.CLIENT_AUTH),
}


def _managed(session: Session, payload: Any) -> tuple[ManagedCertificate, Profile]:
    managed = session.get(ManagedCertificate, int(payload["managed_id"]))
    if managed is None:
        raise NotFoundError(f"managed certificate {payload['managed_id']} no longer exists")
    profile = session.get(Profile, managed.profile_id)
    if profile is None:
        raise NotFoundError(f"profile {managed.profile_id} no longer exists")
    return managed, profile


def _audit(ctx: StepContext) -> AuditContext:
    return AuditContext(actor=f"job:{ctx.job_id}", request_id=None, source_address=None)


@task("certificate.issue")
def start_issue(ctx: StepContext) -> Next | Wait:
    """Checks the request against the profile, then waits for an approval when the profile needs one."""
    session = ctx.session
    managed, profile = _managed(session, ctx.payload)
    check_allowed(managed.dns_names, managed.ip_addresses, profile.allowed_names, profile.name)
    if profile.approval_required:
        approval = session.execute(select(Approval).where(Approval.job_id == ctx.job_id)).scalar_one_or_none()
        if approval is None:
            session.add(
                Approval(
                    managed_certificate_id=managed.id,
                    job_id=ctx.job_id,
                    requested_by=str(ctx.payload.get("requested_by") or "scheduler"),
                    requested_at=ctx.now,
                    status="pending",
                )
            )
            managed.status = "awaiting-approval"
            managed.updated_at = ctx.now
            ctx.progress("waiting for a second person to approve")
            return Wait(reason="awaiting approval")
        if approval.status != "approved":
            raise InvalidInputError(f"the request was {approval.status}")
    managed.status = "issuing" if managed.current_certificate_id is None else managed.status
    return Next("key")


@start_issue.step("key")
def make_key(ctx: StepContext) -> Next:
    """Generates the key (or reuses the current one) and seals it, in this step's commit."""
    session = ctx.session
    managed, profile = _managed(session, ctx.payload)
    if managed.key_policy == "reuse" and managed.current_certificate_id is not None:
        current = session.get(Certificate, managed.current_certificate_id)
        if current is not None and current.has_private_key:
            ctx.progress("reusing the current key")
            return Next("csr", {"public_key_sha256": current.public_key_sha256})
    key = generate_private_key(profile.key_type)
    fingerprint = public_key_sha256(key)
    session.add(
        PrivateKey(
            public_key_sha256=fingerprint,
            encrypted_pkcs8=ctx.platform.envelope.encrypt(
                private_key_to_pkcs8_der(key), private_key_aad(fingerprint)
            ),
            created_at=ctx.now,
        )
    )
    ctx.progress(f"generated a {profile.key_type} key")
    return Next("csr", {"public_key_sha256": fingerprint})


def _load_key(ctx: StepContext) -> Any:
    fingerprint = ctx.state["public_key_sha256"]
    sealed = ctx.session.execute(
        select(PrivateKey.encrypted_pkcs8).where(PrivateKey.public_key_sha256 == fingerprint)
    ).scalar_one()
    return load_private_key_der(ctx.platform.envelope.decrypt(sealed, private_key_aad(fingerprint)))


@start_issue.step("csr")
def make_csr(ctx: StepContext) -> Next:
    managed, _ = _managed(ctx.session, ctx.payload)
    csr = build_csr(_load_key(ctx), managed.common_name, managed.dns_names, managed.ip_addresses)
    return Next("issue", {"csr_pem": csr_to_pem(csr).decode()})


def _after_ca(result: IssueResult, ctx: StepContext) -> Next | Wait:
    if result.status is IssueStatus.PENDING:
        delay = result.retry_after or DEFAULT_POLL
        ctx.progress(f"the CA is working on it; asking again in {int(delay.total_seconds())} s")
        return Wait(
            reason="pending at the CA", delay=delay, step="collect", state={"pending_ref": result.pending_ref}
        )
    assert result.certificate_pem is not None
    chain = [pem.decode() for pem in result.chain_pem]
    return Next("record", {"certificate_pem": result.certificate_pem.decode(), "chain_pem": chain})


@start_issue.step("issue")
def ask_ca(ctx: StepContext) -> Next | Wait:
    """Sends the CSR to the CA; the job id is the idempotency key, so a retry never issues twice."""
    managed, profile = _managed(ctx.session, ctx.payload)
    connection = ctx.session.get(Connection, profile.ca_connection_id)
    if connection is None:
        raise NotFoundError(f"CA connection {profile.ca_connection_id} no longer exists")
    gateway = build_ca_gateway(ctx.platform, connection)
    request = IssueRequest(
        csr_pem=str(ctx.state["csr_pem"]).encode(),
        idempotency_key=f"sslclm-job-{ctx.job_id}",
        names=(*managed.dns_names, *managed.ip_addresses),
        common_name=managed.common_name,
        validity_days=profile.validity_days,
        purposes=PURPOSES.get(profile.purpose, PURPOSES["server"]),
        profile=profile.options,
    )
    result: IssueResult = call(gateway, Capability.ISSUE, request)
    ctx.progress(f"requested from CA connection '{connection.name}'")
    return _after_ca(result, ctx)


@start_issue.step("collect")
def collect_from_ca(ctx: StepContext) -> Next | Wait:
    _, profile = _managed(ctx.session, ctx.payload)
    connection = ctx.session.get(Connection, profile.ca_connection_id)
    if connection is None:
        raise NotFoundError(f"CA connection {profile.ca_connection_id} no longer exists")
    gateway = build_ca_gateway(ctx.platform, connection)
    collect = CollectRequest(
        pending_ref=str(ctx.state["pending_ref"]), idempotency_key=f"sslclm-job-{ctx.job_id}"
    )
    result: IssueResult = call(
        gateway,
        Capability.ASYNC_ISSUE,
        collect,
    )
    return _after_ca(result, ctx)


@start_issue.step("record")
def record_issued(ctx: StepContext) -> Done:
    """Stores the certificate and its chain, links it to the managed certificate, plans its renewal."""
    session = ctx.session
    managed, profile = _managed(session, ctx.payload)
    pem = str(ctx.state["certificate_pem"]).encode() + b"".join(
        str(c).encode() for c in ctx.state.get("chain_pem", [])
    )
    bundle = load_bundle(pem, filename="issued")
    infos = bundle.infos()
    leaf = infos[0]
    if leaf.public_key_sha256 != ctx.state["public_key_sha256"]:
        raise InvalidInputError("the CA returned a certificate for a different key")
    issued_names = set(leaf.sans)
    missing = [n for n in managed.dns_names if f"DNS:{n}" not in issued_names]
    if missing:
        raise InvalidInputError(f"the CA left out requested names: {', '.join(missing)}")
    connection = session.get(Connection, profile.ca_connection_id)
    source = f"ca:{connection.name}" if connection else "ca"
    writer = InventoryWriter(ctx.platform, source=source, sighting_kind="issuance")
    written = writer.write(session, [ParsedFile(f"managed/{managed.name}", infos)], now=ctx.now)
    certificate_id = written.certificate_ids[leaf.fingerprint_sha256]
    session.execute(
        update(Certificate)
        .where(Certificate.id == certificate_id)
        .values(has_private_key=True, owner=managed.owner, team=managed.team)
    )
    previous = managed.current_certificate_id
    if previous is not None and previous != certificate_id:
        session.execute(
            update(Certificate).where(Certificate.id == previous).values(superseded_by_id=certificate_id)
        )
    existing = session.execute(select(Issuance.id).where(Issuance.job_id == ctx.job_id)).first()
    if existing is None:
        session.add(
            Issuance(
                managed_certificate_id=managed.id,
                certificate_id=certificate_id,
                job_id=ctx.job_id,
                reason=str(ctx.payload.get("reason", "enroll")),
                ca_connection_id=profile.ca_connection_id,
                issued_at=ctx.now,
            )
        )
    managed.current_certificate_id = certificate_id
    managed.status = "active"
    managed.status_message = None
    # An ARI window belongs to the certificate it was asked for; the new one gets its own at the next
    # ARI refresh, and until then the planner falls back to a share of the lifetime.
    managed.ari_window_start = managed.ari_window_end = None
    managed.renew_at = renewal_time(
        not_before=leaf.not_before,
        not_after=leaf.not_after,
        policy=policy_for(managed, profile.renewal_mode, profile.renewal_value),
        seed=f"{managed.id}:{leaf.fingerprint_sha256}",
    )
    managed.updated_at = ctx.now
    record(
        session,
        _audit(ctx),
        "certificate.issued",
        "managed_certificate",
        managed.id,
        {
            "certificate_id": certificate_id,
            "fingerprint": leaf.fingerprint_sha256,
            "reason": ctx.payload.get("reason"),
        },
    )
    return Done(
        {
            "certificate_id": certificate_id,
            "fingerprint_sha256": leaf.fingerprint_sha256,
            "not_after": leaf.not_after.isoformat(),
        }
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
