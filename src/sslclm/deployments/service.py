"""Bindings of managed certificates to stores, and the requests that deploy to them or take them away."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import select
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.core.platform import Platform
from sslclm.deployments.models import Deployment, StoreBinding
from sslclm.errors import ConflictError, InvalidInputError, NotFoundError, NotSupportedError
from sslclm.inventory.models import Certificate, Issuer
from sslclm.jobs.models import Job
from sslclm.jobs.queue import JobSpec, enqueue, enqueue_many
from sslclm.pki import certificate_to_pem, private_key_to_pem
from sslclm.spi.capabilities import Capability, ConnectorKind
from sslclm.spi.files import check_alias
from sslclm.spi.store import AddRequest, CertificateStore
from sslclm.workflows.connections import build_connector, connector_registry, get_connection
from sslclm.workflows.managed import get_managed
from sslclm.workflows.models import Connection, ManagedCertificate
from sslclm.workflows.recording import load_key

DEPLOY_TASK = "certificate.deploy"
DEPLOY_BATCH_TASK = "certificate.deploy-batch"  # see sslclm.deployments.batch
DEPLOY_BATCH_SIZE = 100
SCAN_TASK = "stores.scan"
ACTIVE = ("pending", "deploying", "deployed", "failed", "drifted")


@runtime_checkable
class RestorableStore(Protocol):
    """A store that keeps what an ``add`` replaced and can put it back (files, keystores)."""

    def restore_previous(self, alias: str) -> bool: ...


def needs_private_key(store: CertificateStore) -> bool:
    """Whether the store is given the key: only stores that serve TLS or hold keystores need it."""
    return bool(getattr(store, "needs_private_key", True))


@dataclass(frozen=True, slots=True)
class BindingInput:
    managed: str | int
    store: str | int
    alias: str
    options: dict[str, Any]
    verify_host: str | None = None
    verify_port: int | None = None
    verify_sni: str | None = None


def describe_binding(binding: StoreBinding, store_name: str | None = None) -> dict[str, Any]:
    return {
        "id": binding.id,
        "managed_certificate_id": binding.managed_certificate_id,
        "store_id": binding.store_connection_id,
        "store": store_name,
        "alias": binding.alias,
        "options": binding.options,
        "verify": (
            {"host": binding.verify_host, "port": binding.verify_port, "sni": binding.verify_sni}
            if binding.verify_host
            else None
        ),
        "status": binding.status,
        "last_deployed_fingerprint": binding.last_deployed_fingerprint,
        "last_deployed_certificate_id": binding.last_deployed_certificate_id,
        "last_deployed_at": binding.last_deployed_at.isoformat() if binding.last_deployed_at else None,
        "error": binding.error,
        "updated_at": binding.updated_at.isoformat(),
    }


def describe_deployment(deployment: Deployment) -> dict[str, Any]:
    return {
        "id": deployment.id,
        "action": deployment.action,
        "status": deployment.status,
        "certificate_id": deployment.certificate_id,
        "fingerprint": deployment.fingerprint,
        "job_id": deployment.job_id,
        "error": deployment.error,
        "started_at": deployment.started_at,
        "finished_at": deployment.finished_at,
    }


def get_binding(session: Session, binding_id: int) -> StoreBinding:
    binding = session.get(StoreBinding, binding_id)
    if binding is None:
        raise NotFoundError(f"no store binding {binding_id}", field="binding")
    return binding


def store_connection(session: Session, ref: str | int) -> Connection:
    return get_connection(session, ref, ConnectorKind.CERT_STORE)


def create_binding(
    session: Session, ctx: AuditContext, platform: Platform, data: BindingInput, *, deploy: bool = True
) -> tuple[StoreBinding, Job | None]:
    """Binds a managed certificate to a store alias; deploys its current certificate right away if any."""
    managed = get_managed(session, data.managed)
    store = store_connection(session, data.store)
    check_alias(data.alias)
    if data.verify_host is not None and not (data.verify_port and 0 < data.verify_port < 65536):
        raise InvalidInputError("verify needs a port between 1 and 65535", field="verify.port")
    taken = session.execute(
        select(StoreBinding.id).where(
            StoreBinding.store_connection_id == store.id, StoreBinding.alias == data.alias
        )
    ).first()
    if taken is not None:
        raise ConflictError(f"alias '{data.alias}' of store '{store.name}' is already bound", field="alias")
    now = platform.clock()
    binding = StoreBinding(
        managed_certificate_id=managed.id,
        store_connection_id=store.id,
        alias=data.alias,
        options=dict(data.options),
        verify_host=data.verify_host,
        verify_port=data.verify_port,
        verify_sni=data.verify_sni,
        status="pending",
        created_at=now,
        updated_at=now,
    )
    session.add(binding)
    session.flush()
    record(
        session,
        ctx,
        "deployment.bind",
        "store_binding",
        binding.id,
        {"managed_certificate": managed.name, "store": store.name, "alias": data.alias},
    )
    job = None
    if deploy and managed.current_certificate_id is not None:
        job = enqueue_deploy(session, binding, managed.current_certificate_id, now=now)
    return binding, job


def list_bindings(
    session: Session, *, managed_id: int | None = None, store_id: int | None = None, limit: int = 500
) -> list[tuple[StoreBinding, str]]:
    stmt = (
        select(StoreBinding, Connection.name)
        .join(Connection, Connection.id == StoreBinding.store_connection_id)
        .order_by(StoreBinding.id)
        .limit(limit)
    )
    if managed_id is not None:
        stmt = stmt.where(StoreBinding.managed_certificate_id == managed_id)
    if store_id is not None:
        stmt = stmt.where(StoreBinding.store_connection_id == store_id)
    return [(row[0], row[1]) for row in session.execute(stmt)]


def history(session: Session, binding_id: int, *, limit: int = 50) -> Sequence[Deployment]:
    stmt = (
        select(Deployment)
        .where(Deployment.binding_id == binding_id)
        .order_by(Deployment.id.desc())
        .limit(limit)
    )
    return session.execute(stmt).scalars().all()


def enqueue_deploy(
    session: Session, binding: StoreBinding, certificate_id: int, *, now: datetime, action: str = "deploy"
) -> Job:
    return enqueue(
        session,
        DEPLOY_TASK,
        {"binding_id": binding.id, "certificate_id": certificate_id, "action": action},
        now=now,
        dedupe_key=f"deploy:{binding.id}:{action}:{certificate_id}",
        target=f"store_binding:{binding.id}",
    )


def enqueue_deployments(session: Session, managed_id: int, certificate_id: int, *, now: datetime) -> int:
    """Enqueues a deployment of ``certificate_id`` to every binding of the managed certificate.

    Called in the transaction that records an issuance, so a renewal always deploys; returns how many
    jobs were added.
    """
    return enqueue_deployments_of(session, {managed_id: certificate_id}, now=now)


def deploys_in_batch(
    type_key: str, *, agent_id: int | None, verify_host: str | None, agent_label: str | None = None
) -> bool:
    """Whether a deployment to a binding goes in a ``certificate.deploy-batch`` job: the server runs the
    store (no agent by id or label), there is no endpoint to verify by a handshake, and the store needs
    no reload (nginx, HAProxy: their reload, handshake and rollback stay one job per binding)."""
    if agent_id is not None or agent_label or verify_host:
        return False
    try:
        kind = connector_registry().get(ConnectorKind.CERT_STORE, type_key)
    except NotFoundError:
        return False  # its own job fails with the reason
    return Capability.RELOAD not in kind.capabilities


def deployment_specs(pairs: Sequence[tuple[int, int, int, bool]]) -> list[JobSpec]:
    """Jobs for ``(binding id, store id, certificate id, in a batch)``: the batchable bindings of each
    store in ``certificate.deploy-batch`` jobs of up to ``DEPLOY_BATCH_SIZE``, the others one job each."""
    specs: list[JobSpec] = []
    batches: dict[int, list[list[int]]] = {}
    for binding_id, store_id, certificate_id, in_batch in pairs:
        if in_batch:
            batches.setdefault(store_id, []).append([binding_id, certificate_id])
            continue
        specs.append(
            JobSpec(
                DEPLOY_TASK,
                {"binding_id": binding_id, "certificate_id": certificate_id, "action": "deploy"},
                dedupe_key=f"deploy:{binding_id}:deploy:{certificate_id}",
                target=f"store_binding:{binding_id}",
            )
        )
    for store_id, items in batches.items():
        for start in range(0, len(items), DEPLOY_BATCH_SIZE):
            chunk = items[start : start + DEPLOY_BATCH_SIZE]
            specs.append(
                JobSpec(
                    DEPLOY_BATCH_TASK,
                    {"store_id": store_id, "items": chunk},
                    # The same batch enqueued twice (a retried caller) is one job.
                    dedupe_key=f"deploy-batch:{store_id}:{chunk[0][0]}:{chunk[0][1]}:{len(chunk)}",
                    target=f"store:{store_id}",
                )
            )
    return specs


def enqueue_deployments_of(session: Session, certificate_for: Mapping[int, int], *, now: datetime) -> int:
    """Enqueues the deployment of each managed certificate's new certificate (``certificate_for``:
    managed certificate id -> certificate id) to all its active bindings, in batches where
    :func:`deploys_in_batch` allows; one query per ``DEPLOY_BATCH_SIZE`` managed certificates."""
    managed_ids = list(certificate_for)
    pairs: list[tuple[int, int, int, bool]] = []
    for start in range(0, len(managed_ids), DEPLOY_BATCH_SIZE):
        rows = session.execute(
            select(
                StoreBinding.id,
                StoreBinding.managed_certificate_id,
                StoreBinding.store_connection_id,
                StoreBinding.verify_host,
                Connection.type_key,
                Connection.agent_id,
                Connection.agent_label,
            )
            .join(Connection, Connection.id == StoreBinding.store_connection_id)
            .where(
                StoreBinding.managed_certificate_id.in_(managed_ids[start : start + DEPLOY_BATCH_SIZE]),
                StoreBinding.status.in_(ACTIVE),
            )
            .order_by(StoreBinding.id)
        ).all()
        pairs += [
            (
                row.id,
                row.store_connection_id,
                certificate_for[row.managed_certificate_id],
                deploys_in_batch(
                    row.type_key,
                    agent_id=row.agent_id,
                    agent_label=row.agent_label,
                    verify_host=row.verify_host,
                ),
            )
            for row in rows
        ]
    specs = deployment_specs(pairs)
    return enqueue_many(session, specs, now=now) if specs else 0


def redeploy(session: Session, ctx: AuditContext, binding_id: int, *, now: datetime) -> Job:
    binding = get_binding(session, binding_id)
    managed = session.get(ManagedCertificate, binding.managed_certificate_id)
    if managed is None or managed.current_certificate_id is None:
        raise ConflictError("the managed certificate has no certificate to deploy yet", field="binding")
    job = enqueue_deploy(session, binding, managed.current_certificate_id, now=now)
    record(session, ctx, "deployment.redeploy", "store_binding", binding.id, {"job_id": job.id})
    return job


def undeploy(session: Session, ctx: AuditContext, binding_id: int, *, now: datetime) -> Job:
    binding = get_binding(session, binding_id)
    job = enqueue_deploy(
        session, binding, binding.last_deployed_certificate_id or 0, now=now, action="undeploy"
    )
    record(session, ctx, "deployment.undeploy", "store_binding", binding.id, {"job_id": job.id})
    return job


@dataclass(frozen=True, slots=True)
class ChainLink:
    """A certificate's DER and what walking up its chain needs."""

    der: bytes
    self_signed: bool
    issuer_id: int


# Only the columns a deployment uses: loading whole inventory rows costs more than the rest of the query.
_LINK_COLUMNS = (Certificate.der, Certificate.self_signed, Certificate.issuer_id)


def chain_for(session: Session, certificate: ChainLink, *, limit: int = 5) -> list[bytes]:
    """The DER of the issuing CAs above ``certificate`` that the inventory holds, nearest first, without
    the root."""
    chain: list[bytes] = []
    current = certificate
    for _ in range(limit):
        if current.self_signed:
            break
        # One round trip per level: every deployment walks this.
        issuer_dn = select(Issuer.dn).where(Issuer.id == current.issuer_id).scalar_subquery()
        row = session.execute(
            select(*_LINK_COLUMNS)
            .where(Certificate.subject == issuer_dn, Certificate.is_ca.is_(True))
            .order_by(Certificate.not_after.desc())
            .limit(1)
        ).first()
        if row is None or row.self_signed:
            break
        chain.append(row.der)
        current = ChainLink(row.der, row.self_signed, row.issuer_id)
    return chain


def add_request_for(
    session: Session, platform: Platform, store: CertificateStore, alias: str, certificate_id: int
) -> AddRequest:
    """What to give the store for ``certificate_id``: certificate, chain and, if it needs it, the key."""
    row = session.execute(
        select(*_LINK_COLUMNS, Certificate.has_private_key, Certificate.public_key_sha256).where(
            Certificate.id == certificate_id
        )
    ).first()
    if row is None:
        raise NotFoundError(f"certificate {certificate_id} no longer exists", field="certificate")
    key_pem = None
    if needs_private_key(store):
        if not row.has_private_key:
            raise ConflictError(
                "the platform does not hold this certificate's private key", field="certificate"
            )
        key_pem = private_key_to_pem(load_key(session, platform, row.public_key_sha256))
    chain = chain_for(session, ChainLink(row.der, row.self_signed, row.issuer_id))
    return AddRequest(
        alias=alias,
        certificate_pem=certificate_to_pem(row.der),
        chain_pem=tuple(certificate_to_pem(der) for der in chain),
        private_key_pem=key_pem,
    )


def request_scan(
    session: Session, ctx: AuditContext, platform: Platform, ref: str | int
) -> tuple[Connection, Job]:
    """Enqueues a read of the store's inventory into the certificate inventory (one pending per store)."""
    row = store_connection(session, ref)
    if row.hosted_on_agent:
        # Its files are on the agent's host, not here: the agent reads them (sslclm.agents.validation).
        raise ConflictError(
            f"store '{row.name}' is hosted on an agent; read it with 'sslclm store validate'", field="store"
        )
    if Capability.INVENTORY not in build_store(platform, row).capabilities:
        raise NotSupportedError(f"store type '{row.type_key}' cannot list what it holds", field="store")
    job = enqueue(
        session, SCAN_TASK, {"connection_id": row.id}, now=platform.clock(), dedupe_key=f"store-scan:{row.id}"
    )
    record(session, ctx, "store.scan-requested", "connection", row.id, {"job_id": job.id})
    return row, job


def build_store(platform: Platform, connection: Connection) -> CertificateStore:
    if connection.kind != ConnectorKind.CERT_STORE.value:
        raise InvalidInputError(f"connection '{connection.name}' is not a store", field="store")
    store: CertificateStore = build_connector(platform, connection)
    return store
