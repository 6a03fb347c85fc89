"""Running a discovery-source connector and recording its findings in the inventory.

Any :class:`~sslclm.spi.DiscoverySource` (``filesystem``, ``tls-scan``, a plugin) streams findings;
they are written in batches through the shared inventory writer, each with its sighting (kind,
location, host, port, SNI and the source's details). The source is consumed as a stream, so a
source that finds millions of certificates costs one batch of memory.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, bindparam, update
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.inventory.models import Sighting
from sslclm.inventory.writer import InventoryWriter, ParsedFile
from sslclm.pki import parse_certificate
from sslclm.spi import DiscoveryRequest, DiscoverySource, Finding

BATCH_SIZE = 500


@dataclass
class DiscoverySummary:
    findings: int = 0
    certificates_inserted: int = 0
    rejected: list[str] = field(default_factory=list)  # locations whose certificate did not parse


class _Recorder:
    def __init__(self, platform: Platform, source: str, ctx: AuditContext) -> None:
        self.platform = platform
        self.source = source
        self.ctx = ctx
        self.writers: dict[str, InventoryWriter] = {}
        self.summary = DiscoverySummary()

    def write(self, findings: list[Finding]) -> None:
        by_kind: dict[str, list[tuple[ParsedFile, Finding]]] = {}
        for finding in findings:
            try:
                infos = [parse_certificate(der) for der in (finding.certificate_der, *finding.chain_der)]
            except ValueError:
                self.summary.rejected.append(finding.sighting.location)
                continue
            kind = finding.sighting.kind.value
            by_kind.setdefault(kind, []).append((ParsedFile(finding.sighting.location, infos), finding))
        now = self.platform.clock()
        with session_scope(self.platform.sessions) as session:
            inserted = 0
            for kind, items in by_kind.items():
                writer = self.writers.get(kind)
                if writer is None:
                    writer = self.writers[kind] = InventoryWriter(
                        self.platform, source=self.source, sighting_kind=kind
                    )
                inserted += writer.write(session, [parsed for parsed, _ in items], now=now).inserted
                _describe_sightings(session, kind, [finding for _, finding in items])
            record(
                session,
                self.ctx,
                "discovery.record",
                "inventory",
                None,
                {"source": self.source, "findings": len(findings), "imported": inserted},
                occurred_at=now,
            )
        self.summary.findings += len(findings)
        self.summary.certificates_inserted += inserted


def _describe_sightings(session: Session, kind: str, findings: list[Finding]) -> None:
    """Copies host, port, SNI and details onto the sightings the writer upserted (it sets the location)."""
    table = Sighting.__table__
    assert isinstance(table, Table)
    stmt = (
        update(table)
        .where(table.c.kind == kind, table.c.location == bindparam("_location"))
        .values(
            host=bindparam("_host"),
            port=bindparam("_port"),
            sni=bindparam("_sni"),
            details=bindparam("_details"),
        )
    )
    rows: dict[str, dict[str, Any]] = {}
    for finding in findings:
        sighting = finding.sighting
        details = dict(sighting.details)
        if sighting.ip:
            details.setdefault("ip", sighting.ip)
        if sighting.path:
            details.setdefault("path", sighting.path)
        rows[sighting.location] = {
            "_location": sighting.location,
            "_host": sighting.host,
            "_port": sighting.port,
            "_sni": sighting.sni,
            "_details": details,
        }
    session.execute(stmt, list(rows.values()))


async def _consume(
    source: DiscoverySource, request: DiscoveryRequest, recorder: _Recorder, batch_size: int
) -> None:
    batch: list[Finding] = []
    writing: asyncio.Future[None] | None = None
    async for finding in source.discover(request):
        batch.append(finding)
        if len(batch) >= batch_size:
            if writing is not None:
                await writing
            writing = asyncio.ensure_future(asyncio.to_thread(recorder.write, batch))
            batch = []
    if writing is not None:
        await writing
    if batch:
        await asyncio.to_thread(recorder.write, batch)


def run_discovery_source(
    platform: Platform,
    source: DiscoverySource,
    request: DiscoveryRequest,
    ctx: AuditContext,
    *,
    batch_size: int = BATCH_SIZE,
) -> DiscoverySummary:
    """Runs ``source`` for ``request`` and records every finding; returns what was recorded.

    Whatever the source raises (``ConnectorError``, ``InvalidInputError``) propagates after the
    batches already written are committed.
    """
    recorder = _Recorder(platform, source.type_key, ctx)
    asyncio.run(_consume(source, request, recorder, batch_size))
    return recorder.summary
