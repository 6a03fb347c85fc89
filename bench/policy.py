"""Policy evaluation and report latency at inventory scale (issue 7), measured in one run.

1. Synthetic inventory rows (no X.509 parsing: the facts checks read) bulk-inserted with SQLAlchemy
   Core executemany into a bench-only database under ``bench/.data`` (SQLite, and PostgreSQL when
   asked), with endpoints for a share of them and a policy set using every built-in check.
2. (a) A full evaluation through the platform, ``reevaluate_all`` (reads, builds inputs, runs the
   checks, writes violations, risk scores and counts), against the bare check functions run over
   inputs already in memory (a sample of the same rows). Bar: platform rate >= 50% of the bare rate.
3. (b) Every report through the API (FastAPI TestClient, bearer token): p95 < 200 ms each.
4. (c) ``/metrics`` rendered (no cache): p95 < 50 ms.

    .venv/bin/python -m bench.policy --count 100000
    .venv/bin/python -m bench.policy --count 1000000 --backends sqlite,postgresql
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import random
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, insert, select, text
from sqlalchemy.engine import make_url

from bench._util import WORK_DIR, format_table, load_average, machine_info, percentile
from sslclm.api.app import create_app
from sslclm.audit.service import AuditContext
from sslclm.auth import service as auth_service
from sslclm.core.config import Settings
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.discovery.models import Endpoint
from sslclm.inventory.models import Certificate, Issuer
from sslclm.policies import service as policy_service
from sslclm.policies.engine import (
    INPUT_COLUMNS,
    _input_select,
    evaluate_inputs,
    load_exemptions,
    load_inputs,
    load_policies,
    reevaluate_all,
)
from sslclm.reporting.metrics import refresh_snapshot, render

DATA_DIR = Path(__file__).resolve().parent / ".data"
CHUNK = 10_000
BARE_SAMPLE = 100_000
POLICY = """\
name: bench
scope: {kind: all}
checks:
  - check: key-algorithm
  - check: signature-algorithm
  - check: max-validity
  - check: expiry
  - check: not-yet-valid
  - check: self-signed
  - check: wildcard
    params: {max_names: 2}
  - check: allowed-issuers
    params: {allowed: ["CN=Bench CA *"]}
  - check: domains
    params: {forbidden: ["*.internal.example"]}
  - check: eku
    params: {required: [serverAuth]}
  - check: revoked
  - check: key-reuse
  - check: blast-radius
  - check: tls-version
  - check: endpoint-trust
  - check: quantum-vulnerable
"""
KEYS = [("EC", 256, "secp256r1")] * 45 + [("EC", 384, "secp384r1")] * 10 + [("RSA", 2048, None)] * 38
KEYS += [("RSA", 4096, None)] * 4 + [("RSA", 1024, None)] * 3
SIGNATURES = ["ecdsa-with-SHA256"] * 60 + ["sha256WithRSAEncryption"] * 37 + ["sha1WithRSAEncryption"] * 3
TEAMS = [f"team-{i:02d}" for i in range(40)]
ENVIRONMENTS = ["prod", "staging", "dev", "test", None]


def _issuers(now: dt.datetime) -> list[dict[str, Any]]:
    names = [f"CN=Bench CA {i}" for i in range(5)] + ["CN=Outside CA"]
    return [{"dn_hash": hashlib.sha256(n.encode()).hexdigest(), "dn": n, "common_name": n[3:]} for n in names]


def _certificate_rows(
    count: int, issuer_ids: list[int], now: dt.datetime, seed: int
) -> Iterator[list[dict[str, Any]]]:
    rng = random.Random(seed)
    shared_keys = [secrets.token_hex(32) for _ in range(200)]
    batch: list[dict[str, Any]] = []
    for n in range(count):
        algorithm, size, curve = rng.choice(KEYS)
        roll = rng.random()
        if roll < 0.04:
            not_after = now - dt.timedelta(days=rng.uniform(1, 400))
        elif roll < 0.07:
            not_after = now + dt.timedelta(days=rng.uniform(0, 30))
        else:
            not_after = now + dt.timedelta(days=rng.uniform(30, 800))
        lifetime = dt.timedelta(days=rng.choice((90, 90, 200, 365, 398, 825)))
        names = [f"host{n}-{i}.example.com" for i in range(rng.choice((1, 1, 2, 3, 5)))]
        if rng.random() < 0.05:
            names.append(f"*.svc{n % 997}.example.com")
        if rng.random() < 0.01:
            names.append(f"db{n}.internal.example")
        fingerprint = hashlib.sha256(f"{seed}:{n}".encode()).hexdigest()
        public_key = rng.choice(shared_keys) if rng.random() < 0.01 else secrets.token_hex(32)
        batch.append(
            {
                "fingerprint_sha256": fingerprint,
                "fingerprint_sha1": fingerprint[:40],
                "serial": format(rng.getrandbits(64), "x"),
                "subject": f"CN={names[0]}",
                "common_name": names[0],
                "issuer_id": rng.choice(issuer_ids),
                "not_before": not_after - lifetime,
                "not_after": not_after,
                "key_algorithm": algorithm,
                "key_size": size,
                "key_curve": curve,
                "signature_algorithm": SIGNATURES[rng.randrange(len(SIGNATURES))],
                "sans": [f"DNS:{name}" for name in names],
                "key_usage": ["digitalSignature"],
                "extended_key_usage": ["serverAuth"] if rng.random() < 0.97 else ["clientAuth"],
                "is_ca": False,
                "crl_distribution_points": [],
                "ocsp_urls": [],
                "ca_issuer_urls": [],
                "self_signed": rng.random() < 0.005,
                "public_key_sha256": public_key,
                "der": b"\x30\x00",
                "search_text": names[0],
                "source": rng.choice(("import", "tls-scan", "ca-sync:digicert", "store:pem-files")),
                "owner": f"owner-{rng.randrange(300)}",
                "team": rng.choice(TEAMS),
                "environment": rng.choice(ENVIRONMENTS),
                "has_private_key": False,
                "created_at": now,
                "updated_at": now,
            }
        )
        if len(batch) == CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


def seed(platform: Platform, count: int, now: dt.datetime) -> dict[str, float]:
    """Bulk-inserts the synthetic inventory; returns timings."""
    started = time.perf_counter()
    with session_scope(platform.sessions) as session:
        session.execute(insert(Issuer), _issuers(now))
        issuer_ids = list(session.execute(select(Issuer.id).order_by(Issuer.id)).scalars())
        # The CAs themselves, so the CA-concentration report has a root to start from.
        ca_rows = next(_certificate_rows(len(issuer_ids), issuer_ids, now, seed=1))
        for row, (issuer_id, dn) in zip(
            ca_rows, session.execute(select(Issuer.id, Issuer.dn).order_by(Issuer.id)), strict=True
        ):
            row.update(subject=dn, common_name=dn[3:], issuer_id=issuer_id, is_ca=True, self_signed=True)
        session.execute(insert(Certificate), ca_rows)
    with platform.engine.begin() as connection:
        for rows in _certificate_rows(count, issuer_ids, now, seed=2):
            connection.execute(insert(Certificate), rows)
    inserted = time.perf_counter() - started
    rng = random.Random(3)
    with platform.engine.begin() as connection:
        first, last = connection.execute(text("SELECT min(id), max(id) FROM certificates")).one()
        endpoints = []
        for n in range(count // 20):  # 5% served somewhere; a few on many endpoints
            cid = rng.randint(first, last) if n % 50 else first + 10
            endpoints.append(
                {
                    "host": f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256}",
                    "port": 443,
                    "sni": "",
                    "protocol": "tls",
                    "last_status": "ok",
                    "certificate_id": cid,
                    "chain": [],
                    "tls_version": "TLSv1.3" if rng.random() < 0.9 else "TLSv1.1",
                    "trusted": rng.random() < 0.95,
                    "hostname_match": rng.random() < 0.97,
                    "first_seen_at": now,
                    "last_ok_at": now,
                }
            )
            if len(endpoints) == CHUNK:
                connection.execute(insert(Endpoint), endpoints)
                endpoints = []
        if endpoints:
            connection.execute(insert(Endpoint), endpoints)
    with session_scope(platform.sessions) as session:
        policy_service.put_policy(session, AuditContext(actor="bench"), POLICY, now=now)
    if platform.engine.dialect.name == "postgresql":
        with platform.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("VACUUM ANALYZE"))
    else:
        with platform.engine.begin() as connection:
            connection.execute(text("ANALYZE"))
    return {"insert_s": inserted, "seed_s": time.perf_counter() - started}


def measure_evaluation(platform: Platform, count: int, now: dt.datetime) -> dict[str, float]:
    """(a): the platform's full evaluation against the bare checks over in-memory inputs."""
    started, cpu_started = time.perf_counter(), time.process_time()
    with session_scope(platform.sessions) as session:
        stats = reevaluate_all(session, now=now)
    platform_s = time.perf_counter() - started
    platform_cpu = time.process_time() - cpu_started
    total = stats.certificates
    # A second pass finds every verdict unchanged and writes nothing: the steady state.
    started = time.perf_counter()
    with session_scope(platform.sessions) as session:
        reevaluate_all(session, now=now)
    steady_s = time.perf_counter() - started

    sample = min(BARE_SAMPLE, count)
    with platform.sessions() as session:
        policies = load_policies(session)
        exemptions = load_exemptions(session, now)
        rows = session.execute(
            _input_select().where(Certificate.archived_at.is_(None)).order_by(Certificate.id).limit(sample)
        ).all()
        inputs = load_inputs(session, rows)
    del rows
    checks = [(entry, policy) for policy in policies for entry in policy.checks]
    started, cpu_started = time.perf_counter(), time.process_time()
    found = evaluate_inputs(inputs, policies, exemptions, now)
    bare_s = time.perf_counter() - started
    bare_cpu = time.process_time() - cpu_started
    platform_rate = total / platform_s
    bare_rate = len(inputs) / bare_s
    return {
        "certificates": total,
        "violations": stats.violations,
        "checks": len(checks),
        "platform_s": platform_s,
        "platform_rate": platform_rate,
        "bare_sample": len(inputs),
        "bare_violations": len(found),
        "bare_s": bare_s,
        "bare_rate": bare_rate,
        "ratio": platform_rate / bare_rate,
        # Per CPU-second (SQLite runs in this process, so its work is counted): what a busy
        # machine disturbs least.
        "platform_cpu_rate": total / platform_cpu,
        "bare_cpu_rate": len(inputs) / bare_cpu,
        "ratio_cpu": (total / platform_cpu) / (len(inputs) / bare_cpu),
        "steady_s": steady_s,
        "steady_rate": total / steady_s,
        "steady_ratio": total / steady_s / bare_rate,
        "columns": len(INPUT_COLUMNS),
    }


def _timed(client: TestClient, url: str, headers: dict[str, str], requests: int) -> dict[str, float]:
    separator = "&" if "?" in url else "?"
    started = time.perf_counter()
    response = client.get(f"{url}{separator}fresh=true", headers=headers)
    live_ms = (time.perf_counter() - started) * 1000
    assert response.status_code == 200, (url, response.status_code, response.text[:300])
    for _ in range(3):
        response = client.get(url, headers=headers)
        assert response.status_code == 200, (url, response.status_code, response.text[:300])
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(url, headers=headers)
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200
    return {
        "p50_ms": percentile(samples, 50) * 1000,
        "p95_ms": percentile(samples, 95) * 1000,
        "live_ms": live_ms,
        "bytes": len(response.content),
    }


def measure_reports(platform: Platform, requests: int) -> dict[str, dict[str, float]]:
    """(b) and (c): every report through the API, and the metrics rendering."""
    ctx = AuditContext(actor="bench")
    with session_scope(platform.sessions) as session:
        user = auth_service.create_user(
            session, ctx, f"bench-{secrets.token_hex(4)}", secrets.token_urlsafe(16), "viewer"
        )
        token = auth_service.create_token(session, ctx, user, "bench").secret
        root = session.execute(
            select(Certificate.id).where(Certificate.is_ca.is_(True)).order_by(Certificate.id).limit(1)
        ).scalar_one()
    headers = {"Authorization": f"Bearer {token}"}
    urls = {
        "expiry forecast, per day": "/api/v1/reports/expiry-forecast?per=day",
        "expiry forecast, per week": "/api/v1/reports/expiry-forecast?per=week",
        **{
            f"breakdown by {by}": f"/api/v1/reports/breakdown?by={by}"
            for by in (
                "issuer",
                "key_algorithm",
                "key_size",
                "signature_algorithm",
                "owner",
                "team",
                "source",
                "environment",
            )
        },
        "compliance": "/api/v1/reports/compliance",
        "top risks": "/api/v1/reports/top-risks?limit=50",
        **{f"risk by {by}": f"/api/v1/reports/risk?by={by}" for by in ("owner", "team", "issuer")},
        "CA concentration": f"/api/v1/reports/ca-concentration/{root}",
    }
    results: dict[str, dict[str, float]] = {}
    with TestClient(create_app(platform=platform), base_url="https://bench") as client:
        for name, url in urls.items():
            results[name] = _timed(client, url, headers, requests)
        with session_scope(platform.sessions) as session:
            snapshot = refresh_snapshot(
                session, now=platform.clock(), expiring_days=platform.settings.expiring_days
            )
        results["metrics snapshot task (every two minutes)"] = {
            "p50_ms": float(snapshot.duration_ms),
            "p95_ms": float(snapshot.duration_ms),
            "bytes": 0,
        }
        samples = []
        for _ in range(requests):
            started = time.perf_counter()
            body = render(platform)
            samples.append(time.perf_counter() - started)
        results["/metrics rendering (no cache)"] = {
            "p50_ms": percentile(samples, 50) * 1000,
            "p95_ms": percentile(samples, 95) * 1000,
            "bytes": len(body),
        }
        results["/metrics through the API"] = _timed(client, "/metrics", headers, requests)
    return results


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    home = DATA_DIR / f"policy-{backend}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    database = f"bench_policy_{secrets.token_hex(4)}"
    if backend == "sqlite":
        url = f"sqlite:///{home / 'sslclm.db'}"
    else:
        admin = create_engine(args.pg_admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{database}"'))
        url = make_url(args.pg_admin_url).set(database=database).render_as_string(hide_password=False)
    settings = Settings(
        home=home, database_url=url, master_key=base64.b64encode(secrets.token_bytes(32)).decode()
    )
    platform = Platform.open(settings)
    now = platform.clock()
    try:
        result: dict[str, Any] = {"backend": backend, "count": args.count}
        result["seed"] = seed(platform, args.count, now)
        print(
            f"[{backend}] seeded {args.count:,} certificates in {result['seed']['seed_s']:.0f} s", flush=True
        )
        result["evaluation"] = measure_evaluation(platform, args.count, now)
        e = result["evaluation"]
        print(
            f"[{backend}] evaluation: platform {e['platform_rate']:,.0f}/s ({e['platform_s']:.0f} s), "
            f"bare {e['bare_rate']:,.0f}/s, ratio {e['ratio']:.0%}",
            flush=True,
        )
        result["reports"] = measure_reports(platform, args.requests)
        result["load_average"] = load_average()
        return result
    finally:
        platform.close()
        if backend == "postgresql":
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        elif not args.keep:
            shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--backends", default="sqlite")
    parser.add_argument("--requests", type=int, default=40, help="timed requests per report")
    parser.add_argument("--pg-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite data under bench/.data")
    args = parser.parse_args()
    results = {"machine": machine_info(), "runs": [run_backend(b, args) for b in args.backends.split(",")]}
    for run in results["runs"]:
        e = run["evaluation"]
        print(f"\n{run['backend']}, {run['count']:,} certificates")
        print(
            format_table(
                ["measure", "value", "bar", "verdict"],
                [
                    ["platform evaluation rate", f"{e['platform_rate']:,.0f}/s", "", ""],
                    ["bare checks rate", f"{e['bare_rate']:,.0f}/s", "", ""],
                    [
                        "ratio (wall clock)",
                        f"{e['ratio']:.0%}",
                        ">= 50%",
                        "pass" if e["ratio"] >= 0.5 else "FAIL",
                    ],
                    ["platform per CPU-second", f"{e['platform_cpu_rate']:,.0f}/s", "", ""],
                    ["bare per CPU-second", f"{e['bare_cpu_rate']:,.0f}/s", "", ""],
                    [
                        "ratio (CPU time)",
                        f"{e['ratio_cpu']:.0%}",
                        ">= 50%",
                        "pass" if e["ratio_cpu"] >= 0.5 else "FAIL",
                    ],
                    ["second pass (nothing changes)", f"{e['steady_rate']:,.0f}/s", "", ""],
                    [
                        "second pass ratio",
                        f"{e['steady_ratio']:.0%}",
                        ">= 50%",
                        "pass" if e["steady_ratio"] >= 0.5 else "FAIL",
                    ],
                ],
            )
        )
        rows = []
        for name, figures in run["reports"].items():
            if "snapshot task" in name:
                rows.append([name, f"{figures['p50_ms']:.0f}", "", "(background)", "", ""])
                continue
            bar = 50 if "metrics" in name else 200
            verdict = "pass" if figures["p95_ms"] < bar else "FAIL"
            live = f"{figures['live_ms']:.0f}" if "live_ms" in figures else ""
            rows.append(
                [name, f"{figures['p50_ms']:.1f}", f"{figures['p95_ms']:.1f}", f"< {bar}", verdict, live]
            )
        print(format_table(["query", "p50 ms", "p95 ms", "bar", "verdict", "computed live, ms"], rows))
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    out = WORK_DIR / "results-policy.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nraw figures: {out}")


if __name__ == "__main__":
    main()
