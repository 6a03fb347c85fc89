"""Deployment throughput (issue 5), in one run, each platform figure beside its bare cost:

(a) bare pem-files: the same four files per certificate (certificate, key, chain, full chain) written
    the way the store writes them (temporary file, fsync, rename, then fsync of the directory), in a loop,
    once before the platform's runs and once after them (the faster of the two is the bare rate);
(b) ``--deployments`` deployments to a pem-files store, enqueued as a renewal enqueues them (in
    ``certificate.deploy-batch`` jobs of up to 100 bindings of the store) and run by real
    ``sslclm worker`` processes on a fresh PostgreSQL database: each job reads the certificates and
    their sealed keys, writes each item's files atomically (keeping the previous set), reads them back
    to verify, and records the deployments;
(c) bare Secrets Manager: the same ``PutSecretValue`` calls with boto3 in a loop, against moto's server;
(d) ``--deployments`` deployments to an aws-secrets-manager store on the same server, the same way.

    python -m bench.deploy --deployments 1000 --workers 2 --concurrency 2

The certificates are "renewed": each managed certificate's current certificate and its key are
already in the platform (seeded in bulk, not measured), as a renewal leaves them before it enqueues
the deployments.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import boto3
from pydantic import SecretStr
from sqlalchemy import func, insert, select

from bench._util import WORK_DIR, format_table, machine_info
from bench.renewals import (
    CTX,
    DEFAULT_PG,
    REPO,
    _backends,
    _bare_ca,
    _cpu_seconds,
    _set_up_ca,
    fresh_database,
)
from sslclm.core.config import Settings
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.deployments.models import StoreBinding
from sslclm.deployments.service import enqueue_deployments_of
from sslclm.inventory.writer import InventoryWriter, ParsedFile
from sslclm.pki import (
    certificate_to_pem,
    extract_info,
    generate_private_key,
    private_key_to_pem,
    private_key_to_pkcs8_der,
    public_key_sha256,
)
from sslclm.spi.capabilities import ConnectorKind
from sslclm.workflows import connections
from sslclm.workflows.models import ManagedCertificate
from tests.support.moto_server import REGION, moto_server, store_config

WARM_UP = 40
SEED_CHUNK = 500


# --- material ---------------------------------------------------------------------------------------


def make_material(count: int) -> list[tuple[str, bytes, bytes, bytes]]:
    """(name, certificate PEM, key PEM, PKCS#8 DER) for ``count`` P-256 certificates from one CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    ca_key, ca_cert = _bare_ca()
    now = dt.datetime.now(dt.UTC)
    material = []
    for n in range(count):
        name = f"host{n}.bench.example"
        key = generate_private_key("EC-P256")
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        material.append(
            (name, certificate_to_pem(cert), private_key_to_pem(key), private_key_to_pkcs8_der(key))
        )
    return material


def seed(
    platform: Platform, material: Sequence[tuple[str, bytes, bytes, bytes]], store_id: int, profile_id: int
) -> list[int]:
    """Managed certificates holding ``material`` as their current certificate (key stored sealed), each
    bound to alias ``a<n>`` of the store; returns the binding ids. Written in bulk: not measured."""
    from sslclm.pki import load_bundle

    now = platform.clock()
    binding_ids: list[int] = []
    for start in range(0, len(material), SEED_CHUNK):
        chunk = material[start : start + SEED_CHUNK]
        files = []
        for name, cert_pem, key_pem, pkcs8 in chunk:
            bundle = load_bundle(cert_pem + key_pem)
            files.append(
                ParsedFile(
                    f"seed/{name}",
                    [extract_info(bundle.certificates[0])],
                    [(public_key_sha256(bundle.private_keys[0]), pkcs8)],
                )
            )
        with session_scope(platform.sessions) as session:
            written = InventoryWriter(platform, source="bench-seed", sighting_kind="file").write(
                session, files
            )
            rows = [
                {
                    "name": f"{store_id}-{name}",
                    "common_name": name,
                    "dns_names": [name],
                    "ip_addresses": [],
                    "profile_id": profile_id,
                    "key_policy": "rotate",
                    "auto_renew": False,
                    "tags": [],
                    "status": "active",
                    "current_certificate_id": written.certificate_ids[
                        parsed.certificates[0].fingerprint_sha256
                    ],
                    "created_by": "bench",
                    "created_at": now,
                    "updated_at": now,
                }
                for (name, *_), parsed in zip(chunk, files, strict=True)
            ]
            managed_ids = (
                session.execute(insert(ManagedCertificate).returning(ManagedCertificate.id), rows)
                .scalars()
                .all()
            )
            bindings = [
                {
                    "managed_certificate_id": managed_id,
                    "store_connection_id": store_id,
                    "alias": f"a{start + index}",
                    "options": {},
                    "status": "pending",
                    "created_at": now,
                    "updated_at": now,
                }
                for index, managed_id in enumerate(managed_ids)
            ]
            binding_ids += (
                session.execute(insert(StoreBinding).returning(StoreBinding.id), bindings).scalars().all()
            )
    return binding_ids


def enqueue(platform: Platform, binding_ids: Sequence[int]) -> int:
    """Enqueues the deployments as a renewal does once it has recorded the new certificates
    (``enqueue_deployments_of``: these bindings go in ``certificate.deploy-batch`` jobs per store);
    returns how many jobs."""
    with session_scope(platform.sessions) as session:
        current = {
            int(managed_id): int(certificate_id)
            for managed_id, certificate_id in session.execute(
                select(ManagedCertificate.id, ManagedCertificate.current_certificate_id)
                .join(StoreBinding, StoreBinding.managed_certificate_id == ManagedCertificate.id)
                .where(StoreBinding.id.in_(binding_ids))
            )
            if certificate_id is not None
        }
        return enqueue_deployments_of(session, current, now=platform.clock())


def wait_deployed(platform: Platform, binding_ids: Sequence[int], timeout: float = 1800) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        with platform.sessions() as session:
            counts = dict(
                session.execute(
                    select(StoreBinding.status, func.count())
                    .where(StoreBinding.id.in_(binding_ids))
                    .group_by(StoreBinding.status)
                ).all()
            )
        deployed, failed = int(counts.get("deployed", 0)), int(counts.get("failed", 0))
        if deployed + failed >= len(binding_ids) or time.monotonic() > deadline:
            return deployed, failed
        time.sleep(0.05)


# --- bare -------------------------------------------------------------------------------------------


def _write_atomic(path: Path, content: bytes, mode: int) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


def bare_files(directory: Path, material: Sequence[tuple[str, bytes, bytes, bytes]]) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    started, cpu = time.perf_counter(), time.process_time()
    for index, (_, cert_pem, key_pem, _) in enumerate(material):
        alias = f"a{index}"
        _write_atomic(directory / f"{alias}.crt", cert_pem, 0o644)
        _write_atomic(directory / f"{alias}.key", key_pem, 0o600)
        _write_atomic(directory / f"{alias}.chain.pem", b"", 0o644)
        _write_atomic(directory / f"{alias}.fullchain.pem", cert_pem, 0o644)
        fd = os.open(directory, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return _rate(len(material), time.perf_counter() - started, time.process_time() - cpu)


def secrets_client(url: str) -> Any:
    config = store_config(url)
    return boto3.client(
        "secretsmanager",
        region_name=REGION,
        endpoint_url=url,
        aws_access_key_id=str(config["access_key_id"]),
        aws_secret_access_key=str(config["secret_access_key"]),
    )


def create_secrets(url: str, prefix: str, count: int) -> None:
    """The secrets a previous deployment left, which a renewal's deployment replaces: not measured."""
    client = secrets_client(url)
    for index in range(count):
        client.create_secret(Name=f"{prefix}a{index}", SecretString="{}")


def bare_secrets(
    url: str, server_pid: int, material: Sequence[tuple[str, bytes, bytes, bytes]]
) -> dict[str, Any]:
    client = secrets_client(url)
    values = [
        json.dumps({"certificate": cert.decode(), "chain": "", "private_key": key.decode()})
        for _, cert, key, _ in material
    ]
    create_secrets(url, "bare/", len(material))
    server_cpu = _cpu_seconds([server_pid])
    started, cpu = time.perf_counter(), time.process_time()
    for index, value in enumerate(values):
        client.put_secret_value(SecretId=f"bare/a{index}", SecretString=value)
    result = _rate(len(material), time.perf_counter() - started, time.process_time() - cpu)
    server_ms = (_cpu_seconds([server_pid]) - server_cpu) / len(material) * 1000
    result["server_cpu_ms_per_operation"] = round(server_ms, 3)
    return result


def _rate(count: int, seconds: float, cpu: float) -> dict[str, Any]:
    return {
        "operations": count,
        "seconds": round(seconds, 3),
        "per_second": round(count / seconds, 1),
        "client_cpu_ms_per_operation": round(cpu / count * 1000, 3),
    }


# --- the platform -----------------------------------------------------------------------------------


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


def _create_store(platform: Platform, name: str, type_key: str, config: dict[str, Any]) -> int:
    with session_scope(platform.sessions) as session:
        row = connections.create_connection(
            session,
            CTX,
            platform,
            kind=ConnectorKind.CERT_STORE.value,
            name=name,
            type_key=type_key,
            config=config,
        )
        return int(row.id)


def platform_run(
    platform: Platform,
    database: str,
    worker_pids: Sequence[int],
    server_pids: Sequence[int],
    store_id: int,
    profile_id: int,
    material: Sequence[tuple[str, bytes, bytes, bytes]],
) -> dict[str, Any]:
    bindings = seed(platform, material, store_id, profile_id)
    warm, measured = bindings[:WARM_UP], bindings[WARM_UP:]
    enqueue(platform, warm)  # the workers build the store connector and warm their caches
    wait_deployed(platform, warm)
    backends = _backends(platform, database)
    cpu_before = (_cpu_seconds(worker_pids), _cpu_seconds(backends), _cpu_seconds(server_pids))
    started = time.perf_counter()
    jobs = enqueue(platform, measured)
    deployed, failed = wait_deployed(platform, measured)
    seconds = time.perf_counter() - started
    worker_cpu = _cpu_seconds(worker_pids) - cpu_before[0]
    database_cpu = _cpu_seconds(backends) - cpu_before[1]
    server_cpu = _cpu_seconds(server_pids) - cpu_before[2]
    result = _rate(len(measured), seconds, 0.0)
    del result["client_cpu_ms_per_operation"]
    result.update(
        jobs=jobs,
        deployed=deployed,
        failed=failed,
        worker_cpu_ms_per_deployment=round(worker_cpu / len(measured) * 1000, 3),
        database_cpu_ms_per_deployment=round(database_cpu / len(measured) * 1000, 3),
        server_cpu_ms_per_deployment=round(server_cpu / len(measured) * 1000, 3),
    )
    if failed:
        with platform.sessions() as session:
            result["first_error"] = session.execute(
                select(StoreBinding.error).where(StoreBinding.status == "failed").limit(1)
            ).scalar_one()
    return result


def run(admin_url: str, deployments: int, workers: int, concurrency: int) -> dict[str, Any]:
    result: dict[str, Any] = {
        "machine": machine_info(),
        "load_average_before": [round(v, 1) for v in os.getloadavg()],
    }
    started = time.perf_counter()
    pem_material = make_material(deployments + WARM_UP)
    aws_material = make_material(deployments + WARM_UP)
    result["material_seconds"] = round(time.perf_counter() - started, 1)
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    moto_pids: list[int] = []
    with (
        fresh_database(admin_url) as (database, url),
        tempfile.TemporaryDirectory(dir=WORK_DIR) as home,
        moto_server(WORK_DIR / "deploy-moto.log", pids=moto_pids) as moto_url,
    ):
        home_dir = Path(home)
        # The file loop runs before and after the platform: this host's fsync slows once writes have
        # been sustained, so one measurement can meet a quieter disk than the platform does. The
        # faster of the two is the bare rate (the stricter comparison); both are kept.
        bare_files_before = bare_files(home_dir / "bare", pem_material[WARM_UP:])
        result["bare_secrets"] = bare_secrets(moto_url, moto_pids[0], aws_material[WARM_UP:])
        master_key = base64.b64encode(secrets.token_bytes(32)).decode()
        env = {
            **os.environ,
            "SSLCLM_HOME": str(home_dir / "platform"),
            "SSLCLM_DATABASE_URL": url,
            "SSLCLM_MASTER_KEY": master_key,
            "SSLCLM_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO),
        }
        settings = Settings(home=home_dir / "platform", database_url=url, master_key=SecretStr(master_key))
        platform = Platform.open(settings)
        processes = _start_workers(env, workers, concurrency)
        try:
            (home_dir / "files").mkdir()
            pem_store = _create_store(platform, "files", "pem-files", {"directory": str(home_dir / "files")})
            aws_store = _create_store(platform, "secrets", "aws-secrets-manager", store_config(moto_url))
            create_secrets(moto_url, "sslclm/", len(aws_material))
            profile_id = _set_up_ca(platform)
            pids = [p.pid for p in processes]
            result["platform_files"] = platform_run(
                platform, database, pids, [], pem_store, profile_id, pem_material
            )
            result["platform_secrets"] = platform_run(
                platform, database, pids, moto_pids, aws_store, profile_id, aws_material
            )
            bare_files_after = bare_files(home_dir / "bare-after", pem_material[WARM_UP:])
            result["bare_files_runs"] = [bare_files_before, bare_files_after]
            result["bare_files"] = max(bare_files_before, bare_files_after, key=lambda r: r["per_second"])
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
            platform.close()
    for kind in ("files", "secrets"):
        bare, measured = result[f"bare_{kind}"], result[f"platform_{kind}"]
        result[f"ratio_{kind}"] = round(measured["per_second"] / bare["per_second"], 3)
        # CPU per operation, every process involved (client, workers, PostgreSQL, the AWS server): what
        # the same work needs on idle cores, which the shared machine's load does not move.
        bare["cpu_ms_per_operation"] = round(
            bare["client_cpu_ms_per_operation"] + bare.get("server_cpu_ms_per_operation", 0.0), 3
        )
        measured["cpu_ms_per_deployment"] = round(
            measured["worker_cpu_ms_per_deployment"]
            + measured["database_cpu_ms_per_deployment"]
            + measured["server_cpu_ms_per_deployment"],
            3,
        )
        result[f"cpu_ratio_{kind}"] = round(
            bare["cpu_ms_per_operation"] / measured["cpu_ms_per_deployment"], 3
        )
    result.update(workers=workers, concurrency=concurrency, deployments=deployments)
    result["load_average_after"] = [round(v, 1) for v in os.getloadavg()]
    return result


def summary(result: dict[str, Any]) -> str:
    rows = []
    for kind, label in (("files", "pem-files"), ("secrets", "Secrets Manager (moto)")):
        bare, measured = result[f"bare_{kind}"], result[f"platform_{kind}"]
        rows.append(
            [
                f"bare {label}, 1 loop",
                f"{bare['per_second']:,.1f}/s, {bare['cpu_ms_per_operation']:.1f} ms CPU",
                "",
                "",
            ]
        )
        rows.append(
            [
                f"sslclm {label}, {result['workers']} workers x {result['concurrency']}",
                f"{measured['per_second']:,.1f}/s ({measured['failed']} failed)",
                f"{result[f'ratio_{kind}']:.0%} of bare",
                ">= 50%",
            ]
        )
        rows.append(
            [
                "    CPU per deployment (workers + PostgreSQL + AWS server)",
                f"{measured['worker_cpu_ms_per_deployment']:.1f}"
                f" + {measured['database_cpu_ms_per_deployment']:.1f}"
                f" + {measured['server_cpu_ms_per_deployment']:.1f} ms",
                f"{result[f'cpu_ratio_{kind}']:.0%} of bare per CPU second",
                "",
            ]
        )
    load = ", ".join(str(v) for v in result["load_average_before"])
    runs = " and ".join(f"{r['per_second']:,.1f}/s" for r in result.get("bare_files_runs", []))
    return (
        format_table(["", "measured", "ratio", "bar"], rows)
        + f"\nbare pem-files before and after the platform: {runs} (the faster is the bare rate)"
        + f"\nload average before: {load}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--database-url", default=DEFAULT_PG, help="A PostgreSQL server (admin URL).")
    args = parser.parse_args(argv)
    result = run(args.database_url, args.deployments, args.workers, args.concurrency)
    (WORK_DIR / "deploy.json").write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    print(f"raw figures: {WORK_DIR / 'deploy.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
