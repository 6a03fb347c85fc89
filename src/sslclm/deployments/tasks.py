"""The deployment workflow as job steps, the drift check and store scans into the inventory.

certificate.deploy:   start (history row) → deploy (store add, reload) → verify (read back unless the
                      store confirms its writes; TLS handshake when the binding names an endpoint) →
                      done. Without an endpoint all of it runs in the start step, one commit.
                      A failure in deploy or verify puts back what the store held before (the
                      store's own previous set, else the previously deployed certificate, else
                      nothing), reloads again, and fails the job with the reason; the failure hook
                      marks the binding failed.
                      With action "undeploy": start → remove (store remove, reload) → done.
deployments.drift:    hourly, compares what each store holds under each deployed alias with what the
                      platform deployed there and marks differences "drifted".
stores.scan:          reads a store's inventory into the certificate inventory (sightings of kind store).
"""

from __future__ import annotations

import base64
import contextlib
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from sslclm.audit.service import AuditContext, record
from sslclm.deployments.models import Deployment, StoreBinding
from sslclm.deployments.service import (
    DEPLOY_TASK,
    RestorableStore,
    add_request_for,
    build_store,
    get_binding,
)
from sslclm.deployments.verify import wait_for_fingerprint
from sslclm.errors import ConnectorError, NotFoundError, SslClmError
from sslclm.inventory.writer import InventoryWriter, ParsedFile
from sslclm.jobs.registry import periodic, task
from sslclm.jobs.steps import Done, Next, StepContext, Wait
from sslclm.notifications.events import raise_drift
from sslclm.pki import compute_fingerprint, load_bundle
from sslclm.spi.capabilities import Capability
from sslclm.spi.files import split_certificates
from sslclm.spi.store import (
    CertificateStore,
    InventoryRequest,
    RemoveRequest,
    read_entry,
    reload_if_supported,
)
from sslclm.workflows.models import Connection

log = logging.getLogger(__name__)
DRIFT_BATCH = 200
SCAN_PAGE = 500


def _audit(ctx: StepContext) -> AuditContext:
    return AuditContext(actor=f"job:{ctx.job_id}")


def _binding_and_store(ctx: StepContext) -> tuple[StoreBinding, Connection, CertificateStore]:
    binding = get_binding(ctx.session, int(ctx.payload["binding_id"]))
    return (binding, *_store_of(ctx, binding))


def _store_of(ctx: StepContext, binding: StoreBinding) -> tuple[Connection, CertificateStore]:
    connection = ctx.session.get(Connection, binding.store_connection_id)
    if connection is None:
        raise NotFoundError("the binding's store no longer exists", field="store")
    return connection, build_store(ctx.platform, connection)


def fingerprint_of(pem: bytes) -> str:
    """SHA-256 of the first PEM certificate's DER."""
    blocks = split_certificates(pem)
    if not blocks:
        raise ConnectorError("the store returned no PEM certificate", retryable=False)
    body = b"".join(line for line in blocks[0].splitlines() if line and not line.startswith(b"-----"))
    return compute_fingerprint(base64.b64decode(body))


def rollback(ctx: StepContext, binding: StoreBinding, store: CertificateStore, *, replaced: bool) -> str:
    """Puts back what the store held before this deployment; returns what was done, for the message."""
    try:
        if isinstance(store, RestorableStore):
            store.restore_previous(binding.alias)
            done = "restored the previous files"
        elif binding.last_deployed_certificate_id is not None:
            request = add_request_for(
                ctx.session, ctx.platform, store, binding.alias, binding.last_deployed_certificate_id
            )
            store.add(request)
            done = "redeployed the previous certificate"
        elif not replaced and Capability.REMOVE in store.capabilities:
            store.remove(RemoveRequest(alias=binding.alias))
            done = "removed the new entry"
        else:
            done = "nothing to restore"
        reload_if_supported(store)
    except Exception as exc:  # the rollback failing must not hide why the deployment failed
        log.warning("rollback of binding %s failed: %s", binding.id, exc)
        return f"rollback failed: {getattr(exc, 'message', str(exc))[:300]}"
    return done


@task(DEPLOY_TASK)
def start_deploy(ctx: StepContext) -> Next | Done | Wait:
    """Writes the history row. A deployment with no endpoint to verify goes on in this same step (one
    commit per deployment instead of three); otherwise the store is touched in the next step."""
    binding = get_binding(ctx.session, int(ctx.payload["binding_id"]))
    action = str(ctx.payload.get("action", "deploy"))
    certificate_id = int(ctx.payload["certificate_id"]) or None
    deployment = Deployment(
        binding_id=binding.id,
        certificate_id=certificate_id,
        action=action,
        job_id=ctx.job_id,
        status="running",
        started_at=ctx.now,
    )
    ctx.session.add(deployment)
    binding.status = "deploying" if action == "deploy" else binding.status
    binding.updated_at = ctx.now
    ctx.session.flush()
    # --- stores hosted on an agent: the agent does the work (sslclm.agents.deploy) ---
    from sslclm.agents.deploy import route_to_agent  # imported here: that module adds steps to this task

    routed = route_to_agent(ctx, binding, deployment.id, action)
    if routed is not None:
        return routed
    # --- end of the agent hook ---
    if action == "deploy" and not binding.verify_host:
        connection, store = _store_of(ctx, binding)
        return _deploy(ctx, binding, connection, store, deployment.id)
    return Next("deploy" if action == "deploy" else "remove", {"deployment_id": deployment.id})


@start_deploy.step("deploy")
def deploy_to_store(ctx: StepContext) -> Next | Done:
    binding, connection, store = _binding_and_store(ctx)
    return _deploy(ctx, binding, connection, store, ctx.state.get("deployment_id"))


def _deploy(
    ctx: StepContext,
    binding: StoreBinding,
    connection: Connection,
    store: CertificateStore,
    deployment_id: int | None,
) -> Next | Done:
    request = add_request_for(
        ctx.session, ctx.platform, store, binding.alias, int(ctx.payload["certificate_id"])
    )
    added = None
    try:
        added = store.add(request)
        reload_if_supported(store)
    except Exception as exc:
        # A refused add changed nothing (stores replace atomically); a refused reload needs undoing.
        undone = rollback(ctx, binding, store, replaced=added.replaced) if added else "store unchanged"
        message = getattr(exc, "message", str(exc))
        raise ConnectorError(
            f"deploying to store '{connection.name}' failed: {message} ({undone})",
            retryable=bool(getattr(exc, "retryable", False)),
        ) from exc
    ctx.progress(f"deployed to store '{connection.name}' as '{binding.alias}'")
    expected = fingerprint_of(request.certificate_pem)
    if binding.verify_host:
        return Next("verify", {"replaced": added.replaced, "fingerprint": expected})
    # Nothing to wait for (no endpoint to re-scan): verifying here saves a step, and its commit, per
    # deployment; a crash before the commit reruns the step, and adding again is harmless.
    return _verify_and_finish(
        ctx, binding, connection, store, expected, replaced=added.replaced, deployment_id=deployment_id
    )


def confirms_writes(store: CertificateStore) -> bool:
    """Whether the store's ``add`` returns only once the content is stored and readable (a cloud API
    answering with the new version), so that reading it straight back proves nothing more."""
    return bool(getattr(store, "confirms_writes", False))


def _check_deployed(binding: StoreBinding, store: CertificateStore, expected: str) -> str | None:
    """Why the store or the endpoint does not hold ``expected``, or None when both do."""
    if Capability.INVENTORY in store.capabilities and not confirms_writes(store):
        entry = read_entry(store, binding.alias)
        if entry is None:
            return f"the store holds nothing under '{binding.alias}'"
        held = fingerprint_of(entry.certificate_pem)
        if held != expected:
            return f"the store holds {held[:16]}… under '{binding.alias}', expected {expected[:16]}…"
    if binding.verify_host and binding.verify_port:
        timeout = float(binding.options.get("verify_timeout", 15))
        served = wait_for_fingerprint(
            binding.verify_host, binding.verify_port, binding.verify_sni, expected, timeout=timeout
        )
        if served != expected:
            where = f"{binding.verify_host}:{binding.verify_port}"
            return f"{where} serves {served[:80]}, expected {expected[:16]}…"
    return None


@start_deploy.step("verify")
def verify_deployment(ctx: StepContext) -> Done:
    binding, connection, store = _binding_and_store(ctx)
    expected = str(ctx.state["fingerprint"])
    return _verify_and_finish(
        ctx, binding, connection, store, expected, replaced=bool(ctx.state.get("replaced", True))
    )


def _verify_and_finish(
    ctx: StepContext,
    binding: StoreBinding,
    connection: Connection,
    store: CertificateStore,
    expected: str,
    *,
    replaced: bool,
    deployment_id: int | None = None,
) -> Done:
    try:
        problem = _check_deployed(binding, store, expected)
    except Exception as exc:
        problem = f"verification failed: {getattr(exc, 'message', str(exc))}"
    if problem is not None:
        undone = rollback(ctx, binding, store, replaced=replaced)
        raise ConnectorError(f"{problem} ({undone})", retryable=False)
    mark_deployed(ctx, binding, connection, expected, deployment_id=deployment_id)
    return Done({"binding_id": binding.id, "fingerprint": expected}, message="deployed and verified")


def mark_deployed(
    ctx: StepContext,
    binding: StoreBinding,
    connection: Connection,
    fingerprint: str,
    *,
    deployment_id: int | None = None,
    **audited: Any,
) -> None:
    """The binding holds the job's certificate now: its state, the history row and the audit event."""
    binding.status = "deployed"
    binding.error = None
    binding.last_deployed_fingerprint = fingerprint
    binding.last_deployed_certificate_id = int(ctx.payload["certificate_id"])
    binding.last_deployed_at = ctx.now
    binding.updated_at = ctx.now
    _finish_history(ctx, "succeeded", None, fingerprint=fingerprint, deployment_id=deployment_id)
    record(
        ctx.session,
        _audit(ctx),
        "deployment.deployed",
        "store_binding",
        binding.id,
        {"store": connection.name, "alias": binding.alias, "fingerprint": fingerprint, **audited},
    )


def mark_undeployed(ctx: StepContext, binding: StoreBinding, connection: Connection, **audited: Any) -> None:
    """The binding's certificate is gone from the store: its state, the history row and the audit event."""
    binding.status = "undeployed"
    binding.error = None
    binding.last_deployed_fingerprint = None
    binding.last_deployed_certificate_id = None
    binding.updated_at = ctx.now
    _finish_history(ctx, "succeeded", None)
    record(
        ctx.session,
        _audit(ctx),
        "deployment.undeployed",
        "store_binding",
        binding.id,
        {"store": connection.name, "alias": binding.alias, **audited},
    )


@start_deploy.step("remove")
def remove_from_store(ctx: StepContext) -> Done:
    binding, connection, store = _binding_and_store(ctx)
    # Already gone (a retried step, or removed by hand): the goal is reached.
    with contextlib.suppress(NotFoundError):
        store.remove(RemoveRequest(alias=binding.alias))
    reload_if_supported(store)
    mark_undeployed(ctx, binding, connection)
    return Done({"binding_id": binding.id}, message="removed from the store")


def _finish_history(
    ctx: StepContext,
    status: str,
    error: str | None,
    *,
    fingerprint: str | None = None,
    deployment_id: int | None = None,
) -> None:
    deployment_id = deployment_id or ctx.state.get("deployment_id")
    deployment = ctx.session.get(Deployment, int(deployment_id)) if deployment_id else None
    if deployment is not None:
        deployment.status = status
        deployment.error = error
        deployment.fingerprint = fingerprint or deployment.fingerprint
        deployment.finished_at = ctx.now


@start_deploy.on_failure
def deploy_failed(ctx: StepContext, error: str) -> None:
    binding = ctx.session.get(StoreBinding, int(ctx.payload["binding_id"]))
    if binding is None:
        return
    binding.status = "failed"
    binding.error = error[:2000]
    binding.updated_at = ctx.now
    if ctx.state.get("deployment_id") is None:
        # The history row was written by the step that failed, and went with its rollback.
        ctx.session.add(
            Deployment(
                binding_id=binding.id,
                certificate_id=int(ctx.payload["certificate_id"]) or None,
                action=str(ctx.payload.get("action", "deploy")),
                job_id=ctx.job_id,
                status="failed",
                error=error[:2000],
                started_at=ctx.now,
                finished_at=ctx.now,
            )
        )
    _finish_history(ctx, "failed", error[:2000])
    record(
        ctx.session,
        _audit(ctx),
        "deployment.failed",
        "store_binding",
        binding.id,
        {"alias": binding.alias, "step": ctx.step, "error": error},
    )


# --- drift -----------------------------------------------------------------------------------------


@periodic(every=timedelta(hours=1))
@task("deployments.drift")
def drift_check(ctx: StepContext) -> Next | Done:
    """Compares each deployed binding's store entry with what was deployed, one batch per step."""
    after = int(ctx.state.get("after_id", 0))
    rows = ctx.session.execute(
        select(StoreBinding, Connection)
        .join(Connection, Connection.id == StoreBinding.store_connection_id)
        .where(StoreBinding.id > after, StoreBinding.status.in_(("deployed", "drifted")))
        # Stores hosted on agents are read on their host (agents.validate-stores).
        .where(Connection.agent_id.is_(None), Connection.agent_label.is_(None))
        .order_by(StoreBinding.id)
        .limit(DRIFT_BATCH)
    ).all()
    drifted = int(ctx.state.get("drifted", 0))
    checked = int(ctx.state.get("checked", 0))
    for binding, connection in rows:
        problem = _drift_of(ctx, binding, connection)
        checked += 1
        if problem is None:
            if binding.status == "drifted":
                binding.status, binding.error, binding.updated_at = "deployed", None, ctx.now
            continue
        drifted += 1
        if binding.status != "drifted" or binding.error != problem:
            binding.status, binding.error, binding.updated_at = "drifted", problem, ctx.now
            record(
                ctx.session,
                _audit(ctx),
                "deployment.drift",
                "store_binding",
                binding.id,
                {"store": connection.name, "alias": binding.alias, "finding": problem},
            )
            raise_drift(
                ctx.session,
                binding_id=binding.id,
                store=connection.name,
                alias=binding.alias,
                finding=problem,
                now=ctx.now,
            )
    if len(rows) == DRIFT_BATCH:
        return Next("start", {"after_id": rows[-1][0].id, "drifted": drifted, "checked": checked})
    return Done({"checked": checked, "drifted": drifted})


def _drift_of(ctx: StepContext, binding: StoreBinding, connection: Connection) -> str | None:
    try:
        store = build_store(ctx.platform, connection)
        if Capability.INVENTORY not in store.capabilities:
            return None
        entry = read_entry(store, binding.alias)
    except SslClmError as exc:
        return f"cannot read the store: {exc.message}"
    if entry is None:
        return f"the store holds nothing under '{binding.alias}'"
    held = fingerprint_of(entry.certificate_pem)
    if held != binding.last_deployed_fingerprint:
        return f"the store holds {held}, expected {binding.last_deployed_fingerprint}"
    return None


# --- store inventory as discovery ------------------------------------------------------------------


@task("stores.scan")
def scan_store(ctx: StepContext) -> Next | Done:
    """Reads one page of the store's inventory into the certificate inventory per step."""
    connection = ctx.session.get(Connection, int(ctx.payload["connection_id"]))
    if connection is None:
        raise NotFoundError("the store no longer exists", field="store")
    store = build_store(ctx.platform, connection)
    cursor = ctx.state.get("cursor")
    page = store.inventory(InventoryRequest(cursor=str(cursor) if cursor else None, limit=SCAN_PAGE))
    files: list[ParsedFile] = []
    for entry in page.entries:
        bundle = load_bundle(entry.certificate_pem + b"".join(entry.chain_pem))
        files.append(ParsedFile(f"{connection.name}/{entry.alias}", bundle.infos(), format="PEM"))
    writer = InventoryWriter(ctx.platform, source=f"store:{connection.type_key}", sighting_kind="store")
    written = writer.write(ctx.session, files, now=ctx.now)
    totals: dict[str, Any] = {
        "entries": int(ctx.state.get("entries", 0)) + len(page.entries),
        "new": int(ctx.state.get("new", 0)) + written.inserted,
    }
    if page.next_cursor:
        return Next("start", {"cursor": page.next_cursor, **totals})
    record(
        ctx.session,
        _audit(ctx),
        "store.scan",
        "connection",
        connection.id,
        {"store": connection.name, **totals},
    )
    return Done(totals)
