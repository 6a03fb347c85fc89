"""The peer scanners of ``bench.scan``, each run once over the same loopback endpoints.

Every runner returns a :class:`Row`: wall seconds, the CPU seconds of the tool's own processes
(from ``RUSAGE_CHILDREN``, so other load on the machine does not count), and how many endpoints it
really got a certificate from, read back from its own output.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

Endpoint = tuple[str, int]


@dataclass(frozen=True)
class Row:
    name: str
    endpoints: int
    seconds: float
    cpu_seconds: float  # the client's own CPU: this process, or the tool's processes
    ok: int
    note: str = ""
    load: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0))

    @property
    def rate(self) -> float:
        return self.endpoints / self.seconds if self.seconds else 0.0

    @property
    def cpu_rate(self) -> float:
        return self.endpoints / self.cpu_seconds if self.cpu_seconds else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "endpoints": self.endpoints,
            "seconds": round(self.seconds, 3),
            "per_second": round(self.rate, 1),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "per_cpu_second": round(self.cpu_rate, 1),
            "ok": self.ok,
            "note": self.note,
            "load_average_1m": round(self.load[0], 2),
        }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(
    command: Sequence[str], *, timeout: float = 1800
) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    cpu = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, check=False)
    return time.perf_counter() - started, _children_cpu() - cpu, done


def _fail(name: str, done: subprocess.CompletedProcess[str]) -> str:
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return f"{name} exited {done.returncode}: {' | '.join(tail)}"


def run_s_time(endpoints: Sequence[Endpoint], processes: int, seconds: int) -> Row:
    """``openssl s_time -new``: one full handshake after another, ``processes`` of them side by side."""
    cpu = _children_cpu()
    started = time.perf_counter()
    running = [
        subprocess.Popen(
            ["openssl", "s_time", "-connect", f"{address}:{port}", "-new", "-time", str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for address, port in endpoints[:processes]
    ]
    connections = 0
    for process in running:
        out, _ = process.communicate(timeout=seconds + 60)
        match = re.search(r"(\d+) connections in [\d.]+s", out)
        connections += int(match.group(1)) if match else 0
    wall = time.perf_counter() - started
    return Row(
        "openssl s_time -new",
        connections,
        wall,
        _children_cpu() - cpu,
        connections,
        f"{processes} processes x {seconds}s, sequential handshakes each",
        os.getloadavg(),
    )


def run_sslyze(python: Path, endpoints: Sequence[Endpoint], root: Path, work: Path) -> Row:
    targets, output = work / "sslyze-targets.txt", work / "sslyze.json"
    targets.write_text("".join(f"{address}:{port}\n" for address, port in endpoints))
    command = [
        str(python),
        "-m",
        "sslyze",
        "--certinfo",
        "--certinfo_ca_file",
        str(root),
        "--targets_in",
        str(targets),
        "--json_out",
        str(output),
        "--quiet",
    ]
    seconds, cpu, done = _run(command)
    ok = 0
    if output.exists():
        document = json.loads(output.read_text())
        for server in document.get("server_scan_results", []):
            certinfo = (server.get("scan_result") or {}).get("certificate_info") or {}
            ok += certinfo.get("status") == "COMPLETED"
    note = "--certinfo only" if done.returncode == 0 else _fail("sslyze", done)
    return Row("sslyze --certinfo", len(endpoints), seconds, cpu, ok, note, os.getloadavg())


def run_nmap(addresses: Sequence[str], ports: Sequence[int], work: Path) -> Row:
    output = work / "nmap.xml"
    first, last = addresses[0], addresses[-1].rsplit(".", 1)[1]
    command = [
        "nmap",
        "-n",
        "-Pn",
        "-sT",
        "-T4",
        "-p",
        ",".join(str(p) for p in ports),
        # "+" runs the script on every open port: without -sV nmap would not know these ports speak TLS.
        "--script",
        "+ssl-cert",
        "-oX",
        str(output),
        f"{first}-{last}",
    ]
    seconds, cpu, done = _run(command)
    ok = 0
    if output.exists():
        tree = ElementTree.parse(output)  # noqa: S314 - our own nmap's output
        ok = sum(
            1
            for script in tree.iter("script")
            if script.get("id") == "ssl-cert" and "Subject" in (script.get("output") or "")
        )
    note = "-sT -T4 --script +ssl-cert" if done.returncode == 0 else _fail("nmap", done)
    return Row("nmap ssl-cert", len(addresses) * len(ports), seconds, cpu, ok, note, os.getloadavg())


def run_sslscan(endpoints: Sequence[Endpoint], work: Path) -> Row:
    targets = work / "sslscan-targets.txt"
    targets.write_text("".join(f"{address}:{port}\n" for address, port in endpoints))
    command = [
        "sslscan",
        "--no-colour",
        "--show-certificate",
        "--no-ciphersuites",
        "--no-cipher-details",
        "--no-compression",
        "--no-fallback",
        "--no-groups",
        "--no-heartbleed",
        "--no-renegotiation",
        f"--targets={targets}",
    ]
    seconds, cpu, done = _run(command)
    ok = len(re.findall(r"^Subject:", done.stdout, re.MULTILINE))  # the summary line, once per target
    note = "certificate only, targets one after another" if done.returncode == 0 else _fail("sslscan", done)
    return Row("sslscan --show-certificate", len(endpoints), seconds, cpu, ok, note, os.getloadavg())
