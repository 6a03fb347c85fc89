"""A directory import leaves its policy evaluation to jobs; large PEM bundles are parsed in parts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from conftest import ApiUser
from sslclm.audit.service import AuditContext
from sslclm.core.platform import Platform
from sslclm.inventory import importer
from sslclm.inventory.bulk import insert_certificates, stored_datetime, upsert_sightings
from sslclm.inventory.importer import import_bytes, import_paths, pem_parts, run_evaluations
from sslclm.inventory.models import Certificate, Sighting
from sslclm.inventory.writer import ROW_ISSUER, InventoryWriter, parse_file_bytes
from sslclm.jobs.models import Job, JobStatus
from sslclm.policies.models import PolicyViolation
from sslclm.policies.tasks import EVALUATE_WRITTEN_TASK
from support.certs import make_ca, make_leaf

CTX = AuditContext(actor="test")
POLICY = """\
name: live
scope: {kind: all}
checks:
  - check: expiry
    params: {warning_days: 30, critical_days: 7}
  - check: key-reuse
"""


def _checks(platform: Platform) -> dict[str, set[str]]:
    """Violated checks per certificate common name."""
    found: dict[str, set[str]] = {}
    with platform.sessions() as session:
        rows = session.execute(
            select(Certificate.common_name, PolicyViolation.check).join(
                PolicyViolation, PolicyViolation.certificate_id == Certificate.id
            )
        )
        for name, check in rows:
            found.setdefault(name or "", set()).add(check)
    return found


@pytest.fixture
def live_policy(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    response = client.put("/api/v1/policies", content=POLICY, headers=api_users["admin"].headers)
    assert response.status_code in (200, 201), response.text


@pytest.mark.usefixtures("live_policy")
def test_the_evaluation_runs_as_jobs_after_the_import(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = make_ca("Deferred Root")
    older = make_leaf(ca, "older.example.com", days=200)
    import_bytes(platform, older.pem, "older.pem", CTX)  # an upload is evaluated at once
    assert _checks(platform) == {}

    # Two new holders of older's key, each in a batch (and a job) of its own, and one expiring soon.
    monkeypatch.setattr(importer, "BATCH_CERTIFICATES", 1)
    (tmp_path / "a.pem").write_bytes(make_leaf(ca, "twin-a.example.com", days=200, same_key_as=older).pem)
    (tmp_path / "b.pem").write_bytes(make_leaf(ca, "twin-b.example.com", days=200, same_key_as=older).pem)
    (tmp_path / "c.pem").write_bytes(make_leaf(ca, "soon.example.com", days=5).pem)
    summary = import_paths(platform, [tmp_path], CTX, workers=1, evaluate=False)
    assert summary.imported == 3
    assert len(summary.evaluation_jobs) == 3
    assert _checks(platform) == {}  # not evaluated yet: the jobs wait for a worker

    run_evaluations(platform)
    with platform.sessions() as session:
        jobs = session.execute(select(Job.kind, Job.status).where(Job.id.in_(summary.evaluation_jobs))).all()
    assert jobs == [(EVALUATE_WRITTEN_TASK, JobStatus.SUCCEEDED.value)] * 3
    assert _checks(platform) == {
        # The older holder's verdict changed although its key arrived with two batches.
        "older.example.com": {"key-reuse"},
        "twin-a.example.com": {"key-reuse"},
        "twin-b.example.com": {"key-reuse"},
        "soon.example.com": {"expiry"},
    }


@pytest.mark.usefixtures("live_policy")
def test_an_import_evaluates_before_returning_by_default(platform: Platform, tmp_path: Path) -> None:
    (tmp_path / "soon.pem").write_bytes(make_leaf(make_ca(), "soon.example.com", days=5).pem)
    summary = import_paths(platform, [tmp_path], CTX, workers=1)
    assert summary.imported == 1
    assert _checks(platform) == {"soon.example.com": {"expiry"}}
    with platform.sessions() as session:
        status = session.execute(select(Job.status).where(Job.id == summary.evaluation_jobs[0])).scalar_one()
    assert status == JobStatus.SUCCEEDED.value


def test_a_large_bundle_is_parsed_in_parts_and_joined(
    platform: Platform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importer, "CHUNK_BYTES", 4096)
    ca = make_ca("Bundle Root")
    leaves = [make_leaf(ca, f"host{i}.example.com") for i in range(16)]
    bundle = tmp_path / "certs" / "bundle.pem"
    bundle.parent.mkdir()
    bundle.write_bytes(b"".join(leaf.pem for leaf in leaves))
    # The last block is cut short: the whole file is rejected, with the reason a whole parse gives.
    broken = tmp_path / "certs" / "broken.pem"
    broken.write_bytes(b"".join(leaf.pem for leaf in leaves[:12]) + leaves[12].pem[:200])
    parts = pem_parts(str(bundle), 4096)
    assert parts is not None and len(parts) >= 3
    assert [part.last for part in parts] == [False] * (len(parts) - 1) + [True]

    summary = import_paths(platform, [bundle.parent], CTX, workers=2, evaluate=False)
    assert summary.imported == 16
    assert [(Path(r.path).name, r.reason) for r in summary.rejected] == [
        ("broken.pem", "truncated PEM: BEGIN CERTIFICATE without END")
    ]
    with platform.sessions() as session:
        assert session.execute(select(func.count()).select_from(Certificate)).scalar_one() == 16
        locations = session.execute(select(Sighting.location).distinct()).scalars().all()
    assert locations == [str(bundle)]


def test_bundles_with_keys_or_other_formats_are_parsed_whole(tmp_path: Path) -> None:
    leaves = [make_leaf(make_ca(), f"k{i}.example.com") for i in range(6)]
    keyed = tmp_path / "keyed.pem"
    keyed.write_bytes(b"".join(leaf.pem for leaf in leaves) + leaves[0].key_pem)
    der = tmp_path / "one.der"
    der.write_bytes(leaves[0].der * 8)
    assert pem_parts(str(keyed), 1024) is None
    assert pem_parts(str(der), 1024) is None


def test_a_certificate_inserted_meanwhile_sends_the_batch_the_on_conflict_way(platform: Platform) -> None:
    ca = make_ca("Race Root")
    first, second = make_leaf(ca, "first.example.com"), make_leaf(ca, "second.example.com")
    with platform.sessions() as session, session.begin():
        written = InventoryWriter(platform, source="import", sighting_kind="file").write(
            session, [parse_file_bytes("first.pem", first.pem, None)]
        )
    first_id = next(iter(written.certificate_ids.values()))
    with platform.sessions() as session:
        issuer_id = session.execute(select(Certificate.issuer_id)).scalar_one()
    stamp = stored_datetime(datetime.now(UTC))
    # As if a concurrent import had inserted ``first`` after this writer looked its fingerprint up.
    rows = [
        (*row[:ROW_ISSUER], issuer_id, *row[ROW_ISSUER + 1 :], "import", False, stamp, stamp)
        for leaf in (first, second)
        for row in parse_file_bytes("x.pem", leaf.pem, None, as_rows=True).rows
    ]
    with platform.sessions() as session, session.begin():
        ids = insert_certificates(session, rows)
        # Both counted as new: first's sighting exists, so their COPY fails and both go ON CONFLICT.
        sightings = [
            (ids[row[0]], "file", name, "import", "{}", stamp, stamp)
            for row, name in zip(rows, ("first.pem", "x.pem"), strict=True)
        ]
        upsert_sightings(session, sightings, set(ids.values()))
    assert ids[rows[0][0]] == first_id
    with platform.sessions() as session:
        assert session.execute(select(func.count()).select_from(Certificate)).scalar_one() == 2
        seen = session.execute(select(Sighting.certificate_id, Sighting.location)).all()
    assert sorted(seen) == [(first_id, "first.pem"), (ids[rows[1][0]], "x.pem")]


def test_the_ids_a_batch_insert_returns_are_the_stored_ones(platform: Platform) -> None:
    ca = make_ca("Ids Root")
    bundle = b"".join(make_leaf(ca, f"ids{i}.example.com").pem for i in range(5))
    with platform.sessions() as session, session.begin():
        written = InventoryWriter(platform, source="import", sighting_kind="file").write(
            session, [parse_file_bytes("ids.pem", bundle, None)]
        )
    with platform.sessions() as session:
        stored = dict(session.execute(select(Certificate.fingerprint_sha256, Certificate.id)).all())
    assert written.certificate_ids == stored
    assert sorted(written.new_ids) == sorted(stored.values())
