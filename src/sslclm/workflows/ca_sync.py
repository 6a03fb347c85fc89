"""CA sync: what a CA connection issued (through any client, not only this platform) feeds the inventory.

Runs as a job over the gateway's ``list_issued`` pages, one page per step, so a sync of a large CA
account resumes where it stopped. A periodic sweep enqueues one sync per listing-capable connection.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.core.platform import Platform
from sslclm.errors import InvalidInputError, NotFoundError
from sslclm.inventory.models import Certificate
from sslclm.inventory.writer import InventoryWriter, ParsedFile
from sslclm.jobs import queue
from sslclm.jobs.models import Job
from sslclm.jobs.registry import periodic, task
from sslclm.jobs.steps import Done, Next, StepContext
from sslclm.pki import load_bundle
from sslclm.spi.capabilities import Capability, ConnectorKind
from sslclm.spi.registry import call
from sslclm.spi.types import ListIssuedRequest, ListIssuedResult
from sslclm.workflows.connections import build_ca_gateway, connector_registry
from sslclm.workflows.models import Connection

SYNC_TASK = "ca.sync"
PAGE = 500


def _supports_listing(connection: Connection) -> bool:
    try:
        cls = connector_registry().get(ConnectorKind.CA_GATEWAY, connection.type_key).cls
    except NotFoundError:
        return False
    return cls.supports(Capability.LIST)


def request_sync(session: Session, ctx: AuditContext, platform: Platform, connection: Connection) -> Job:
    if not _supports_listing(connection):
        raise InvalidInputError(
            f"CA connection '{connection.name}' ({connection.type_key}) cannot list what it issued",
            field="connection",
        )
    job = queue.enqueue(
        session,
        SYNC_TASK,
        {"connection_id": connection.id},
        now=platform.clock(),
        dedupe_key=f"ca-sync:{connection.id}",
        target=f"connection:{connection.id}",
    )
    record(session, ctx, "connection.sync", "connection", connection.id, {"job_id": job.id})
    return job


@task(SYNC_TASK)
def sync_page(ctx: StepContext) -> Next | Done:
    """Imports one page of issued certificates; the cursor for the next page is saved with it."""
    connection = ctx.session.get(Connection, int(ctx.payload["connection_id"]))
    if connection is None:
        raise NotFoundError(f"CA connection {ctx.payload['connection_id']} no longer exists")
    gateway = build_ca_gateway(ctx.platform, connection)
    cursor = ctx.state.get("cursor")
    page: ListIssuedResult = call(
        gateway, Capability.LIST, ListIssuedRequest(cursor=str(cursor) if cursor else None, limit=PAGE)
    )
    infos = []
    revoked: dict[str, Any] = {}
    for issued in page.certificates:
        info = load_bundle(issued.certificate_pem, filename="ca-sync").infos()[0]
        infos.append(info)
        if issued.revoked_at is not None:
            revoked[info.fingerprint_sha256] = issued
    imported = int(ctx.state.get("imported", 0))
    if infos:
        writer = InventoryWriter(ctx.platform, source=f"ca-sync:{connection.name}", sighting_kind="ca")
        written = writer.write(ctx.session, [ParsedFile(f"ca:{connection.name}", infos)], now=ctx.now)
        imported += written.inserted
        for fingerprint, issued in revoked.items():
            ctx.session.execute(
                update(Certificate)
                .where(
                    Certificate.id == written.certificate_ids[fingerprint], Certificate.revoked_at.is_(None)
                )
                .values(
                    revoked_at=issued.revoked_at,
                    revocation_reason=issued.revocation_reason.value if issued.revocation_reason else None,
                )
            )
    seen = int(ctx.state.get("seen", 0)) + len(infos)
    ctx.progress(f"{seen} certificates listed, {imported} new to the inventory")
    if page.next_cursor:
        return Next("start", {"cursor": page.next_cursor, "seen": seen, "imported": imported})
    return Done({"seen": seen, "imported": imported})


@periodic(every=timedelta(hours=6))
@task("ca.sync-all")
def sync_all(ctx: StepContext) -> Done:
    """Enqueues a sync of every enabled CA connection that can list what it issued."""
    connections = ctx.session.execute(
        select(Connection).where(
            Connection.kind == ConnectorKind.CA_GATEWAY.value, Connection.enabled.is_(True)
        )
    ).scalars()
    specs = [
        queue.JobSpec(kind=SYNC_TASK, payload={"connection_id": c.id}, dedupe_key=f"ca-sync:{c.id}")
        for c in connections
        if _supports_listing(c)
    ]
    return Done({"enqueued": queue.enqueue_many(ctx.session, specs, now=ctx.now)})
