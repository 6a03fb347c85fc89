"""STARTTLS against a real SMTP server (aiosmtpd), characterised exactly, and recorded as an endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Sink
from sqlalchemy import select

from sslclm.audit.service import AuditContext
from sslclm.connectors.tls_scan import (
    ErrorKind,
    Protocol,
    ScanOptions,
    ScanResult,
    TrustStore,
    parse_targets,
    scan,
)
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.discovery import service
from sslclm.discovery.models import Endpoint
from sslclm.discovery.scans import run_scan
from sslclm.discovery.schemas import ScanOptionsIn, ScanTargetsIn
from sslclm.pki import compute_fingerprint
from support.tls_zoo import Pki, free_port, server_context, write_identity

NAME = "mail.zoo.test"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create("Mail")


def smtp_server(pki: Pki, directory: Path, *, tls: bool) -> Iterator[Controller]:
    context = (
        server_context(*write_identity(directory, "mail", pki.leaf(NAME), [pki.intermediate]))
        if tls
        else None
    )
    controller = Controller(
        Sink(), hostname="127.0.0.1", port=free_port(), tls_context=context, server_hostname=NAME
    )
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


@pytest.fixture
def smtp(pki: Pki, tmp_path: Path) -> Iterator[Controller]:
    yield from smtp_server(pki, tmp_path, tls=True)


@pytest.fixture
def plain_smtp(pki: Pki, tmp_path: Path) -> Iterator[Controller]:
    yield from smtp_server(pki, tmp_path, tls=False)


def collect(targets: list[str], pki: Pki) -> list[ScanResult]:
    async def main() -> list[ScanResult]:
        options = ScanOptions(trust_store=TrustStore([pki.root.cert]), concurrency=2)
        return [r async for r in scan(parse_targets(targets), options)]

    return asyncio.run(main())


def test_aiosmtpd_starttls_is_characterised_exactly(smtp: Controller, pki: Pki) -> None:
    results = {r.target.sni: r for r in collect([f"smtp://{NAME}@127.0.0.1:{smtp.port}"], pki)}
    assert set(results) == {None, NAME}
    named, bare = results[NAME], results[None]
    leaf_der = bare.chain[0]
    for result in (named, bare):
        assert result.target.protocol is Protocol.SMTP
        assert (result.ok, result.error_kind, result.error, result.address) == (True, None, None, "127.0.0.1")
        assert result.chain == (leaf_der, pki.intermediate.der)
        assert (result.tls_version, result.trusted, result.trust_error_kind) == ("TLSv1.3", True, None)
        assert result.cipher is not None and result.alpn is None  # no ALPN offered after STARTTLS
        assert result.handshake_time is not None and result.connect_time is not None
    assert named.hostname_match is True
    assert bare.hostname_match is False  # checked against 127.0.0.1, which the certificate does not name
    # Port 587 is SMTP by default: no scheme needed when the port says it.
    assert next(iter(parse_targets(["127.0.0.1:587"]))).protocol is Protocol.SMTP


def test_an_smtp_server_without_starttls_is_a_starttls_failure(plain_smtp: Controller, pki: Pki) -> None:
    (result,) = collect([f"smtp://127.0.0.1:{plain_smtp.port}"], pki)
    assert (result.ok, result.error_kind, result.error) == (
        False,
        ErrorKind.STARTTLS,
        "SMTP server does not offer STARTTLS",
    )
    assert result.connect_time is not None and result.chain == ()


def test_starttls_endpoints_are_recorded_with_their_protocol(
    platform: Platform, smtp: Controller, pki: Pki
) -> None:
    targets = ScanTargetsIn(targets=[f"{NAME}@127.0.0.1:{smtp.port}"], protocol="smtp")
    opts = ScanOptionsIn(use_system_roots=False, extra_roots_pem=pki.root.pem.decode())
    with session_scope(platform.sessions) as session:
        scan_id = service.create_scan(
            session, AuditContext(actor="test"), targets, opts, now=platform.clock(), enqueue=False
        ).id
    outcome = run_scan(platform, scan_id)
    assert (outcome.found, outcome.certificates) == (2, 1)
    with platform.sessions() as session:
        rows = {e.sni: e for e in session.execute(select(Endpoint)).scalars()}
    assert set(rows) == {"", NAME}
    endpoint = rows[NAME]
    assert (endpoint.protocol, endpoint.trusted, endpoint.hostname_match, endpoint.tls_version) == (
        "smtp",
        True,
        True,
        "TLSv1.3",
    )
    assert endpoint.chain[1] == compute_fingerprint(pki.intermediate.der)
