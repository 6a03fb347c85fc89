"""Issuance and renewal throughput (issue 3), in one run:

(a) the bare rate of "generate a P-256 key, build a CSR, sign it with a P-256 CA" with cryptography
    alone, on one core;
(b) ``--renewals`` managed certificates renewed end to end by two real ``sslclm worker`` processes on
    a fresh PostgreSQL database: the scheduler's tick enqueues the renewal jobs, and each job
    generates a key, builds the CSR, has the built-in CA sign it, stores the sealed key and the
    certificate, links it to its managed certificate and plans the next renewal;
(c) one scheduler tick (``enqueue_due_renewals``) over ``--tick-size`` managed certificates.

    python -m bench.renewals --renewals 10000 --workers 2 --concurrency 2

Two threads per worker: while one waits on PostgreSQL (a commit's WAL flush, a round trip) the
other computes, so each worker keeps its core busy; more threads only contend for the interpreter.

The machine these run on is shared: wall-clock rates move with everyone else's load, so the CPU
time per renewal (workers plus their PostgreSQL backends) is reported too; it bounds the rate the
same processes reach on idle cores.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr
from sqlalchemy import create_engine, func, insert, select, text
from sqlalchemy.engine import make_url

from bench._util import WORK_DIR, format_table, machine_info
from sslclm.audit.service import AuditContext
from sslclm.core.config import Settings
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.inventory.models import PrivateKey
from sslclm.inventory.writer import InventoryWriter, ParsedFile
from sslclm.jobs.models import Job
from sslclm.pki import extract_info
from sslclm.spi.capabilities import ConnectorKind
from sslclm.workflows import connections, profiles
from sslclm.workflows.managed import enqueue_due_renewals
from sslclm.workflows.models import Issuance, ManagedCertificate

REPO = Path(__file__).resolve().parent.parent
DEFAULT_PG = os.environ.get("SSLCLM_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
CTX = AuditContext(actor="bench")
WARM_UP = 100
SEED_CHUNK = 2000


# --- (a) the bare rate ------------------------------------------------------------------------------


def _bare_ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Bench CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _bare_one(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, n: int) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    host = f"host{n}.bench.example"
    san = x509.SubjectAlternativeName([x509.DNSName(host)])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca_cert.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(san, critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def bare_rate(seconds: float) -> dict[str, Any]:
    """Key + CSR + CA signature per second on one core (CPU time, so other load does not count)."""
    ca_key, ca_cert = _bare_ca()
    done = 0
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    while time.perf_counter() - wall_start < seconds:
        for _ in range(100):
            _bare_one(ca_key, ca_cert, done)
            done += 1
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    return {
        "operations": done,
        "per_second_cpu": round(done / cpu, 1),
        "per_second_wall": round(done / wall, 1),
    }


# --- (b) renewals end to end ------------------------------------------------------------------------


@contextmanager
def fresh_database(admin_url: str) -> Iterator[tuple[str, str]]:
    name = f"sslclm_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield name, make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _cpu_seconds(pids: Sequence[int]) -> float:
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


def _set_up_ca(platform: Platform) -> int:
    with session_scope(platform.sessions) as session:
        connection = connections.create_connection(
            session,
            CTX,
            platform,
            kind=ConnectorKind.CA_GATEWAY.value,
            name="local",
            type_key="local",
            config={},
        )
        profile = profiles.create_profile(
            session,
            CTX,
            platform,
            profiles.ProfileInput(name="fleet", ca_connection="local", key_type="EC-P256", validity_days=90),
        )
        connection_id, profile_id = connection.id, profile.id
    with platform.sessions() as session:
        row = connections.get_connection(session, connection_id)
        connections.build_ca_gateway(platform, row).get_chain()  # the hierarchy, made once up front
    return profile_id


def seed_managed(platform: Platform, profile_id: int, names: Sequence[str], *, due: dt.datetime) -> None:
    """Managed certificates that already hold a certificate (from an earlier CA) and are due now.

    Written in bulk, straight into the tables: the seed is not what is measured.
    """
    ca_key, ca_cert = _bare_ca()
    now = platform.clock()
    for start in range(0, len(names), SEED_CHUNK):
        chunk = names[start : start + SEED_CHUNK]
        files = [
            ParsedFile(f"seed/{name}", [extract_info(_bare_one(ca_key, ca_cert, i))])
            for i, name in enumerate(chunk)
        ]
        with session_scope(platform.sessions) as session:
            written = InventoryWriter(platform, source="bench-seed", sighting_kind="file").write(
                session, files
            )
            rows = [
                {
                    "name": name,
                    "common_name": name,
                    "dns_names": [name],
                    "ip_addresses": [],
                    "profile_id": profile_id,
                    "key_policy": "rotate",
                    "auto_renew": True,
                    "tags": [],
                    "status": "active",
                    "current_certificate_id": written.certificate_ids[
                        parsed.certificates[0].fingerprint_sha256
                    ],
                    "renew_at": due,
                    "created_by": "bench",
                    "created_at": now,
                    "updated_at": now,
                }
                for name, parsed in zip(chunk, files, strict=True)
            ]
            ids = (
                session.execute(insert(ManagedCertificate).returning(ManagedCertificate.id), rows)
                .scalars()
                .all()
            )
            session.execute(
                insert(Issuance),
                [
                    {
                        "managed_certificate_id": mid,
                        "certificate_id": row["current_certificate_id"],
                        "reason": "adopt",
                        "issued_at": now,
                    }
                    for mid, row in zip(ids, rows, strict=True)
                ],
            )


def _start_workers(env: dict[str, str], workers: int, concurrency: int) -> list[subprocess.Popen[bytes]]:
    command = [
        sys.executable,
        "-c",
        "from sslclm.cli.main import main; main()",
        "worker",
        "--concurrency",
        str(concurrency),
        "--poll-interval",
        "0.05",
        "--no-scheduler",
    ]
    return [subprocess.Popen(command, env=env, cwd=REPO) for _ in range(workers)]


def _renewals_done(platform: Platform, since_id: int) -> tuple[int, int]:
    """Renewals recorded by jobs after ``since_id``, and renewal jobs that failed (single or batch)."""
    with platform.sessions() as session:
        renewed = session.execute(
            select(func.count())
            .select_from(Issuance)
            .where(Issuance.reason == "renew", Issuance.job_id > since_id)
        ).scalar_one()
        failed = session.execute(
            select(func.count())
            .select_from(Job)
            .where(Job.kind.in_(("certificate.issue", "certificate.renew-batch")), Job.id > since_id)
            .where(Job.status == "failed")
        ).scalar_one()
    return int(renewed), int(failed)


def _tick_all(platform: Platform) -> int:
    """The scheduler's renewal tick, repeated until nothing more is due (it takes 5,000 at a time)."""
    total = 0
    while True:
        with session_scope(platform.sessions) as session:
            added = enqueue_due_renewals(session, now=platform.clock())
        if not added:
            return total
        total += added


def renew_end_to_end(
    platform: Platform, database: str, env: dict[str, str], renewals: int, workers: int, concurrency: int
) -> dict[str, Any]:
    profile_id = _set_up_ca(platform)
    due = platform.clock() - dt.timedelta(minutes=1)
    warm = [f"warm{i}.bench.example" for i in range(WARM_UP)]
    seed_started = time.perf_counter()
    seed_managed(platform, profile_id, warm, due=due)
    processes = _start_workers(env, workers, concurrency)
    try:
        # Warm up: the workers have started, loaded their tasks and built the CA connector.
        _tick_all(platform)
        while _renewals_done(platform, 0)[0] < WARM_UP:
            time.sleep(0.1)
        names = [f"host{i}.bench.example" for i in range(renewals)]
        seed_managed(platform, profile_id, names, due=platform.clock() - dt.timedelta(minutes=1))
        seed_seconds = time.perf_counter() - seed_started
        with platform.sessions() as session:
            last_warm_job = int(session.execute(select(func.max(Job.id))).scalar_one())
        worker_pids = [p.pid for p in processes]
        backend_pids = _backends(platform, database)
        cpu_before = (_cpu_seconds(worker_pids), _cpu_seconds(backend_pids))
        started = time.perf_counter()
        enqueued = _tick_all(platform)
        enqueue_seconds = time.perf_counter() - started
        nine_tenths: float | None = None
        while True:
            succeeded, failed = _renewals_done(platform, last_warm_job)
            if nine_tenths is None and (succeeded + failed) * 10 >= renewals * 9:
                nine_tenths = time.perf_counter() - started
            if succeeded + failed >= renewals:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        worker_cpu = _cpu_seconds(worker_pids) - cpu_before[0]
        database_cpu = _cpu_seconds(backend_pids) - cpu_before[1]
        cpu = worker_cpu + database_cpu
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
    with platform.sessions() as session:
        issuances = session.execute(
            select(func.count()).select_from(Issuance).where(Issuance.reason == "renew")
        ).scalar_one()
        keys = session.execute(select(func.count()).select_from(PrivateKey)).scalar_one()
    return {
        "renewals": renewals,
        "enqueued": enqueued,
        "succeeded": succeeded,
        "failed": failed,
        "workers": workers,
        "concurrency": concurrency,
        "seed_seconds": round(seed_seconds, 1),
        "enqueue_seconds": round(enqueue_seconds, 3),
        "seconds": round(elapsed, 3),
        "per_second": round(renewals / elapsed, 1),
        "seconds_to_nine_tenths": round(nine_tenths or elapsed, 3),
        "cpu_ms_per_renewal": round(cpu / renewals * 1000, 3),
        # How much of both cores the workers and their database backends used over the run.
        "busy_fraction": round(cpu / (elapsed * (os.cpu_count() or 1)), 3),
        "worker_cpu_ms_per_renewal": round(worker_cpu / renewals * 1000, 3),
        "database_cpu_ms_per_renewal": round(database_cpu / renewals * 1000, 3),
        "renew_issuances": issuances,
        "private_keys": keys,
    }


# --- (c) one scheduler tick -------------------------------------------------------------------------


def tick_over(platform: Platform, size: int, seed: int = 3) -> dict[str, Any]:
    """Brings the managed certificates up to ``size`` with renewal times spread over the next 90 days
    (one day of them overdue), then times one tick and a second, idle, one."""
    rng = random.Random(seed)
    with platform.sessions() as session:
        existing = int(session.execute(select(func.count()).select_from(ManagedCertificate)).scalar_one())
        profile_id = int(session.execute(select(func.min(ManagedCertificate.profile_id))).scalar_one())
    now = platform.clock()
    to_add = max(size - existing, 0)
    for start in range(0, to_add, 10_000):
        rows = [
            {
                "name": f"fleet{n}.bench.example",
                "common_name": f"fleet{n}.bench.example",
                "dns_names": [f"fleet{n}.bench.example"],
                "ip_addresses": [],
                "profile_id": profile_id,
                "key_policy": "rotate",
                "auto_renew": True,
                "tags": [],
                "status": "active",
                "renew_at": now + dt.timedelta(seconds=rng.uniform(-86_400, 89 * 86_400)),
                "created_by": "bench",
                "created_at": now,
                "updated_at": now,
            }
            for n in range(start, min(start + 10_000, to_add))
        ]
        with session_scope(platform.sessions) as session:
            session.execute(insert(ManagedCertificate), rows)
    with platform.engine.connect() as connection:
        connection.execute(text("ANALYZE"))
        connection.commit()
    timings = []
    counts = []
    for _ in range(2):
        started = time.perf_counter()
        with session_scope(platform.sessions) as session:
            counts.append(enqueue_due_renewals(session, now=platform.clock()))
        timings.append(time.perf_counter() - started)
    with platform.sessions() as session:
        total = int(session.execute(select(func.count()).select_from(ManagedCertificate)).scalar_one())
    return {
        "managed_certificates": total,
        "due": counts[0],
        "seconds": round(timings[0], 3),
        "idle_tick_seconds": round(timings[1], 3),
        "due_on_second_tick": counts[1],
    }


def run(
    admin_url: str, renewals: int, workers: int, concurrency: int, tick_size: int, bare_seconds: float
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "machine": machine_info(),
        "load_average_before": [round(v, 1) for v in os.getloadavg()],
    }
    result["bare"] = bare_rate(bare_seconds)
    with fresh_database(admin_url) as (database, url), tempfile.TemporaryDirectory() as home:
        master_key = base64.b64encode(secrets.token_bytes(32)).decode()
        env = {
            **os.environ,
            "SSLCLM_HOME": home,
            "SSLCLM_DATABASE_URL": url,
            "SSLCLM_MASTER_KEY": master_key,
            "SSLCLM_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO),
        }
        settings = Settings(home=Path(home), database_url=url, master_key=SecretStr(master_key))
        platform = Platform.open(settings)
        try:
            renewal = renew_end_to_end(platform, database, env, renewals, workers, concurrency)
            renewal["ratio_to_bare"] = round(renewal["per_second"] / result["bare"]["per_second_cpu"], 3)
            # On idle cores the same CPU work would take this long: the rate the code itself allows.
            cores = os.cpu_count() or 1
            renewal["per_second_cpu_bound"] = round(cores * 1000 / renewal["cpu_ms_per_renewal"], 1)
            renewal["ratio_to_bare_cpu_bound"] = round(
                renewal["per_second_cpu_bound"] / result["bare"]["per_second_cpu"], 3
            )
            result["renewals"] = renewal
            result["tick"] = tick_over(platform, tick_size)
        finally:
            platform.close()
    result["load_average_after"] = [round(v, 1) for v in os.getloadavg()]
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.renewals", description=__doc__.split("\n\n")[0])
    parser.add_argument("--renewals", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--tick-size", type=int, default=100_000)
    parser.add_argument("--bare-seconds", type=float, default=5.0)
    parser.add_argument("--database-url", default=DEFAULT_PG, help="A PostgreSQL server (admin URL).")
    args = parser.parse_args(argv)
    result = run(
        args.database_url, args.renewals, args.workers, args.concurrency, args.tick_size, args.bare_seconds
    )
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    (WORK_DIR / "renewals.json").write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    print(f"raw figures: {WORK_DIR / 'renewals.json'}")
    return 0


def summary(result: dict[str, Any]) -> str:
    bare, renewal, tick = result["bare"], result["renewals"], result["tick"]
    rows = [
        ["(a) P-256 key + CSR + CA signature, 1 core", f"{bare['per_second_cpu']:,.0f}/s CPU", "-"],
        [
            f"(b) {renewal['renewals']:,} renewals, {renewal['workers']} workers"
            f" x {renewal['concurrency']} threads",
            f"{renewal['per_second']:,.1f}/s ({renewal['ratio_to_bare']:.1%} of (a))",
            ">= 15% of (a)",
        ],
        [
            "    CPU per renewal (workers + PostgreSQL)",
            f"{renewal['cpu_ms_per_renewal']:.2f} ms -> {renewal['per_second_cpu_bound']:,.1f}/s"
            f" on idle cores ({renewal['ratio_to_bare_cpu_bound']:.1%}); cores busy"
            f" {renewal['busy_fraction']:.0%}",
            "",
        ],
        [
            f"(c) tick over {tick['managed_certificates']:,} managed",
            f"{tick['seconds']:.3f} s, {tick['due']:,} due",
            "< 1 s",
        ],
    ]
    load = ", ".join(str(v) for v in result["load_average_before"])
    return format_table(["", "measured", "bar"], rows) + f"\nload average before: {load}"


if __name__ == "__main__":
    sys.exit(main())
