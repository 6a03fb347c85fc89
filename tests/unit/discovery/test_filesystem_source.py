"""The ``filesystem`` discovery source through the SPI: registry checks, findings and their details."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from sslclm.connectors.filesystem import FilesystemConfig, FilesystemSource
from sslclm.pki import compute_fingerprint
from sslclm.spi import Capability, ConnectorKind, DiscoveryRequest, Finding, SightingKind
from sslclm.spi.registry import ConnectorRegistry, validate_connector_class
from sslclm.spi.testing import memory_context
from support.tls_zoo import Pki


def discover(source: FilesystemSource, request: DiscoveryRequest) -> list[Finding]:
    async def collect() -> list[Finding]:
        return [finding async for finding in source.discover(request)]

    return asyncio.run(collect())


def test_both_sources_are_registered_by_entry_point() -> None:
    registry = ConnectorRegistry.from_entry_points([ConnectorKind.DISCOVERY_SOURCE])
    assert {t.type_key for t in registry.types(ConnectorKind.DISCOVERY_SOURCE)} >= {"filesystem", "tls-scan"}
    assert [f for f in registry.failures if f.type_key in ("filesystem", "tls-scan")] == []
    validate_connector_class(ConnectorKind.DISCOVERY_SOURCE, "filesystem", FilesystemSource)
    assert FilesystemSource.supports(Capability.DISCOVER)
    schema = FilesystemConfig.model_json_schema()
    assert schema["properties"]["passwords"]["items"]["writeOnly"] is True


def test_findings_carry_file_facts_and_key_exposure(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pki = Pki.create("Source")
    leaf = pki.leaf("src.files.test")
    site = tmp_path / "tree" / "site"
    site.mkdir(parents=True)
    (site / "site.crt").write_bytes(leaf.pem + pki.intermediate.pem)
    (site / "site.key").write_bytes(leaf.key_pem)
    (site / "site.key").chmod(0o644)
    (site / "stray.key").write_bytes(pki.leaf("other.test").key_pem)
    (site / "stray.key").chmod(0o600)
    config = FilesystemConfig(paths=[str(tmp_path / "tree")], passwords=["changeit"])
    source = FilesystemSource(config, memory_context(tmp_path / "ctx"))
    assert source.check().ok
    with caplog.at_level(logging.INFO):
        findings = discover(source, DiscoveryRequest())
    assert [(f.sighting.location, compute_fingerprint(f.certificate_der)) for f in findings] == [
        (str(site / "site.crt"), compute_fingerprint(leaf.der)),
        (f"{site / 'site.crt'}#1", compute_fingerprint(pki.intermediate.der)),
    ]
    first = findings[0]
    assert first.chain_der == (pki.intermediate.der,)
    assert first.sighting.kind is SightingKind.FILE
    assert first.sighting.path == str(site / "site.crt")
    details = dict(first.sighting.details)
    assert (
        details["format"],
        details["mode"],
        details["key_path"],
        details["key_exposed"],
        details["key_encrypted"],
    ) == (
        "PEM",
        "0644",
        str(site / "site.key"),
        True,
        False,
    )
    assert "key_path" not in findings[1].sighting.details
    messages = [r.getMessage() for r in caplog.records]
    assert any("exposed-key" in m and "site.key" in m for m in messages)
    assert any("without a certificate" in m and "stray.key" in m for m in messages)
    # The request's targets replace the configured paths.
    assert discover(source, DiscoveryRequest(targets=(str(tmp_path / "nothing-here"),))) == []


def test_check_reports_missing_paths(tmp_path: Path) -> None:
    source = FilesystemSource(
        FilesystemConfig(paths=[str(tmp_path / "gone")]), memory_context(tmp_path / "ctx")
    )
    result = source.check()
    assert (result.ok, result.message) == (False, f"missing: {tmp_path / 'gone'}")
