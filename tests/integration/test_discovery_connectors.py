"""Discovery-source connectors run by the platform: findings streamed into the real inventory."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from sslclm.audit.service import AuditContext
from sslclm.connectors.filesystem import FilesystemConfig, FilesystemSource
from sslclm.connectors.tls_scan import TlsScanConfig, TlsScanSource
from sslclm.core.platform import Platform
from sslclm.discovery.connectors import run_discovery_source
from sslclm.errors import InvalidInputError
from sslclm.inventory.models import Certificate, Sighting
from sslclm.pki import compute_fingerprint
from sslclm.spi import DiscoveryRequest, Finding, SightingKind
from sslclm.spi.testing import memory_context
from support.tls_threads import ServerThread
from support.tls_zoo import Pki, server_context, write_identity

CTX = AuditContext(actor="test")


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create("Connectors")


@pytest.fixture
def servers() -> Iterator[ServerThread]:
    with ServerThread() as thread:
        yield thread


def test_filesystem_findings_land_in_the_inventory(platform: Platform, pki: Pki, tmp_path: Path) -> None:
    leaf = pki.leaf("fs.connectors.test")
    tree = tmp_path / "etc" / "ssl"
    tree.mkdir(parents=True)
    (tree / "site.pem").write_bytes(leaf.pem + pki.intermediate.pem)
    (tree / "site.key").write_bytes(leaf.key_pem)
    (tree / "site.key").chmod(0o640)
    source = FilesystemSource(
        FilesystemConfig(paths=[str(tmp_path / "etc")]), memory_context(tmp_path / "ctx")
    )
    summary = run_discovery_source(platform, source, DiscoveryRequest(), CTX, batch_size=1)
    assert (summary.findings, summary.certificates_inserted, summary.rejected) == (2, 2, [])
    with platform.sessions() as session:
        rows = session.execute(
            select(
                Certificate.fingerprint_sha256,
                Certificate.source,
                Sighting.kind,
                Sighting.location,
                Sighting.details,
            )
            .join(Sighting, Sighting.certificate_id == Certificate.id)
            .order_by(Sighting.location, Certificate.id)
        ).all()
    leaf_fp, inter_fp = compute_fingerprint(leaf.der), compute_fingerprint(pki.intermediate.der)
    site = str(tree / "site.pem")
    assert [(fp, src, kind, loc) for fp, src, kind, loc, _ in rows] == [
        (leaf_fp, "filesystem", "file", site),
        (inter_fp, "filesystem", "file", site),  # the leaf's chain, sighted where the leaf is
        (inter_fp, "filesystem", "file", f"{site}#1"),
    ]
    details = rows[0][4]
    assert (details["key_path"], details["key_exposed"], details["mode"], details["path"]) == (
        str(tree / "site.key"),
        True,
        "0644",
        site,
    )


def test_tls_scan_source_yields_chains_and_records_endpoints(
    platform: Platform, servers: ServerThread, pki: Pki, tmp_path: Path
) -> None:
    leaf = pki.leaf("127.0.0.1")
    server = servers.serve(
        ssl_context=server_context(*write_identity(tmp_path, "src", leaf, [pki.intermediate]))
    )
    config = TlsScanConfig(
        use_system_roots=False, extra_roots_pem=pki.root.pem.decode(), ports=str(server.port)
    )
    source = TlsScanSource(config, memory_context(tmp_path / "ctx"))
    assert source.check().ok

    async def collect() -> list[Finding]:
        return [f async for f in source.discover(DiscoveryRequest(targets=("127.0.0.1", "127.0.0.2")))]

    (finding,) = asyncio.run(collect())  # 127.0.0.2 refuses: skipped, not an error
    assert (finding.certificate_der, finding.chain_der) == (leaf.der, (pki.intermediate.der,))
    sighting = finding.sighting
    assert (sighting.kind, sighting.location, sighting.host, sighting.ip, sighting.port, sighting.sni) == (
        SightingKind.ENDPOINT,
        f"127.0.0.1:{server.port}",
        "127.0.0.1",
        "127.0.0.1",
        server.port,
        None,
    )
    assert (
        sighting.details["trusted"],
        sighting.details["hostname_match"],
        sighting.details["tls_version"],
    ) == (
        True,
        True,
        "TLSv1.3",
    )
    summary = run_discovery_source(platform, source, DiscoveryRequest(targets=("127.0.0.1",)), CTX)
    assert summary.findings == 1
    with platform.sessions() as session:
        (row,) = session.execute(
            select(Sighting)
            .join(Certificate)
            .where(Certificate.fingerprint_sha256 == compute_fingerprint(leaf.der))
        ).scalars()
        assert (row.kind, row.source, row.host, row.port, row.details["protocol"]) == (
            "endpoint",
            "tls-scan",
            "127.0.0.1",
            server.port,
            "tls",
        )
    bad = DiscoveryRequest(targets=("127.0.0.1",), options={"speed": "ludicrous"})
    with pytest.raises(InvalidInputError) as caught:
        asyncio.run(anext(source.discover(bad)))  # type: ignore[arg-type]
    assert caught.value.field == "options.speed"
    assert not TlsScanSource(TlsScanConfig(ports="99999"), memory_context(tmp_path / "c2")).check().ok
