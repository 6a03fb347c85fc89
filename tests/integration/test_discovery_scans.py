"""Scans recorded in the database: endpoints, chains in the inventory, history, comparisons, cancelling.

Real TLS servers on loopback (the zoo), a real database (SQLite and PostgreSQL), the real scanner.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from sslclm.audit.service import AuditContext
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.discovery import service
from sslclm.discovery.diff import compare_scans
from sslclm.discovery.models import Endpoint, EndpointObservation, Scan, ScanStatus
from sslclm.discovery.scans import ScanOutcome, run_scan
from sslclm.discovery.schemas import ScanOptionsIn, ScanTargetsIn
from sslclm.inventory.models import Certificate, Sighting
from sslclm.pki import compute_fingerprint
from support.tls_threads import ServerThread
from support.tls_zoo import Issued, Pki, free_port, issue, server_context, sni_context, write_identity

CTX = AuditContext(actor="test")


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create("Scan")


@pytest.fixture
def servers() -> Iterator[ServerThread]:
    with ServerThread() as thread:
        yield thread


def fingerprint(issued: Issued) -> str:
    return compute_fingerprint(issued.der)


def options(pki: Pki, **extra: object) -> ScanOptionsIn:
    return ScanOptionsIn(use_system_roots=False, extra_roots_pem=pki.root.pem.decode(), **extra)  # type: ignore[arg-type]


def scan_once(platform: Platform, targets: ScanTargetsIn, opts: ScanOptionsIn) -> tuple[int, ScanOutcome]:
    with session_scope(platform.sessions) as session:
        scan = service.create_scan(session, CTX, targets, opts, now=platform.clock(), enqueue=False)
        scan_id = scan.id
    return scan_id, run_scan(platform, scan_id)


def cert_id(platform: Platform, issued: Issued) -> int:
    with platform.sessions() as session:
        return session.execute(
            select(Certificate.id).where(Certificate.fingerprint_sha256 == fingerprint(issued))
        ).scalar_one()


def test_scans_record_endpoints_chains_history_and_differences(
    platform: Platform, servers: ServerThread, pki: Pki, tmp_path: Path
) -> None:
    first, second = pki.leaf("127.0.0.1"), pki.leaf("127.0.0.1")
    selfsigned = issue("127.0.0.1", names=["127.0.0.1"])
    context = server_context(*write_identity(tmp_path, "first", first, [pki.intermediate]))
    changing = servers.serve(ssl_context=context)
    lone = servers.serve(ssl_context=server_context(*write_identity(tmp_path, "lone", selfsigned)))
    closed = free_port()
    targets = ScanTargetsIn(targets=["127.0.0.1"], ports=f"{changing.port},{lone.port},{closed}")

    scan1, outcome = scan_once(platform, targets, options(pki))
    assert (outcome.status, outcome.total, outcome.done, outcome.found, outcome.failed) == (
        ScanStatus.SUCCEEDED,
        3,
        3,
        2,
        1,
    )
    assert outcome.certificates == 2
    with platform.sessions() as session:
        endpoints = {e.port: e for e in session.execute(select(Endpoint)).scalars()}
        # The closed port never answered and was not known: no row for it.
        assert set(endpoints) == {changing.port, lone.port}
        main = endpoints[changing.port]
        assert (main.host, main.sni, main.protocol, main.address, main.last_status) == (
            "127.0.0.1",
            "",
            "tls",
            "127.0.0.1",
            "ok",
        )
        assert (main.tls_version, main.trusted, main.trust_error_kind, main.hostname_match) == (
            "TLSv1.3",
            True,
            None,
            True,
        )
        assert main.chain == [fingerprint(first), fingerprint(pki.intermediate)]
        assert main.certificate_id == cert_id(platform, first)
        other = endpoints[lone.port]
        assert (other.trusted, other.trust_error_kind, other.hostname_match) == (False, "self-signed", True)
        # Leaf and chain certificates are in the inventory, each sighted at the endpoint.
        sightings = session.execute(
            select(
                Certificate.fingerprint_sha256,
                Sighting.location,
                Sighting.host,
                Sighting.port,
                Sighting.source,
            )
            .join(Sighting, Sighting.certificate_id == Certificate.id)
            .where(Sighting.kind == "endpoint")
        ).all()
        assert sorted(sightings) == sorted(
            [
                (fingerprint(first), f"127.0.0.1:{changing.port}", "127.0.0.1", changing.port, "tls-scan"),
                (
                    fingerprint(pki.intermediate),
                    f"127.0.0.1:{changing.port}",
                    "127.0.0.1",
                    changing.port,
                    "tls-scan",
                ),
                (fingerprint(selfsigned), f"127.0.0.1:{lone.port}", "127.0.0.1", lone.port, "tls-scan"),
            ]
        )
        assert session.execute(select(func.count()).select_from(Certificate)).scalar_one() == 3

    # The server now serves another certificate: the rescan records a change event.
    context.load_cert_chain(*write_identity(tmp_path, "second", second, [pki.intermediate]))
    scan2, outcome = scan_once(platform, targets, options(pki))
    assert outcome.status == ScanStatus.SUCCEEDED
    with platform.sessions() as session:
        detail = service.endpoint_detail(session, main.id)
    assert detail["certificate"]["fingerprint_sha256"] == fingerprint(second)
    assert [
        (h["event"], h["certificate"]["fingerprint_sha256"], h["previous_certificate_id"])
        for h in detail["history"]
    ] == [
        ("changed", fingerprint(second), cert_id(platform, first)),
        ("first-seen", fingerprint(first), None),
    ]
    with platform.sessions() as session:
        diff = compare_scans(session, scan2)
    assert diff["previous_scan_id"] == scan1
    assert diff["counts"] == {
        "endpoints_new": 0,
        "endpoints_changed": 1,
        "endpoints_vanished": 0,
        "certificates_new": 1,
        "certificates_vanished": 1,
    }
    (change,) = diff["endpoints"]["changed"]
    assert change["endpoint"]["port"] == changing.port
    assert change["previous_certificate"]["fingerprint_sha256"] == fingerprint(first)
    assert change["certificate"]["fingerprint_sha256"] == fingerprint(second)
    assert [c["fingerprint_sha256"] for c in diff["certificates"]["new"]] == [fingerprint(second)]
    assert [c["fingerprint_sha256"] for c in diff["certificates"]["vanished"]] == [fingerprint(first)]

    # The self-signed server goes away: its endpoint vanishes but keeps what it last served.
    servers.stop(lone)
    scan3, outcome = scan_once(platform, targets, options(pki))
    assert (outcome.found, outcome.failed) == (1, 2)
    with platform.sessions() as session:
        diff = compare_scans(session, scan3)
        gone = session.get_one(Endpoint, other.id)
        assert (gone.last_status, gone.last_error_kind, gone.certificate_id) == (
            "error",
            "refused",
            cert_id(platform, selfsigned),
        )
        first_served, _ = service.certificate_endpoints(session, cert_id(platform, first))
        second_served, _ = service.certificate_endpoints(session, cert_id(platform, second))
        history = session.execute(
            select(func.count())
            .select_from(EndpointObservation)
            .where(EndpointObservation.endpoint_id == main.id)
        ).scalar_one()
    assert history == 2  # the unchanged third scan extended the open observation
    assert diff["counts"]["endpoints_vanished"] == 1
    assert diff["endpoints"]["vanished"][0]["endpoint"]["port"] == lone.port
    assert [c["fingerprint_sha256"] for c in diff["certificates"]["vanished"]] == [fingerprint(selfsigned)]
    assert [(e["port"], e["serves_now"]) for e in first_served] == [(changing.port, False)]
    assert [(e["port"], e["serves_now"]) for e in second_served] == [(changing.port, True)]

    # A finished scan is not run again: run_scan is idempotent.
    again = run_scan(platform, scan3)
    assert (again.status, again.done) == (ScanStatus.SUCCEEDED, 3)


def test_sni_names_are_separate_endpoints(
    platform: Platform, servers: ServerThread, pki: Pki, tmp_path: Path
) -> None:
    a, b, default = pki.leaf("a.zoo.test"), pki.leaf("b.zoo.test"), pki.leaf("127.0.0.1")

    def ctx(label: str, leaf: Issued) -> object:
        return server_context(*write_identity(tmp_path, label, leaf, [pki.intermediate]))

    context = sni_context(ctx("default", default), {"a.zoo.test": ctx("a", a), "b.zoo.test": ctx("b", b)})  # type: ignore[arg-type]
    server = servers.serve(ssl_context=context)
    targets = ScanTargetsIn(targets=[f"a.zoo.test,b.zoo.test@127.0.0.1:{server.port}"])
    _, outcome = scan_once(platform, targets, options(pki))
    assert (outcome.found, outcome.certificates) == (3, 3)
    with platform.sessions() as session:
        served = {
            e.sni: fp
            for e, fp in session.execute(
                select(Endpoint, Certificate.fingerprint_sha256).join(
                    Certificate, Certificate.id == Endpoint.certificate_id
                )
            )
        }
        locations = set(
            session.execute(select(Sighting.location).where(Sighting.kind == "endpoint")).scalars()
        )
    assert served == {"": fingerprint(default), "a.zoo.test": fingerprint(a), "b.zoo.test": fingerprint(b)}
    assert f"127.0.0.1:{server.port} (sni a.zoo.test)" in locations


def test_cancelling_a_running_scan_stops_it(platform: Platform, servers: ServerThread, pki: Pki) -> None:
    async def silent(reader: object, writer: object) -> None:
        await __import__("asyncio").sleep(60)

    # A TCP server that never answers the handshake: every endpoint takes the full handshake timeout.
    server = servers.serve(silent)  # type: ignore[arg-type]
    names = ",".join(f"n{i}.zoo.test" for i in range(40))
    targets = ScanTargetsIn(targets=[f"{names}@127.0.0.1:{server.port}"])
    opts = options(pki, concurrency=2, handshake_timeout=0.5)
    with session_scope(platform.sessions) as session:
        scan_id = service.create_scan(session, CTX, targets, opts, now=platform.clock(), enqueue=False).id
    outcome: list[ScanOutcome] = []
    runner = threading.Thread(target=lambda: outcome.append(run_scan(platform, scan_id)))
    runner.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with platform.sessions() as session:
            if session.get_one(Scan, scan_id).done > 0:
                break
        time.sleep(0.1)
    with session_scope(platform.sessions) as session:
        service.cancel_scan(session, CTX, scan_id, now=platform.clock())
    runner.join(30)
    assert not runner.is_alive()
    (result,) = outcome
    assert result.status == ScanStatus.CANCELLED
    assert 0 < result.done < result.total == 41
    with platform.sessions() as session:
        scan = session.get_one(Scan, scan_id)
        assert (scan.status, scan.cancel_requested, scan.finished_at is not None) == ("cancelled", True, True)


def test_a_queued_scan_cancelled_before_it_runs_never_runs(platform: Platform, pki: Pki) -> None:
    with session_scope(platform.sessions) as session:
        scan = service.create_scan(
            session, CTX, ScanTargetsIn(targets=["127.0.0.1"]), options(pki), now=platform.clock()
        )
        scan_id, job_id = scan.id, scan.job_id
    assert job_id is not None
    with session_scope(platform.sessions) as session:
        cancelled = service.cancel_scan(session, CTX, scan_id, now=platform.clock())
        assert cancelled.status == ScanStatus.CANCELLED
    outcome = run_scan(platform, scan_id)
    assert (outcome.status, outcome.done) == (ScanStatus.CANCELLED, 0)
    from sslclm.jobs.models import Job

    with platform.sessions() as session:
        assert session.get_one(Job, job_id).status == "cancelled"


@pytest.mark.parametrize(
    ("spec", "field", "token"),
    [
        ({"targets": ["10.0.0.0/33"]}, "targets", "10.0.0.0/33"),
        ({"targets": ["good.example", "bad_host!"]}, "targets", "bad_host!"),
        ({"targets": ["10.0.0.1"], "ports": "443,70000"}, "ports", "70000"),
        ({"targets": ["10.0.0.1"], "exclude": ["10.0.0.0/40"]}, "exclude", "10.0.0.0/40"),
    ],
)
def test_bad_targets_are_refused_naming_the_token(
    platform: Platform, spec: dict[str, object], field: str, token: str
) -> None:
    from sslclm.errors import InvalidInputError

    with session_scope(platform.sessions) as session, pytest.raises(InvalidInputError) as caught:
        service.create_scan(session, CTX, ScanTargetsIn.model_validate(spec), now=platform.clock())
    assert caught.value.field == field
    assert token in caught.value.message
    with platform.sessions() as session:
        assert session.execute(select(func.count()).select_from(Scan)).scalar_one() == 0


def test_the_migration_matches_the_discovery_models(platform: Platform) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from sslclm.core.models import Base

    ours = {"endpoints", "endpoint_observations", "scans", "scan_results", "scan_schedules"}

    def table_of(diff: object) -> str | None:
        item = diff[0] if isinstance(diff, list) else diff
        for part in item[1:] if isinstance(item, tuple) else ():
            name = getattr(part, "name", None) if not isinstance(part, str) else None
            table = getattr(part, "table", None)
            if table is not None:
                return str(table.name)
            if name in ours:
                return str(name)
            if isinstance(part, str) and part in ours:
                return part
        return None

    with platform.engine.connect() as connection:
        diffs = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
        )
    assert [d for d in diffs if table_of(d) in ours] == []
