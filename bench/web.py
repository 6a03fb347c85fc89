"""The web console benchmark of issue 8: dashboard and first inventory page at a million certificates.

    python -m bench.web                          # 1,000,000 certificates, SQLite and PostgreSQL
    python -m bench.web --count 100000 --backends sqlite

Seeds the synthetic inventory of ``bench.policy`` (bulk inserts, the issuer counters kept by the
database's triggers), signs in through the login form like a browser, then times the pages
server-side in-process (TestClient: routing, queries, templates, no network), first request and
steady state. Bar: under 300 ms each. Free-text search (``q``) is timed too, in the console and the
API, for a rare term, a common one and a two-character one. Writes ``bench/.work/results-web.json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import secrets
import shutil
import time
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench._util import WORK_DIR, format_table, load_average, machine_info, percentile
from bench.policy import DATA_DIR, seed
from sslclm.api.app import create_app
from sslclm.audit.service import AuditContext
from sslclm.auth import service as auth_service
from sslclm.core.config import Settings
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform

BAR_MS = 300.0
PASSWORD = "a long benchmark passphrase"
PAGES = {
    "dashboard": "/ui/",
    "inventory, first page": "/ui/certificates",
    "inventory, search": "/ui/certificates?q=host4242",
    "inventory, search, common term": "/ui/certificates?q=example.com",
    "inventory, search, 2 characters": "/ui/certificates?q=42",
    "API, search": "/api/v1/certificates?q=host4242",
    "API, search, common term": "/api/v1/certificates?q=example.com",
    "inventory, expiring, by name": "/ui/certificates?status=expiring&sort=common_name",
    "inventory, team filter": "/ui/certificates?team=team-07",
    "reports": "/ui/reports",
}
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def _sign_in(client: TestClient) -> None:
    form = client.get("/ui/login")
    token = CSRF.search(form.text)
    assert token, form.text[:300]
    landed = client.post(
        "/ui/login", data={"username": "bench", "password": PASSWORD, "csrf_token": token.group(1)}
    )
    assert landed.status_code == 200, landed.text[:300]


def _time_page(client: TestClient, url: str, requests: int) -> dict[str, float]:
    started = time.perf_counter()
    first = client.get(url)
    first_ms = (time.perf_counter() - started) * 1000
    assert first.status_code == 200, (url, first.status_code, first.text[:300])
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(url)
        samples.append(time.perf_counter() - started)
        assert response.status_code == 200
    return {
        "first_ms": first_ms,
        "p50_ms": percentile(samples, 50) * 1000,
        "p95_ms": percentile(samples, 95) * 1000,
        "bytes": len(first.content),
    }


def run_backend(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    home = DATA_DIR / f"web-{backend}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    database = f"bench_web_{secrets.token_hex(4)}"
    admin_engine = None
    if backend == "sqlite":
        url = f"sqlite:///{home / 'sslclm.db'}"
    else:
        admin_engine = create_engine(args.pg_admin_url, isolation_level="AUTOCOMMIT")
        with admin_engine.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{database}"'))
        url = make_url(args.pg_admin_url).set(database=database).render_as_string(hide_password=False)
    settings = Settings(
        home=home, database_url=url, master_key=base64.b64encode(secrets.token_bytes(32)).decode()
    )
    platform = Platform.open(settings)
    try:
        now = platform.clock()
        result: dict[str, Any] = {
            "backend": backend,
            "count": args.count,
            "seed": seed(platform, args.count, now),
        }
        print(
            f"[{backend}] seeded {args.count:,} certificates in {result['seed']['seed_s']:.0f} s", flush=True
        )
        with session_scope(platform.sessions) as session:
            auth_service.create_user(session, AuditContext(actor="bench"), "bench", PASSWORD, "admin")
        pages: dict[str, dict[str, float]] = {}
        with TestClient(create_app(platform=platform), base_url="https://bench") as client:
            _sign_in(client)
            for name, path in PAGES.items():
                pages[name] = _time_page(client, path, args.requests)
                figures = pages[name]
                print(
                    f"[{backend}] {name}: first {figures['first_ms']:.0f} ms, "
                    f"p50 {figures['p50_ms']:.0f} ms, p95 {figures['p95_ms']:.0f} ms",
                    flush=True,
                )
        result["pages"] = pages
        result["load_average"] = load_average()
        return result
    finally:
        platform.close()
        if admin_engine is not None:
            with admin_engine.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        elif not args.keep:
            shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--requests", type=int, default=30, help="timed requests per page")
    parser.add_argument("--pg-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep the SQLite data under bench/.data")
    args = parser.parse_args()
    results = {"machine": machine_info(), "runs": [run_backend(b, args) for b in args.backends.split(",")]}
    for run in results["runs"]:
        print(f"\n{run['backend']}, {run['count']:,} certificates")
        rows = []
        for name, f in run["pages"].items():
            worst = max(f["first_ms"], f["p95_ms"])
            verdict = "pass" if worst < BAR_MS else "FAIL"
            rows.append([name, f"{f['first_ms']:.0f}", f"{f['p50_ms']:.0f}", f"{f['p95_ms']:.0f}", verdict])
        print(format_table(["page", "first ms", "p50 ms", "p95 ms", f"< {BAR_MS:.0f} ms"], rows))
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    (WORK_DIR / "results-web.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
