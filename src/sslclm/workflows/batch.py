"""Renewals in batches: one job renews many managed certificates of the built-in CA.

certificate.renew-batch:  start (a key and a CSR for every item; the sealed keys commit with the
                          move on) → issue (the built-in CA signs every CSR and every certificate is
                          recorded with multi-row statements, all in one commit) → done.

The scheduler's tick puts the due renewals of ``local`` CA connections that need no approval and
rotate their key into these jobs, up to ``BATCH_SIZE`` each; every other renewal (a remote CA, an
approval, key reuse) stays a ``certificate.issue`` job of its own. The guarantees are those of the
single path: keys are durable before the CA is called, the CA is called with an idempotency key per
item (so a retried step gets the same certificates back), and the CA's records, the certificates,
the lineage, the managed certificates' new state and the audit events commit together. An item that
can no longer be renewed in a batch when its job runs (disabled, its profile now wants approval)
is handed to a ``certificate.issue`` job of its own, which applies the full rules and reports.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, PlannedEvent, record_many
from sslclm.deployments.service import enqueue_deployments_of
from sslclm.errors import SslClmError
from sslclm.inventory.models import Certificate, PrivateKey
from sslclm.inventory.writer import private_key_aad
from sslclm.jobs import queue
from sslclm.jobs.registry import task
from sslclm.jobs.steps import Done, Next, StepContext
from sslclm.pki import build_csr, generate_private_key, private_key_to_pkcs8_der, public_key_sha256
from sslclm.pki.ca_tools import csr_to_pem
from sslclm.policies.engine import CompiledPolicy, load_policies
from sslclm.policies.enrollment import enforce_managed
from sslclm.policies.incremental import certificates_written
from sslclm.spi.ca import CAGateway
from sslclm.spi.capabilities import Capability, ConnectorKind
from sslclm.spi.registry import call
from sslclm.spi.types import IssueRequest, IssueResult, IssueStatus
from sslclm.workflows.connections import ca_gateway_by_id
from sslclm.workflows.managed import BATCH_TASK, ISSUE_TASK, renews_in_batch
from sslclm.workflows.models import ManagedCertificate
from sslclm.workflows.names import check_allowed
from sslclm.workflows.recording import (
    Issued,
    Target,
    issued_events,
    load_targets,
    record_batch,
    store_sealed_keys,
)
from sslclm.workflows.state_store import state_in_transaction
from sslclm.workflows.tasks import PURPOSES


def batchable(target: Target) -> bool:
    return renews_in_batch(
        target.connection_type, approval_required=target.approval_required, key_policy=target.key_policy
    )


def _audit(ctx: StepContext) -> AuditContext:
    return AuditContext(actor=f"job:{ctx.job_id}")


def _hand_over(ctx: StepContext, managed_ids: Sequence[int]) -> None:
    """Gives items to single ``certificate.issue`` jobs (full rules, own reports)."""
    if not managed_ids:
        return
    queue.enqueue_many(
        ctx.session,
        [
            queue.JobSpec(
                kind=ISSUE_TASK,
                payload={"managed_id": managed_id, "reason": "renew", "requested_by": "scheduler"},
                dedupe_key=f"issue:{managed_id}",
                target=f"managed:{managed_id}",
            )
            for managed_id in managed_ids
        ],
        now=ctx.now,
    )
    ctx.progress(f"{len(managed_ids)} renewal(s) handed to jobs of their own")


def _enforce_policy(ctx: StepContext, target: Target, policies: list[CompiledPolicy]) -> None:
    """The same check as a single renewal's (``certificate.issue``), against policies loaded once."""
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
        policies=policies,
    )


@task(BATCH_TASK)
def start_batch(ctx: StepContext) -> Next | Done:
    """Makes a key and a CSR for each item that can still be renewed in the batch."""
    managed_ids = [int(i) for i in ctx.payload["managed_ids"]]
    targets = load_targets(ctx.session, managed_ids)
    policies = load_policies(ctx.session)  # once for the batch; each item is checked against them
    items: list[dict[str, Any]] = []
    key_rows: list[dict[str, Any]] = []
    elsewhere: list[int] = []
    for managed_id, target in targets.items():
        if target.status in ("revoked", "disabled"):
            continue  # revoked or switched off since the tick: renewing now would undo that decision
        if not batchable(target):
            elsewhere.append(managed_id)
            continue
        try:
            check_allowed(target.dns_names, target.ip_addresses, target.allowed_names, target.profile_name)
            _enforce_policy(ctx, target, policies)
        except SslClmError:
            elsewhere.append(managed_id)  # its own job fails with the reason, on the managed certificate
            continue
        key = generate_private_key(target.key_type)
        fingerprint = public_key_sha256(key)
        sealed = ctx.platform.envelope.encrypt(private_key_to_pkcs8_der(key), private_key_aad(fingerprint))
        key_rows.append({"public_key_sha256": fingerprint, "encrypted_pkcs8": sealed, "created_at": ctx.now})
        csr = csr_to_pem(build_csr(key, target.common_name, target.dns_names, target.ip_addresses)).decode()
        items.append({"managed_id": managed_id, "public_key_sha256": fingerprint, "csr_pem": csr})
    _hand_over(ctx, elsewhere)
    if not items:
        return Done({"renewed": 0, "handed_over": len(elsewhere)})
    store_sealed_keys(ctx.session, key_rows)
    return Next("issue", {"items": items, "handed_over": len(elsewhere)})


def _request(ctx: StepContext, target: Target, item: dict[str, Any]) -> IssueRequest:
    return IssueRequest(
        csr_pem=str(item["csr_pem"]).encode(),
        idempotency_key=f"sslclm-job-{ctx.job_id}-{target.managed_id}",
        names=(*target.dns_names, *target.ip_addresses),
        common_name=target.common_name,
        validity_days=target.validity_days,
        purposes=PURPOSES.get(target.purpose, PURPOSES["server"]),
        profile=target.options,
    )


def _issue_all(gateway: CAGateway, requests: list[IssueRequest]) -> list[IssueResult | SslClmError]:
    """Every request's result or refusal; in one go when the gateway can (the built-in CA can)."""
    issue_many: Callable[[list[IssueRequest]], list[IssueResult | SslClmError]] | None = getattr(
        gateway, "issue_many", None
    )
    if issue_many is not None:
        return issue_many(requests)
    results: list[IssueResult | SslClmError] = []
    for request in requests:
        try:
            results.append(call(gateway, Capability.ISSUE, request))
        except SslClmError as exc:
            results.append(exc)
    return results


@start_batch.step("issue")
def issue_batch(ctx: StepContext) -> Done:
    """Has the built-in CA sign every CSR and records every certificate, in this step's commit."""
    items = list(ctx.state["items"])
    targets = load_targets(ctx.session, [int(item["managed_id"]) for item in items])
    by_connection: dict[int, list[tuple[Target, dict[str, Any]]]] = {}
    failed: list[tuple[dict[str, Any], str]] = []
    for item in items:
        target = targets.get(int(item["managed_id"]))
        if target is None:
            failed.append((item, "the managed certificate no longer exists"))
        else:
            by_connection.setdefault(target.connection_id, []).append((target, item))
    issued: list[Issued] = []
    for connection_id, work in by_connection.items():
        done, refused = _issue_at(ctx, connection_id, work)
        issued += done
        failed += refused
    reason = str(ctx.payload.get("reason", "renew"))
    outcomes = record_batch(
        ctx.session, ctx.platform, issued, job_id=ctx.job_id, reason=reason, actor=_audit(ctx), now=ctx.now
    )
    _enqueue_deployments(ctx, outcomes)
    # The new certificates' compliance is known from the start (and their CRLs are watched).
    certificates_written(ctx.session, [int(o["certificate_id"]) for o in outcomes], now=ctx.now)
    events = issued_events(outcomes, reason) + _record_failures(ctx, failed, reason)
    # Last: on PostgreSQL the append holds the audit log's lock until this step commits, so nothing
    # slow may follow it (the batches of all workers would wait for each other).
    record_many(ctx.session, _audit(ctx), events, occurred_at=ctx.now)
    return Done(
        {
            "renewed": len(outcomes),
            "failed": len(failed),
            "handed_over": int(ctx.state.get("handed_over", 0)),
            "certificate_ids": [o["certificate_id"] for o in outcomes],
        }
    )


def _issue_at(
    ctx: StepContext, connection_id: int, work: list[tuple[Target, dict[str, Any]]]
) -> tuple[list[Issued], list[tuple[dict[str, Any], str]]]:
    """One CA connection's share of the batch; its state writes go in with one insert at the end."""
    gateway = ca_gateway_by_id(ctx.platform, ctx.session, connection_id, work[0][0].connection_updated_at)
    gateway.get_chain()  # the CA's hierarchy is made (and committed) on its own first
    issued: list[Issued] = []
    failed: list[tuple[dict[str, Any], str]] = []
    scope = f"{ConnectorKind.CA_GATEWAY.value}:{connection_id}"
    requests = [_request(ctx, target, item) for target, item in work]
    with state_in_transaction(scope, ctx.session, write_behind=True):
        results = _issue_all(gateway, requests)
    for (target, item), result in zip(work, results, strict=True):
        if isinstance(result, SslClmError):
            if result.http_status >= 500:
                raise result  # the CA or the database is unwell: the whole step is tried again
            failed.append((item, result.message))
        elif result.status is not IssueStatus.ISSUED or result.certificate_pem is None:
            failed.append((item, "the built-in CA did not issue at once"))
        else:
            issued.append(
                Issued(
                    target=target,
                    certificate_pem=result.certificate_pem.decode(),
                    chain_pem=tuple(pem.decode() for pem in result.chain_pem),
                    public_key=str(item["public_key_sha256"]),
                )
            )
    return issued, failed


def _enqueue_deployments(ctx: StepContext, outcomes: list[dict[str, Any]]) -> None:
    """Every binding of each renewed managed certificate gets its new certificate, in deployment
    batches per store where the binding allows (one query)."""
    if not outcomes:
        return
    certificate_for = {int(o["managed_id"]): int(o["certificate_id"]) for o in outcomes}
    enqueue_deployments_of(ctx.session, certificate_for, now=ctx.now)


def _record_failures(
    ctx: StepContext, failed: list[tuple[dict[str, Any], str]], reason: str
) -> list[PlannedEvent]:
    """Deletes the keys of items the CA refused and says on each managed certificate why; returns
    the audit events to append."""
    if not failed:
        return []
    _delete_unused_keys(ctx.session, [str(item["public_key_sha256"]) for item, _ in failed])
    events = []
    for item, error in failed:
        managed = ctx.session.get(ManagedCertificate, int(item["managed_id"]))
        if managed is None:
            continue
        managed.status_message = f"{reason} failed (job {ctx.job_id}): {error}"[:2000]
        managed.updated_at = ctx.now
        events.append(
            PlannedEvent(
                "certificate.issue-failed",
                "managed_certificate",
                managed.id,
                {"job_id": ctx.job_id, "step": ctx.step, "reason": reason, "error": error},
            )
        )
    return events


def _delete_unused_keys(session: Session, fingerprints: list[str]) -> None:
    used = set(
        session.execute(
            select(Certificate.public_key_sha256).where(Certificate.public_key_sha256.in_(fingerprints))
        ).scalars()
    )
    unused = [fingerprint for fingerprint in fingerprints if fingerprint not in used]
    if unused:
        session.execute(delete(PrivateKey).where(PrivateKey.public_key_sha256.in_(unused)))


@start_batch.on_failure
def batch_failed(ctx: StepContext, error: str) -> None:
    """A batch that ended failed: its keys go, and each managed certificate says why (it is tried
    again at its next renewal time, an hour on, like a failed single renewal)."""
    items = list(ctx.state.get("items", []))
    events = _record_failures(ctx, [(item, error) for item in items], str(ctx.payload.get("reason", "renew")))
    record_many(ctx.session, _audit(ctx), events, occurred_at=ctx.now)
