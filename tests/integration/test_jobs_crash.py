"""Two real ``sslclm worker`` processes on PostgreSQL; one is SIGKILLed in the middle of a job.

Every job must still complete, and its effect must happen exactly once.
"""

from __future__ import annotations

import base64
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

from sslclm.core.config import Settings
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.jobs import Job, JobSpec, JobStatus, enqueue_many
from sslclm.jobs.models import JobEvent

REPO = Path(__file__).resolve().parents[2]
JOBS = 40
WORKER = "from sslclm.cli.main import main; main()"


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-c",
        WORKER,
        "worker",
        "--import",
        "tests.support.jobs_tasks",
        "--concurrency",
        "2",
        "--lease-seconds",
        "2",
        "--poll-interval",
        "0.1",
        "--no-scheduler",
    ]
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def _wait_for(condition: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {condition}")


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_mid_job_every_job_completes_exactly_once(postgres_url: str, tmp_path: Path) -> None:
    master_key = base64.b64encode(secrets.token_bytes(32)).decode()
    platform = Platform.open(
        Settings(home=tmp_path / "home", database_url=postgres_url, master_key=master_key)
    )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with platform.engine.begin() as connection:
            connection.execute(
                text(
                    "CREATE TABLE crash_attempts (id SERIAL PRIMARY KEY, job_id BIGINT NOT NULL, "
                    "step TEXT NOT NULL, pid INTEGER NOT NULL)"
                )
            )
            connection.execute(
                text("CREATE TABLE crash_effects (job_id BIGINT PRIMARY KEY, pid INTEGER NOT NULL)")
            )
        with session_scope(platform.sessions) as session:
            enqueue_many(
                session,
                [JobSpec("test.crash", {"work_seconds": 0.3}) for _ in range(JOBS)],
                now=platform.clock(),
            )
        env = {
            **os.environ,
            "SSLCLM_HOME": str(tmp_path / "home"),
            "SSLCLM_DATABASE_URL": postgres_url,
            "SSLCLM_MASTER_KEY": master_key,
            "SSLCLM_LOG_LEVEL": "INFO",
            "PYTHONPATH": str(REPO),
        }
        victim = _start_worker(env, tmp_path / "victim.log")
        survivor = _start_worker(env, tmp_path / "survivor.log")
        processes = [victim, survivor]

        def victim_inside_a_step() -> bool:
            with platform.engine.connect() as connection:
                return (
                    connection.execute(
                        text(
                            "SELECT count(*) FROM crash_attempts a JOIN jobs j ON j.id = a.job_id "
                            "WHERE a.pid = :pid AND a.step = 'start' AND j.status = 'running' "
                            "AND j.lease_owner LIKE :owner"
                        ),
                        {"pid": victim.pid, "owner": f"%:{victim.pid}:%"},
                    ).scalar_one()
                    > 0
                )

        _wait_for("the victim to start a job", victim_inside_a_step, 60)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(10) == -signal.SIGKILL

        def all_finished() -> bool:
            with platform.engine.connect() as connection:
                unfinished = connection.execute(
                    text("SELECT count(*) FROM jobs WHERE status NOT IN ('succeeded', 'failed', 'cancelled')")
                ).scalar_one()
                return unfinished == 0

        _wait_for("the survivor to finish every job", all_finished, 60)
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(30) == 0, (tmp_path / "survivor.log").read_text()

        with platform.sessions() as session:
            statuses = dict(session.execute(select(Job.id, Job.status)).all())
            effects = dict(session.execute(text("SELECT job_id, pid FROM crash_effects")).all())
            started_by_victim = set(
                session.execute(
                    text("SELECT DISTINCT job_id FROM crash_attempts WHERE pid = :pid"), {"pid": victim.pid}
                ).scalars()
            )
            takeovers = session.execute(
                select(func.count()).where(JobEvent.message.like("lease of %expired%"))
            ).scalar_one()
        assert set(statuses.values()) == {JobStatus.SUCCEEDED}, statuses
        # Exactly once: one effect per job (the primary key would have failed a second one).
        assert sorted(effects) == sorted(statuses)
        assert set(effects.values()) <= {victim.pid, survivor.pid}
        # The kill landed inside a job: a job the victim started was finished by the survivor.
        interrupted = {job_id for job_id in started_by_victim if effects[job_id] == survivor.pid}
        assert interrupted, "the victim was not killed in the middle of a job"
        assert takeovers >= len(interrupted)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        platform.close()
