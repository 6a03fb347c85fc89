"""Helpers shared by the benchmarks: the machine, memory sampling, percentiles, servers and tables."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

BENCH_DIR = Path(__file__).resolve().parent
WORK_DIR = BENCH_DIR / ".work"
REPO_DIR = BENCH_DIR.parent


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def percentile(samples: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation): a value that was actually observed."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(pct / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def latency_summary(samples_s: Sequence[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples_s]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
        "mean_ms": round(sum(ms) / len(ms), 2),
    }


@dataclass
class TreeMemory:
    """Peak resident memory of a process and all its descendants, sampled from /proc.

    The sum of RSS counts pages shared between a parent and its forked children more than once,
    so it overstates; PSS (proportional set size) splits shared pages fairly and is what the
    machine really spends. Both are reported.
    """

    pid: int
    interval: float = 0.1
    peak_rss_sum: int = 0
    peak_pss_sum: int = 0
    peak_rss_single: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        rss_sum = pss_sum = 0
        for proc in procs:
            try:
                info = proc.memory_full_info()
            except psutil.Error:
                continue
            rss_sum += info.rss
            pss_sum += getattr(info, "pss", info.rss)
            self.peak_rss_single = max(self.peak_rss_single, info.rss)
        self.peak_rss_sum = max(self.peak_rss_sum, rss_sum)
        self.peak_pss_sum = max(self.peak_pss_sum, pss_sum)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def start(self) -> TreeMemory:
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def as_dict(self) -> dict[str, Any]:
        return {
            "peak_rss_sum_mb": round(self.peak_rss_sum / 1e6, 1),
            "peak_pss_sum_mb": round(self.peak_pss_sum / 1e6, 1),
            "peak_rss_single_mb": round(self.peak_rss_single / 1e6, 1),
            "samples": self.samples,
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    """Waits until ``url`` answers; fails early if the server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before answering {url}")
        try:
            response = httpx.get(url, timeout=5.0)
        except httpx.HTTPError:
            response = None
        if response is not None:
            if response.status_code < 500:
                return
            if response.status_code == 500:  # up but broken: waiting will not help
                raise RuntimeError(f"{url} answered 500: {response.text[:300]}")
        time.sleep(0.2)
    raise RuntimeError(f"server did not answer {url} within {timeout:.0f} s")


@contextlib.contextmanager
def running(
    argv: Sequence[str], *, env: dict[str, str], ready_url: str, log: Path, cwd: Path = REPO_DIR
) -> Iterator[subprocess.Popen[bytes]]:
    """A server subprocess (its own process group) that is stopped, with its workers, on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            list(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_http(ready_url, proc)
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, 9)
                proc.wait()


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for index, row in enumerate(cells):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"
