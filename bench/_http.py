"""HTTP measurements for the inventory benchmark: API latency and list throughput against a bare app."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench._util import REPO_DIR, free_port, latency_summary, running

LIST_EXPIRING = "/api/v1/certificates?status=expiring&sort=not_after&limit=50"
DEEP_BASE = "/api/v1/certificates?sort=not_after&limit=50"
STATS_BY_ISSUER = "/api/v1/certificates/stats?by=issuer"
DEEP_PAGES = 400  # x 50 rows: the page that starts 20,000 rows deep


def _sslclm_command() -> list[str]:
    script = Path(sys.executable).parent / "sslclm"
    if script.exists():
        return [str(script)]
    found = shutil.which("sslclm")
    if found is None:
        raise RuntimeError("the sslclm command is not installed in this environment")
    return [found]


def _cpu_seconds(server: psutil.Process) -> float:
    times = server.cpu_times()
    return float(times.user + times.system)


def _timed(
    client: httpx.Client, url: str, requests: int, warmup: int, server: psutil.Process
) -> dict[str, Any]:
    for _ in range(warmup):
        client.get(url).raise_for_status()
    samples: list[float] = []
    cpu_before = _cpu_seconds(server)
    for _ in range(requests):
        started = time.perf_counter()
        response = client.get(url)
        elapsed = time.perf_counter() - started
        response.raise_for_status()
        samples.append(elapsed)
    summary = latency_summary(samples)
    # The server's CPU time per request does not grow when other processes compete for the
    # cores, unlike the wall-clock latency: on an idle machine latency approaches it.
    summary["server_cpu_ms_per_request"] = round((_cpu_seconds(server) - cpu_before) * 1000 / requests, 2)
    return summary


def deep_cursor(client: httpx.Client, pages: int = DEEP_PAGES) -> tuple[str, float]:
    """Follows next_cursor ``pages`` times; returns the cursor of the page after them and the walk's time."""
    cursor: str | None = None
    started = time.perf_counter()
    for _ in range(pages):
        url = DEEP_BASE + (f"&cursor={cursor}" if cursor else "")
        response = client.get(url)
        response.raise_for_status()
        cursor = response.json()["next_cursor"]
        if cursor is None:
            raise RuntimeError(f"the inventory ran out before {pages} pages of 50")
    assert cursor is not None
    return cursor, time.perf_counter() - started


def measure_latency(
    env: dict[str, str],
    token: str,
    log_dir: Path,
    *,
    requests: int = 200,
    warmup: int = 20,
    deep_pages: int = DEEP_PAGES,
) -> dict[str, Any]:
    """Latency of the three inventory queries through ``sslclm serve --http`` (one process)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [*_sslclm_command(), "serve", "--http", "--port", str(port), "--no-worker", "--no-scheduler"]
    with (
        running(argv, env=env, ready_url=f"{base}/api/v1/health", log=log_dir / "serve.log") as proc,
        httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60.0) as client,
    ):
        server = psutil.Process(proc.pid)
        first = client.get(LIST_EXPIRING)
        first.raise_for_status()
        expiring_rows = len(first.json()["items"])
        results: dict[str, Any] = {
            "expiring_first_page": _timed(client, LIST_EXPIRING, requests, warmup, server)
        }
        results["expiring_first_page"]["rows"] = expiring_rows
        cursor, walk_seconds = deep_cursor(client, deep_pages)
        deep_url = f"{DEEP_BASE}&cursor={cursor}"
        results["deep_page_20000"] = _timed(client, deep_url, requests, warmup, server)
        results["deep_page_20000"]["rows_deep"] = deep_pages * 50
        results["deep_page_20000"]["walk_seconds"] = round(walk_seconds, 2)
        stats = client.get(STATS_BY_ISSUER)
        stats.raise_for_status()
        results["stats_by_issuer"] = _timed(client, STATS_BY_ISSUER, requests, min(warmup, 5), server)
        results["stats_by_issuer"]["groups"] = len(stats.json()["counts"])
    return results


_WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_WRK_ERRORS = re.compile(r"Socket errors:.*")
_WRK_LATENCY = re.compile(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", re.MULTILINE)


def run_wrk(url: str, script: Path, *, seconds: int, connections: int, threads: int = 1) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    rate = _WRK_RATE.search(out)
    if rate is None:
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    non2xx = _WRK_NON2XX.search(out)
    errors = _WRK_ERRORS.search(out)
    latency = _WRK_LATENCY.search(out)
    return {
        "requests_per_s": float(rate.group(1)),
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(0) if errors else None,
        "avg_latency": latency.group(1) if latency else None,
    }


def _write_wrk_script(path: Path, token: str | None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        if token:
            handle.write(f'wrk.headers["Authorization"] = "Bearer {token}"\n')
        else:
            handle.write("-- no headers: the bare app has no authentication\n")
    return path


def _uvicorn(factory: str, port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        factory,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def measure_throughput(
    env: dict[str, str],
    database_url: str,
    token: str,
    work: Path,
    *,
    seconds: int = 15,
    connections: int = 16,
    rounds: int = 2,
    workers: int = 2,
) -> dict[str, Any]:
    """Requests/s of the list endpoint and of the bare app, each on ``workers`` uvicorn workers.

    The two run one after the other, alternating ``rounds`` times, so a change in the machine's
    background load hits both alike; the median of each is compared.
    """
    ours_script = _write_wrk_script(work / "wrk-ours.lua", token)
    bare_script = _write_wrk_script(work / "wrk-bare.lua", None)
    bare_env = {**env, "BENCH_DATABASE_URL": database_url}
    port_ours, port_bare = free_port(), free_port()
    ours_url = f"http://127.0.0.1:{port_ours}{LIST_EXPIRING}"
    bare_url = f"http://127.0.0.1:{port_bare}/certificates?limit=50"
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "bare": []}
    try:
        with (
            running(
                _uvicorn("bench.asgi:create", port_ours, workers),
                env=env,
                ready_url=f"http://127.0.0.1:{port_ours}/api/v1/health",
                log=work / "uvicorn-ours.log",
            ),
            running(
                _uvicorn("bench.bare_app:create", port_bare, workers),
                env=bare_env,
                ready_url=f"http://127.0.0.1:{port_bare}/certificates?limit=1",
                log=work / "uvicorn-bare.log",
            ),
        ):
            same = _same_rows(ours_url, bare_url, token)
            # A short warm-up of each: connection pools, statement caches, the token cache.
            run_wrk(ours_url, ours_script, seconds=2, connections=connections)
            run_wrk(bare_url, bare_script, seconds=2, connections=connections)
            for _ in range(rounds):
                runs["ours"].append(run_wrk(ours_url, ours_script, seconds=seconds, connections=connections))
                runs["bare"].append(run_wrk(bare_url, bare_script, seconds=seconds, connections=connections))
    finally:
        ours_script.unlink(missing_ok=True)
        bare_script.unlink(missing_ok=True)
    ours = _median([r["requests_per_s"] for r in runs["ours"]])
    bare = _median([r["requests_per_s"] for r in runs["bare"]])
    return {
        "workers": workers,
        "connections": connections,
        "seconds_per_run": seconds,
        "same_rows": same,
        "ours_requests_per_s": round(ours, 1),
        "bare_requests_per_s": round(bare, 1),
        "ratio": round(ours / bare, 3) if bare else None,
        "runs": runs,
    }


def _same_rows(ours_url: str, bare_url: str, token: str) -> bool:
    ours = httpx.get(ours_url, headers={"Authorization": f"Bearer {token}"}, timeout=60.0)
    bare = httpx.get(bare_url, timeout=60.0)
    ours.raise_for_status()
    bare.raise_for_status()
    ids: Callable[[httpx.Response], list[int]] = lambda r: [item["id"] for item in r.json()["items"]]  # noqa: E731
    return ids(ours) == ids(bare)


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def pythonpath_env(base: dict[str, str]) -> dict[str, str]:
    """The environment for servers started from the repository, with ``bench`` importable."""
    env = dict(base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_DIR), env.get("PYTHONPATH", "")]))
    return env
