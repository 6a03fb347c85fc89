"""Queue overhead: no-op jobs through real ``sslclm worker`` processes on PostgreSQL.

Starts ``--workers`` worker processes (the real CLI), enqueues ``--jobs`` jobs whose one step does
nothing, and reports jobs per second from the enqueue commit to the last job's ``finished_at``.
What it measures is everything the job system costs per job: claim (batched), the step's
transaction with its compare-and-set, and commit (one fsync, shared by concurrent commits).

    python -m bench.jobs_noop --jobs 10000 --workers 2 --concurrency 8

This module is also the task module the workers import (``--import bench.jobs_noop``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from sslclm.core.config import Settings
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.jobs import Job, JobSpec, JobStatus, StepContext, enqueue_many, task

KIND = "bench.noop"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_PG = os.environ.get("SSLCLM_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@task(KIND)
def noop(ctx: StepContext) -> None:
    """Does nothing: the job's cost is the queue's cost."""


def _cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes have used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def _backends(platform: Platform, database: str) -> list[int]:
    with platform.engine.connect() as connection:
        rows = connection.execute(
            text("SELECT pid FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()"),
            {"name": database},
        )
        return [int(pid) for pid in rows.scalars()]


def _count(platform: Platform, status: str) -> int:
    with platform.sessions() as session:
        return int(session.execute(select(func.count()).where(Job.status == status)).scalar_one())


def run(admin_url: str, jobs: int, workers: int, concurrency: int) -> dict[str, Any]:
    name = f"sslclm_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as home:
            master_key = base64.b64encode(secrets.token_bytes(32)).decode()
            env = {
                **os.environ,
                "SSLCLM_HOME": home,
                "SSLCLM_DATABASE_URL": url,
                "SSLCLM_MASTER_KEY": master_key,
                "SSLCLM_LOG_LEVEL": "WARNING",
                "PYTHONPATH": str(REPO),
            }
            platform = Platform.open(Settings(home=Path(home), database_url=url, master_key=master_key))
            command = [
                sys.executable,
                "-c",
                "from sslclm.cli.main import main; main()",
                "worker",
                "--import",
                "bench.jobs_noop",
                "--concurrency",
                str(concurrency),
                "--poll-interval",
                "0.05",
                "--no-scheduler",
            ]
            processes = [subprocess.Popen(command, env=env, cwd=REPO) for _ in range(workers)]
            # Warm up: every worker has started once a batch of warm-up jobs is done.
            with session_scope(platform.sessions) as session:
                enqueue_many(session, [JobSpec(KIND) for _ in range(workers * 50)], now=platform.clock())
            while _count(platform, JobStatus.SUCCEEDED) < workers * 50:
                time.sleep(0.1)
            time.sleep(0.5)
            workers_pids = [process.pid for process in processes]
            backend_pids = _backends(platform, name)
            workers_before, backends_before = _cpu_seconds(workers_pids), _cpu_seconds(backend_pids)
            enqueue_started = time.perf_counter()
            with session_scope(platform.sessions) as session:
                enqueue_many(
                    session, [JobSpec(KIND, target="bench") for _ in range(jobs)], now=platform.clock()
                )
            started = time.perf_counter()
            while _count(platform, JobStatus.SUCCEEDED) < jobs + workers * 50:
                time.sleep(0.05)
            elapsed = time.perf_counter() - started
            workers_cpu = _cpu_seconds(workers_pids) - workers_before
            backends_cpu = _cpu_seconds(backend_pids) - backends_before
            platform.close()
        return {
            "jobs": jobs,
            "workers": workers,
            "concurrency": concurrency,
            "enqueue_seconds": round(started - enqueue_started, 3),
            # From the commit that enqueued the jobs to the moment all of them were seen done.
            "seconds": round(elapsed, 3),
            "jobs_per_second": round(jobs / elapsed, 1),
            # CPU of the worker processes and their PostgreSQL backends per job (enqueueing
            # included): the rate it bounds on idle cores, however busy the machine is meanwhile.
            "cpu_ms_per_job": round((workers_cpu + backends_cpu) / jobs * 1000, 3),
            "worker_cpu_ms_per_job": round(workers_cpu / jobs * 1000, 3),
            "postgres_cpu_ms_per_job": round(backends_cpu / jobs * 1000, 3),
            "load_average": [round(value, 1) for value in os.getloadavg()],
            "cpus": os.cpu_count(),
        }
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs_noop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--database-url", default=DEFAULT_PG, help="A PostgreSQL server (admin URL).")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.database_url, args.jobs, args.workers, args.concurrency), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
