"""The inventory benchmark of issue 2: parse, import, query latency and list throughput, in one run.

    python -m bench.inventory                      # the full 1,000,000-certificate run
    python -m bench.inventory --count 20000        # a quick one
    python -m bench.inventory --backends sqlite    # one backend only

Steps: generate (or reuse) the corpus; parse it with ``cryptography`` alone in one and in two
processes (the bare rate); for each backend import it through ``import_paths`` in a fresh
database while sampling the memory of the importing process tree, then run the search indexing
and policy evaluation jobs the import enqueued and time them apart; serve that database with
``sslclm serve --http`` and time three queries; then compare the list endpoint's throughput on
two uvicorn workers with a bare FastAPI app running the same query. Prints a table and writes
``bench/.work/results-inventory.json``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from bench import _parse
from bench._http import measure_latency, measure_throughput, pythonpath_env
from bench._util import (
    REPO_DIR,
    WORK_DIR,
    TreeMemory,
    fmt_int,
    format_table,
    load_average,
    machine_info,
)
from bench.corpus import ensure_corpus
from sslclm.audit.service import AuditContext
from sslclm.auth import service as auth_service
from sslclm.core.config import Settings
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.inventory.models import Certificate, Sighting
from sslclm.inventory.query import CertificateFilter, count_by

DEFAULT_PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
RESULTS = WORK_DIR / "results-inventory.json"

# The bars of issue 2.
IMPORT_RATIO_BAR = 0.60
PEAK_MEMORY_BAR_MB = 500.0
LATENCY_BARS_MS = {"expiring_first_page": 20.0, "deep_page_20000": 20.0, "stats_by_issuer": 100.0}
THROUGHPUT_RATIO_BAR = 0.50


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


@contextmanager
def database(backend: str, home: Path, pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for ``backend``; a PostgreSQL one is dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{(home / 'sslclm.db').resolve()}"
        return
    name = f"sslclm_bench_inventory_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def measure_bare(files: Sequence[Path], processes: int, expected: int | None) -> dict[str, Any]:
    """The bare parse rate of ``files`` on ``processes`` processes, as a result entry."""
    rate = _parse.measure(files, processes)
    if expected is not None and rate.certificates != expected:
        raise RuntimeError(f"bare parse found {rate.certificates} certificates, expected {expected}")
    log(f"bare parse, {processes} process(es): {rate.rate:,.0f} certs/s")
    return {
        "files": len(files),
        "certificates": rate.certificates,
        "processes": processes,
        "seconds": round(rate.seconds, 2),
        "certs_per_s": round(rate.rate, 1),
        "per_core": round(rate.per_core, 1),
        "cpu_seconds": round(rate.cpu_seconds, 2),
        "certs_per_cpu_second": round(rate.per_cpu_second, 1),
    }


def postgresql_settings(url: str) -> dict[str, str]:
    """The server settings an import's speed depends on, recorded beside its figures."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return {
                name: conn.execute(text(f"SHOW {name}")).scalar_one()
                for name in ("shared_buffers", "max_wal_size", "synchronous_commit", "server_version")
            }
    finally:
        engine.dispose()


def run_import(
    home: Path, url: str, corpus_dir: Path, env: dict[str, str], *, evaluate: bool = True
) -> dict[str, Any]:
    """Imports the corpus in a child process and samples its tree's memory while it runs."""
    argv = [sys.executable, "-m", "bench._import", str(home), url, str(corpus_dir)]
    if not evaluate:
        argv.append("--skip-evaluation")
    proc = subprocess.Popen(
        argv, env=env, cwd=REPO_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    memory = TreeMemory(proc.pid).start()
    try:
        out, err = proc.communicate()
    finally:
        memory.stop()
        if proc.poll() is None:  # interrupted: stop the import and its parser processes too
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"import failed (exit {proc.returncode}):\n{err.decode(errors='replace')[-4000:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    result["memory"] = memory.as_dict()
    return result


def inventory_facts(url: str) -> dict[str, Any]:
    """Row counts, statuses and the database size after the import."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            with Session(bind=conn) as session:
                statuses = count_by(
                    session, "status", CertificateFilter(), now=datetime.now(UTC), expiring_days=30
                )
            certificates = conn.execute(select(func.count()).select_from(Certificate)).scalar_one()
            sightings = conn.execute(select(func.count()).select_from(Sighting)).scalar_one()
            if engine.dialect.name == "postgresql":
                size = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
            else:
                path = Path(make_url(url).database or "")
                size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    finally:
        engine.dispose()
    return {
        "certificates": certificates,
        "sightings": sightings,
        "statuses": {s["key"]: s["count"] for s in statuses},
        "database_mb": round(size / 1e6, 1),
    }


def vacuum_analyze(url: str) -> float:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    started = time.perf_counter()
    try:
        with engine.connect() as conn:
            conn.execute(text("VACUUM ANALYZE"))
    finally:
        engine.dispose()
    return time.perf_counter() - started


def create_bench_token(home: Path, url: str, master_key: str) -> str:
    """A viewer user and API token for the HTTP measurements; returns the token (never printed)."""
    platform = Platform.open(Settings(home=home, database_url=url, master_key=SecretStr(master_key)))
    try:
        ctx = AuditContext(actor="bench")
        with session_scope(platform.sessions) as session:
            user = auth_service.create_user(session, ctx, "bench", secrets.token_urlsafe(24), "viewer")
            issued = auth_service.create_token(session, ctx, user, "bench")
            return issued.secret
    finally:
        platform.close()


def bench_backend(backend: str, corpus_dir: Path, args: argparse.Namespace, result: dict[str, Any]) -> None:
    """Fills ``result`` step by step, so a failing step keeps the figures of the steps before it."""
    home = WORK_DIR / f"inventory-{backend}"
    logs = WORK_DIR / f"logs-{backend}"
    for directory in (home, logs):
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True, mode=0o700)
    master_key = base64.b64encode(os.urandom(32)).decode()
    try:
        with database(backend, home, args.pg_admin_url) as url:
            env = pythonpath_env(dict(os.environ))
            env.update(
                SSLCLM_HOME=str(home),
                SSLCLM_DATABASE_URL=url,
                SSLCLM_MASTER_KEY=master_key,
                SSLCLM_EMBEDDED_WORKER="false",
                SSLCLM_EMBEDDED_SCHEDULER="false",
                SSLCLM_LOG_LEVEL="WARNING",
            )
            log(f"{backend}: importing {corpus_dir} ...")
            result["load_before_import"] = load_average()
            if backend == "postgresql":
                result["server_settings"] = postgresql_settings(url)
            result["import"] = run_import(home, url, corpus_dir, env, evaluate=not args.skip_evaluation)
            imp = result["import"]
            imp["certs_per_s"] = round(imp["imported"] / imp["seconds"], 1)
            # PostgreSQL's own processes count too (the server runs on this machine).
            cpu = imp["cpu_seconds_self"] + imp["cpu_seconds_children"] + imp.get("cpu_seconds_server", 0.0)
            imp["certs_per_cpu_second"] = round(imp["imported"] / cpu, 1)
            indexing = imp["indexing"]
            indexing["us_per_cert_cpu"] = round(
                (indexing["cpu_seconds"] + indexing["cpu_seconds_server"]) / imp["imported"] * 1e6, 1
            )
            evaluation = imp["evaluation"]
            evaluation["certs_per_s"] = round(imp["imported"] / max(evaluation["seconds"], 1e-9), 1)
            evaluation["us_per_cert_cpu"] = round(evaluation["cpu_seconds"] / imp["imported"] * 1e6, 1)
            log(
                f"{backend}: imported {imp['imported']} in {imp['seconds']:.1f} s "
                f"({imp['certs_per_s']:,.0f}/s), peak RSS sum {imp['memory']['peak_rss_sum_mb']} MB; "
                f"search indexing {indexing['seconds']:.1f} s; "
                f"evaluation jobs {evaluation['seconds']:.1f} s ({evaluation['jobs']}, "
                f"{evaluation['violations']} violations)"
            )
            if backend == "postgresql":
                result["vacuum_analyze_seconds"] = round(vacuum_analyze(url), 1)
                log(f"{backend}: VACUUM ANALYZE took {result['vacuum_analyze_seconds']} s")
            result["facts"] = inventory_facts(url)
            log(f"{backend}: {result['facts']}")
            if args.skip_http:
                return
            token = create_bench_token(home, url, master_key)
            result["load_before_latency"] = load_average()
            result["latency"] = measure_latency(
                env, token, logs, requests=args.requests, deep_pages=args.deep_pages
            )
            log(f"{backend}: latency {json.dumps(result['latency'])}")
            result["load_before_throughput"] = load_average()
            result["throughput"] = measure_throughput(
                env,
                url,
                token,
                logs,
                seconds=args.wrk_seconds,
                connections=args.wrk_connections,
                rounds=args.wrk_rounds,
            )
            tp = result["throughput"]
            log(
                f"{backend}: throughput ours {tp['ours_requests_per_s']}/s, "
                f"bare {tp['bare_requests_per_s']}/s"
            )
    finally:
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def summary_rows(results: dict[str, Any]) -> list[list[str]]:
    bare1, bare2 = results["bare_parse"]["one_process"], results["bare_parse"]["two_processes"]
    rows = [
        [
            "corpus",
            f"{results['corpus']['count']:,} certs, {results['corpus']['files']} files, "
            f"{results['corpus']['megabytes']:,.0f} MB",
            "",
            "",
        ],
        ["corpus generation", results["corpus"]["generation"], "", ""],
        [
            "bare parse, 1 process",
            f"{fmt_int(bare1['certs_per_s'])} certs/s ({fmt_int(bare1['certs_per_cpu_second'])} per CPU-s)",
            "",
            "",
        ],
        [
            "bare parse, 2 processes",
            f"{fmt_int(bare2['certs_per_s'])} certs/s ({fmt_int(bare2['per_core'])}/core)",
            "",
            "",
        ],
    ]
    for backend, res in results["backends"].items():
        if "error" in res:
            first_line = res["error"].strip().splitlines()[0]
            rows.append([f"{backend}", f"error: {first_line[:100]}", "", "FAIL"])
        if "import" not in res:
            continue
        imp = res["import"]
        rate = imp["certs_per_s"]
        before = res.get("bare_before_import", bare2)
        ratio = rate / before["certs_per_s"]
        rows.append(
            [
                f"{backend}: import",
                f"{fmt_int(rate)} certs/s = {ratio:.0%} of bare 2-proc just before "
                f"({fmt_int(before['certs_per_s'])}/s; {rate / bare2['certs_per_s']:.0%} of the first, "
                f"{rate / bare1['certs_per_s']:.0%} of 1-proc)"
                + (f", {imp['rejected']} files rejected" if imp["rejected"] else ""),
                f">= {IMPORT_RATIO_BAR:.0%}",
                _verdict(ratio >= IMPORT_RATIO_BAR),
            ]
        )
        cpu_ratio = imp["certs_per_cpu_second"] / bare1["certs_per_cpu_second"]
        server = imp.get("cpu_seconds_server", 0.0)
        rows.append(
            [
                f"{backend}: import CPU cost",
                f"{fmt_int(imp['certs_per_cpu_second'])} certs per CPU-second = {cpu_ratio:.0%} of bare "
                f"({fmt_int(bare1['certs_per_cpu_second'])}); µs/cert: importing process "
                f"{imp['cpu_seconds_self'] / imp['imported'] * 1e6:.0f}, parsers "
                f"{imp['cpu_seconds_children'] / imp['imported'] * 1e6:.0f}"
                + (f", server {server / imp['imported'] * 1e6:.0f}" if server else ""),
                "(info)",
                "",
            ]
        )
        indexing = imp["indexing"]
        with_indexing = imp["imported"] / (imp["seconds"] + indexing["seconds"])
        rows.append(
            [
                f"{backend}: search indexing (job, after the import)",
                f"{indexing['seconds']:.1f} s, {indexing['us_per_cert_cpu']} µs CPU/cert"
                + (" (server included)" if server else "")
                + f"; import + indexing {fmt_int(with_indexing)} certs/s = "
                f"{with_indexing / bare2['certs_per_s']:.0%} of bare 2-proc",
                "(info)",
                "",
            ]
        )
        evaluation = imp["evaluation"]
        if evaluation.get("skipped"):
            rows.append([f"{backend}: policy evaluation (jobs, after the import)", "left out", "", ""])
        else:
            with_evaluation = imp["imported"] / (imp["seconds"] + indexing["seconds"] + evaluation["seconds"])
            rows.append(
                [
                    f"{backend}: policy evaluation (jobs, after the import)",
                    f"{evaluation['seconds']:.1f} s = {fmt_int(evaluation['certs_per_s'])} certs/s, "
                    f"{evaluation['us_per_cert_cpu']} µs CPU/cert, {evaluation['violations']:,} violations; "
                    f"import + indexing + evaluation {fmt_int(with_evaluation)} certs/s = "
                    f"{with_evaluation / bare2['certs_per_s']:.0%} of bare 2-proc",
                    "(info)",
                    "",
                ]
            )
        mem = imp["memory"]
        rows.append(
            [
                f"{backend}: import peak memory",
                f"{mem['peak_rss_sum_mb']:.0f} MB RSS sum (PSS {mem['peak_pss_sum_mb']:.0f}, "
                f"largest process {mem['peak_rss_single_mb']:.0f})",
                f"< {PEAK_MEMORY_BAR_MB:.0f} MB",
                _verdict(mem["peak_rss_sum_mb"] < PEAK_MEMORY_BAR_MB),
            ]
        )
        for key, label in (
            ("expiring_first_page", "expiring, first page"),
            ("deep_page_20000", "page {rows_deep:,} rows deep"),
            ("stats_by_issuer", "count by issuer"),
        ):
            lat = res.get("latency", {}).get(key)
            if lat is None:
                continue
            label = label.format(**lat)
            rows.append(
                [
                    f"{backend}: {label}",
                    f"p50 {lat['p50_ms']} / p95 {lat['p95_ms']} / p99 {lat['p99_ms']} ms "
                    f"(server CPU {lat['server_cpu_ms_per_request']} ms/req)",
                    f"p95 < {LATENCY_BARS_MS[key]:.0f} ms",
                    _verdict(lat["p95_ms"] < LATENCY_BARS_MS[key]),
                ]
            )
        tp = res.get("throughput")
        if tp is not None:
            rows.append(
                [
                    f"{backend}: list throughput, 2 workers",
                    f"{fmt_int(tp['ours_requests_per_s'])} req/s vs bare {fmt_int(tp['bare_requests_per_s'])}"
                    f" = {tp['ratio']:.0%}",
                    f">= {THROUGHPUT_RATIO_BAR:.0%}",
                    _verdict(tp["ratio"] >= THROUGHPUT_RATIO_BAR and tp["same_rows"]),
                ]
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inventory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000, help="Certificates in the corpus.")
    parser.add_argument(
        "--backends", default="sqlite,postgresql", help="Comma-separated: sqlite, postgresql."
    )
    parser.add_argument(
        "--pg-admin-url", default=DEFAULT_PG_ADMIN_URL, help="Where to create the PG database."
    )
    parser.add_argument("--requests", type=int, default=200, help="Timed requests per latency query.")
    parser.add_argument(
        "--deep-pages",
        type=int,
        default=400,
        help="Pages of 50 to walk for the deep page (400 = 20,000 rows).",
    )
    parser.add_argument("--wrk-seconds", type=int, default=15, help="Length of each throughput run.")
    parser.add_argument("--wrk-connections", type=int, default=16, help="Concurrent connections of wrk.")
    parser.add_argument("--wrk-rounds", type=int, default=2, help="Alternating rounds of ours and bare.")
    parser.add_argument(
        "--bare-files",
        type=int,
        default=0,
        help="Parse only the first K corpus files for the bare rate (default: all of them).",
    )
    parser.add_argument("--skip-http", action="store_true", help="Only parse and import.")
    parser.add_argument(
        "--skip-evaluation",
        action="store_true",
        help="Leave out the policy evaluation jobs after each import (outside every bar).",
    )
    parser.add_argument("--keep", action="store_true", help="Keep the imported SQLite data in bench/.work.")
    parser.add_argument("--output", type=Path, default=RESULTS, help="Where to write the JSON results.")
    args = parser.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = sorted(set(backends) - {"sqlite", "postgresql"})
    if unknown or not backends:
        parser.error(
            f"--backends: unknown {', '.join(unknown) or 'empty list'}; use sqlite and/or postgresql"
        )
    if args.count < 1 or args.requests < 1 or args.deep_pages < 1:
        parser.error("--count, --requests and --deep-pages must be positive")
    if args.deep_pages * 50 >= args.count:
        parser.error(f"--deep-pages {args.deep_pages} x 50 rows needs more than {args.count} certificates")
    if "postgresql" in backends and not args.skip_http and shutil.which("wrk") is None:
        log("note: wrk is not installed (apt-get install -y wrk); throughput is needed for the full run")
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    # A plain SIGTERM would skip the clean-up (servers, the PostgreSQL database): make it an exit.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))

    started = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "inventory",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.inventory " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "load_at_start": load_average(),
    }
    log(f"corpus of {args.count:,} certificates ...")
    corpus = ensure_corpus(args.count)
    generation = (
        "cached (reused)"
        if corpus.generation_seconds is None
        else f"{corpus.generation_seconds:.1f} s ({args.count / corpus.generation_seconds:,.0f}/s)"
    )
    results["corpus"] = {
        "count": corpus.count,
        "files": len(corpus.files),
        "megabytes": round(corpus.total_bytes / 1e6, 1),
        "generated_at": corpus.generated_at.isoformat(),
        "generation": generation,
        "generation_seconds": corpus.generation_seconds,
    }
    log(f"corpus: {corpus.directory} ({generation})")

    results["load_before_parse"] = load_average()
    files = corpus.files[: args.bare_files] if args.bare_files else corpus.files
    expected = args.count if len(files) == len(corpus.files) else None
    bare: dict[str, Any] = {}
    for name, processes in (("one_process", 1), ("two_processes", 2)):
        bare[name] = measure_bare(files, processes, expected)
    results["bare_parse"] = bare

    results["backends"] = {}
    for backend in backends:
        result: dict[str, Any] = {"backend": backend}
        results["backends"][backend] = result
        # Measured again right before each import and judged against that: this machine's speed
        # drifts over the minutes a backend takes, and the bar compares rates taken together.
        result["bare_before_import"] = measure_bare(files, 2, expected)
        try:
            bench_backend(backend, corpus.directory, args, result)
        except Exception as exc:  # one backend failing must not lose the other's figures
            log(f"{backend}: FAILED: {type(exc).__name__}: {exc}")
            result["error"] = f"{type(exc).__name__}: {exc}"
    results["load_at_end"] = load_average()
    results["total_seconds"] = round(time.perf_counter() - started, 1)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str))
    m = results["machine"]
    print()
    print(
        f"Inventory benchmark: {m['nproc']} cores ({m['cpu_model']}), "
        f"load at start {results['load_at_start']}"
    )
    print(format_table(["measure", "result", "bar", "verdict"], summary_rows(results)))
    print(f"\nresults: {args.output} (total {results['total_seconds']:.0f} s)")
    return 0 if all("error" not in r for r in results["backends"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
