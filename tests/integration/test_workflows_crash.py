"""Two real ``sslclm worker`` processes issue certificates from the built-in CA on PostgreSQL; one is
SIGKILLed while issuances run. Every job completes, exactly once: one issuance per managed certificate,
one certificate signed per job at the CA, and no private key without its certificate."""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from sslclm.audit.service import AuditContext
from sslclm.core.config import Settings
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.inventory.models import Certificate, PrivateKey
from sslclm.jobs.models import Job, JobEvent, JobStatus
from sslclm.spi.capabilities import ConnectorKind
from sslclm.workflows import connections, managed, profiles
from sslclm.workflows.models import ConnectorStateEntry, Issuance, ManagedCertificate

REPO = Path(__file__).resolve().parents[2]
CERTIFICATES = 60
WORKER = "from sslclm.cli.main import main; main()"


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-c",
        WORKER,
        "worker",
        "--concurrency",
        "2",
        "--lease-seconds",
        "3",
        "--poll-interval",
        "0.1",
        "--no-scheduler",
    ]
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def _wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _declare(platform: Platform) -> None:
    ctx = AuditContext(actor="crash-test")
    with session_scope(platform.sessions) as session:
        connections.create_connection(
            session,
            ctx,
            platform,
            kind=ConnectorKind.CA_GATEWAY.value,
            name="local",
            type_key="local",
            config={},
        )
        profiles.create_profile(
            session,
            ctx,
            platform,
            profiles.ProfileInput(name="fleet", ca_connection="local", validity_days=30),
        )
    for start in range(0, CERTIFICATES, 30):
        with session_scope(platform.sessions) as session:
            for n in range(start, min(start + 30, CERTIFICATES)):
                data = managed.ManagedInput(dns_names=[f"host{n}.crash.example"], profile="fleet")
                managed.create_managed(session, ctx, platform, data)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigkill_during_issuance_every_certificate_is_issued_exactly_once(
    postgres_url: str, tmp_path: Path
) -> None:
    master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    home = tmp_path / "home"
    platform = Platform.open(Settings(home=home, database_url=postgres_url, master_key=master_key))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        env = {
            **os.environ,
            "SSLCLM_HOME": str(home),
            "SSLCLM_DATABASE_URL": postgres_url,
            "SSLCLM_MASTER_KEY": master_key,
            "SSLCLM_LOG_LEVEL": "INFO",
            "PYTHONPATH": str(REPO),
        }
        victim = _start_worker(env, tmp_path / "victim.log")
        survivor = _start_worker(env, tmp_path / "survivor.log")
        processes = [victim, survivor]
        # The workers are up (and idle) before the work arrives, so both take a share of it.
        time.sleep(1.0)
        _declare(platform)

        def victim_holds_issuances() -> bool:
            with platform.engine.connect() as connection:
                issued = connection.execute(text("SELECT count(*) FROM issuances")).scalar_one()
                held = connection.execute(
                    text(
                        "SELECT count(*) FROM jobs WHERE status = 'running' AND step <> 'start' "
                        "AND lease_owner LIKE :owner"
                    ),
                    {"owner": f"%:{victim.pid}:%"},
                ).scalar_one()
                return bool(issued > 0 and held > 0)

        _wait_for("the victim to be in the middle of issuances", victim_holds_issuances, 120)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL

        def all_finished() -> bool:
            with platform.engine.connect() as connection:
                return (
                    connection.execute(
                        text("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running', 'waiting')")
                    ).scalar_one()
                    == 0
                )

        _wait_for("the survivor to finish every job", all_finished, 150)
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(30) == 0, (tmp_path / "survivor.log").read_text()

        with platform.sessions() as session:
            jobs = session.execute(select(Job.id, Job.status).where(Job.kind == "certificate.issue")).all()
            takeovers = session.execute(
                select(JobEvent.message).where(JobEvent.message.like("lease of %expired during step%"))
            ).scalars()
            interrupted_steps = {message.rsplit("during step ", 1)[1].split(" ")[0] for message in takeovers}
            per_managed = dict(
                session.execute(
                    select(Issuance.managed_certificate_id, func.count()).group_by(
                        Issuance.managed_certificate_id
                    )
                ).all()
            )
            statuses = set(session.execute(select(ManagedCertificate.status)).scalars())
            leaves = session.execute(
                select(func.count()).select_from(Certificate).where(Certificate.is_ca.is_(False))
            ).scalar_one()
            keys = session.execute(select(func.count()).select_from(PrivateKey)).scalar_one()
            unlinked_keys = session.execute(
                select(func.count())
                .select_from(PrivateKey)
                .where(
                    ~select(Certificate.id)
                    .where(Certificate.public_key_sha256 == PrivateKey.public_key_sha256)
                    .exists()
                )
            ).scalar_one()
            ca_state = session.execute(
                select(ConnectorStateEntry.key, ConnectorStateEntry.value).where(
                    ConnectorStateEntry.key.like("issue/%") | ConnectorStateEntry.key.like("cert/%")
                )
            ).all()
        assert len(jobs) == CERTIFICATES
        assert {status for _, status in jobs} == {JobStatus.SUCCEEDED}
        assert interrupted_steps, "no job was taken over from the killed worker"
        # Exactly once, seen from every side: the platform, the inventory, the keys and the CA.
        assert len(per_managed) == CERTIFICATES and set(per_managed.values()) == {1}
        assert statuses == {"active"}
        assert leaves == CERTIFICATES
        assert keys == CERTIFICATES and unlinked_keys == 0
        issued_at_ca = [key for key, _ in ca_state if key.startswith("cert/")]
        answered_keys = [json.loads(value)["serial"] for key, value in ca_state if key.startswith("issue/")]
        assert len(issued_at_ca) == CERTIFICATES
        assert len(answered_keys) == len(set(answered_keys)) == CERTIFICATES
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        platform.close()
