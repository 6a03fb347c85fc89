"""Deployments in batches: one job deploys many bindings of one store.

certificate.deploy-batch:  start → done, in one step and one commit: the certificates, chains and keys
                           of every item are read with a few queries (each key unsealed once), the
                           store is given each item (``add``) and each is verified as a single
                           deployment is (read back unless the store confirms its writes), then the
                           history rows go in with one statement, the bindings are updated with one,
                           and the audit events are appended last with one.

Which bindings go in these jobs is :func:`sslclm.deployments.service.deploys_in_batch`: the server
runs the store, no endpoint is verified by a handshake and the store needs no reload; every other
binding keeps its own ``certificate.deploy`` job. An item refused by the store, or whose read-back
differs, has what the store held put back and fails alone (its binding failed, with the reason). A
retryable error (the store times out, throttles) puts back what this attempt added and fails the
step, which is tried again as a whole: adding the same content again is harmless, and the history
rows are unique per binding and job. An item that can no longer go in a batch when the job runs (its
binding now names an endpoint) is handed to a ``certificate.deploy`` job of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select, update

from sslclm.audit.service import AuditContext, PlannedEvent, record_many
from sslclm.deployments.models import Deployment, StoreBinding
from sslclm.deployments.service import (
    ACTIVE,
    DEPLOY_BATCH_TASK,
    ChainLink,
    build_store,
    chain_for,
    deployment_specs,
    deploys_in_batch,
    needs_private_key,
)
from sslclm.deployments.tasks import confirms_writes, fingerprint_of, rollback
from sslclm.errors import ConnectorError, NotFoundError
from sslclm.inventory.models import Certificate, PrivateKey
from sslclm.inventory.writer import private_key_aad
from sslclm.jobs import queue
from sslclm.jobs.registry import task
from sslclm.jobs.sql import dialect_insert
from sslclm.jobs.steps import Done, StepContext
from sslclm.pki import certificate_to_pem, load_private_key_der, private_key_to_pem
from sslclm.spi.capabilities import Capability
from sslclm.spi.store import AddRequest, CertificateStore, read_entry
from sslclm.workflows.models import Connection

MAX_ERROR = 2000


@dataclass(slots=True)
class _Item:
    binding: StoreBinding
    certificate_id: int
    request: AddRequest | None = None
    fingerprint: str | None = None
    error: str | None = None
    added: bool = False
    replaced: bool = True


def _audit(ctx: StepContext) -> AuditContext:
    return AuditContext(actor=f"job:{ctx.job_id}")


def _items(ctx: StepContext) -> list[tuple[int, int]]:
    return [(int(binding_id), int(certificate_id)) for binding_id, certificate_id in ctx.payload["items"]]


def _message(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc) or type(exc).__name__


@task(DEPLOY_BATCH_TASK)
def deploy_batch(ctx: StepContext) -> Done:
    """Deploys every item that can still go in the batch, and records them all in this step's commit."""
    store_id = int(ctx.payload["store_id"])
    connection = ctx.session.get(Connection, store_id)
    if connection is None:
        raise NotFoundError("the store no longer exists", field="store")
    store = build_store(ctx.platform, connection)
    pairs = _items(ctx)
    bindings = {
        binding.id: binding
        for binding in ctx.session.execute(
            select(StoreBinding).where(StoreBinding.id.in_([binding_id for binding_id, _ in pairs]))
        ).scalars()
    }
    work: list[_Item] = []
    elsewhere: list[tuple[int, int, int, bool]] = []
    for binding_id, certificate_id in pairs:
        binding = bindings.get(binding_id)
        if binding is None or binding.status not in ACTIVE:
            continue  # unbound or undeployed since it was enqueued: nothing to deploy
        batchable = deploys_in_batch(
            connection.type_key,
            agent_id=connection.agent_id,
            agent_label=connection.agent_label,
            verify_host=binding.verify_host,
        )
        if binding.store_connection_id != store_id or not batchable:
            elsewhere.append((binding_id, binding.store_connection_id, certificate_id, False))
            continue
        work.append(_Item(binding, certificate_id))
    if elsewhere:
        queue.enqueue_many(ctx.session, deployment_specs(elsewhere), now=ctx.now)
        ctx.progress(f"{len(elsewhere)} deployment(s) handed to jobs of their own")
    _prepare(ctx, store, work)
    for index, item in enumerate(work):
        if item.request is not None:
            _deploy(ctx, connection, store, work, index)
    _record(ctx, connection.name, work)
    deployed = sum(1 for item in work if item.error is None)
    ctx.progress(f"deployed {deployed} of {len(work)} to store '{connection.name}'")
    return Done(
        {"deployed": deployed, "failed": len(work) - deployed, "handed_over": len(elsewhere)},
        message=f"{deployed} deployed and verified, {len(work) - deployed} failed",
    )


def _prepare(ctx: StepContext, store: CertificateStore, work: Sequence[_Item]) -> None:
    """Each item's ``AddRequest`` (or its error), from one query for the certificates, one for the
    keys, and one chain walk per issuing CA."""
    if not work:
        return
    rows = {
        row.id: row
        for row in ctx.session.execute(
            select(
                Certificate.id,
                Certificate.der,
                Certificate.self_signed,
                Certificate.issuer_id,
                Certificate.has_private_key,
                Certificate.public_key_sha256,
            ).where(Certificate.id.in_({item.certificate_id for item in work}))
        )
    }
    with_key = needs_private_key(store)
    keys: dict[str, bytes] = {}
    if with_key:
        wanted = {row.public_key_sha256 for row in rows.values() if row.has_private_key}
        keys = _unseal(ctx, wanted)
    chains: dict[int, tuple[bytes, ...]] = {}
    for item in work:
        row = rows.get(item.certificate_id)
        if row is None:
            item.error = f"certificate {item.certificate_id} no longer exists"
            continue
        key_pem = None
        if with_key:
            key_pem = keys.get(row.public_key_sha256) if row.has_private_key else None
            if key_pem is None:
                item.error = "the platform does not hold this certificate's private key"
                continue
        chain: tuple[bytes, ...] = ()
        if not row.self_signed:
            # Every certificate of one issuer has the same chain above it: walked once per issuer.
            if row.issuer_id not in chains:
                link = ChainLink(row.der, row.self_signed, row.issuer_id)
                chains[row.issuer_id] = tuple(certificate_to_pem(der) for der in chain_for(ctx.session, link))
            chain = chains[row.issuer_id]
        item.request = AddRequest(
            alias=item.binding.alias,
            certificate_pem=certificate_to_pem(row.der),
            chain_pem=chain,
            private_key_pem=key_pem,
        )


def _unseal(ctx: StepContext, fingerprints: Iterable[str]) -> dict[str, bytes]:
    """The PEM of each stored key named, unsealed once each; a key that is gone is left out."""
    wanted = list(fingerprints)
    if not wanted:
        return {}
    sealed = ctx.session.execute(
        select(PrivateKey.public_key_sha256, PrivateKey.encrypted_pkcs8).where(
            PrivateKey.public_key_sha256.in_(wanted)
        )
    ).all()
    envelope = ctx.platform.envelope
    return {
        fingerprint: private_key_to_pem(
            load_private_key_der(envelope.decrypt(blob, private_key_aad(fingerprint)))
        )
        for fingerprint, blob in sealed
    }


def _deploy(
    ctx: StepContext, connection: Connection, store: CertificateStore, work: Sequence[_Item], index: int
) -> None:
    """Adds one item and verifies it. A retryable error puts back what this attempt added and fails
    the step (it is tried again as a whole); any other failure is the item's alone."""
    item = work[index]
    assert item.request is not None
    try:
        added = store.add(item.request)
    except Exception as exc:
        if getattr(exc, "retryable", False):
            _undo(ctx, store, work[:index])
            raise ConnectorError(
                f"deploying to store '{connection.name}' failed: {_message(exc)}"
                f" (what this attempt of the batch added was put back)",
                retryable=True,
            ) from exc
        # A refused add changed nothing: the stores replace atomically.
        item.error = f"deploying to store '{connection.name}' failed: {_message(exc)} (store unchanged)"
        return
    item.added, item.replaced = True, added.replaced
    expected = fingerprint_of(item.request.certificate_pem)
    try:
        problem = _read_back(store, item.binding.alias, expected)
    except Exception as exc:
        problem = f"verification failed: {_message(exc)}"
    if problem is not None:
        item.error = f"{problem} ({rollback(ctx, item.binding, store, replaced=added.replaced)})"
        item.added = False
        return
    item.fingerprint = expected


def _read_back(store: CertificateStore, alias: str, expected: str) -> str | None:
    """Why the store does not hold ``expected`` under ``alias``, or None when it does (the same check
    as a single deployment's, which has no endpoint to verify here)."""
    if Capability.INVENTORY not in store.capabilities or confirms_writes(store):
        return None
    entry = read_entry(store, alias)
    if entry is None:
        return f"the store holds nothing under '{alias}'"
    held = fingerprint_of(entry.certificate_pem)
    if held != expected:
        return f"the store holds {held[:16]}… under '{alias}', expected {expected[:16]}…"
    return None


def _undo(ctx: StepContext, store: CertificateStore, done: Sequence[_Item]) -> None:
    """Puts back what the store held before the items this attempt added (the step's records go with
    its rollback, so the store must not keep what nothing records)."""
    for item in done:
        if item.added:
            rollback(ctx, item.binding, store, replaced=item.replaced)


def _record(ctx: StepContext, store_name: str, work: Sequence[_Item]) -> None:
    """History rows, binding updates and audit events for every item, a statement each."""
    if not work:
        return
    session = ctx.session
    history = [
        {
            "binding_id": item.binding.id,
            "certificate_id": item.certificate_id,
            "fingerprint": item.fingerprint,
            "action": "deploy",
            "job_id": ctx.job_id,
            "status": "failed" if item.error else "succeeded",
            "error": item.error[:MAX_ERROR] if item.error else None,
            "started_at": ctx.now,
            "finished_at": ctx.now,
        }
        for item in work
    ]
    # A history row per binding and job (unique): a step that runs again after its commit adds none.
    session.execute(
        dialect_insert(session, Deployment).on_conflict_do_nothing(index_elements=["binding_id", "job_id"]),
        history,
    )
    deployed = [
        {
            "id": item.binding.id,
            "status": "deployed",
            "error": None,
            "last_deployed_fingerprint": item.fingerprint,
            "last_deployed_certificate_id": item.certificate_id,
            "last_deployed_at": ctx.now,
            "updated_at": ctx.now,
        }
        for item in work
        if item.error is None
    ]
    failed = [
        {"id": item.binding.id, "status": "failed", "error": item.error[:MAX_ERROR], "updated_at": ctx.now}
        for item in work
        if item.error is not None
    ]
    for rows in (deployed, failed):
        if rows:
            session.execute(update(StoreBinding), rows)
    events = [
        PlannedEvent(
            "deployment.deployed",
            "store_binding",
            item.binding.id,
            {"store": store_name, "alias": item.binding.alias, "fingerprint": item.fingerprint},
        )
        if item.error is None
        else PlannedEvent(
            "deployment.failed",
            "store_binding",
            item.binding.id,
            {"alias": item.binding.alias, "step": ctx.step, "error": item.error},
        )
        for item in work
    ]
    # Last: on PostgreSQL the append holds the audit log's lock until this step commits.
    record_many(session, _audit(ctx), events, occurred_at=ctx.now)


@deploy_batch.on_failure
def batch_failed(ctx: StepContext, error: str) -> None:
    """A batch that ended failed: each of its bindings is marked failed with the reason and a history
    row (what the last attempt added to the store was put back by it)."""
    pairs = _items(ctx)
    bindings = {
        binding.id: binding
        for binding in ctx.session.execute(
            select(StoreBinding).where(
                StoreBinding.id.in_([binding_id for binding_id, _ in pairs]), StoreBinding.status.in_(ACTIVE)
            )
        ).scalars()
    }
    work = [
        _Item(bindings[binding_id], certificate_id, error=error[:MAX_ERROR] or "the batch failed")
        for binding_id, certificate_id in pairs
        if binding_id in bindings
    ]
    connection = ctx.session.get(Connection, int(ctx.payload["store_id"]))
    _record(ctx, connection.name if connection else f"#{ctx.payload['store_id']}", work)
