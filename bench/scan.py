"""Network scan rate: our TLS scanner against the raw handshake limit and the peer scanners.

Run ``python -m bench.scan`` (``--help`` for knobs). It serves N TLS endpoints on loopback — nginx
listening on up to 250 addresses 127.0.1.x times as many ports as needed, or with ``--server python``
asyncio listeners in worker processes — each with a leaf + intermediate chain from a generated PKI,
then in one run, on the same endpoints:

* **bare**: ``asyncio.open_connection(ssl=...)`` per endpoint with the same concurrency, closing
  right after the handshake; no chain, no checks. This is the raw handshake limit of a Python client.
* **sslclm**: ``parse_targets`` + ``TlsScanner.scan`` with full chains, trust against the bench root
  and hostname checks; every result must come back trusted. Alternated with bare, round by round.
* **sslclm recorded**: the whole ``run_scan`` path (scanner + batched writes of endpoints,
  certificates, sightings and history) into a fresh SQLite platform, as ``sslclm scan`` does.
* **openssl s_time -new**, **sslyze --certinfo** (its own venv, ``--sslyze-python``), **nmap
  --script ssl-cert** and **sslscan --show-certificate**: each once over the same endpoints.
* **sweep** (``--sweep``): a /16 of closed ports (127.2.0.0/16) in a child process, with its peak RSS.

Each row records the 1-minute load average when it finished: other work on the machine slows the
wall-clock figures, while "per CPU s" counts only the client's own CPU. Results also go to
``bench/.work/results-scan.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import multiprocessing
import os
import resource
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench._scan_peers import Row, run_nmap, run_s_time, run_sslscan, run_sslyze
from bench._util import WORK_DIR, machine_info
from sslclm.audit.service import AuditContext
from sslclm.connectors.tls_scan import ScanOptions, TlsScanner, TrustStore, parse_targets
from sslclm.core.config import Settings
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.discovery.scans import run_scan
from sslclm.discovery.schemas import ScanOptionsIn, ScanTargetsIn
from sslclm.discovery.service import create_scan

BASE_OCTETS = "127.0.1"


def _make_pki(directory: Path, names: Sequence[str]) -> tuple[Path, Path, Path]:
    """Root → intermediate → one P-256 leaf for every endpoint; returns (chain, key, root) paths."""
    now = datetime.now(UTC)

    def build(
        cn: str,
        key: ec.EllipticCurvePrivateKey,
        issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
        ca: bool,
        sans: Sequence[x509.GeneralName] = (),
    ) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer[0] if issuer else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        if issuer:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[1].public_key()), critical=False
            )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        return builder.sign(issuer[1] if issuer else key, hashes.SHA256())

    root_key, inter_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = build("Bench Root", root_key, None, True)
    inter = build("Bench Issuing CA", inter_key, (root.subject, root_key), True)
    import ipaddress

    sans = [x509.IPAddress(ipaddress.ip_address(n)) for n in names] + [x509.DNSName("localhost")]
    leaf = build("bench endpoint", leaf_key, (inter.subject, inter_key), False, sans)
    pem = serialization.Encoding.PEM
    chain_path, key_path, root_path = directory / "chain.pem", directory / "key.pem", directory / "root.pem"
    chain_path.write_bytes(leaf.public_bytes(pem) + inter.public_bytes(pem))
    key_path.write_bytes(
        leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    root_path.write_bytes(root.public_bytes(pem))
    return chain_path, key_path, root_path


def _free_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def _nginx(
    directory: Path, endpoints: Sequence[tuple[str, int]], chain: Path, key: Path, workers: int
) -> Iterator[None]:
    nginx = shutil.which("nginx")
    if nginx is None:
        raise SystemExit("nginx is not installed (apt-get install nginx-light), or use --server python")
    listens = "\n".join(f"        listen {address}:{port} ssl;" for address, port in endpoints)
    (directory / "logs").mkdir()
    config = directory / "nginx.conf"
    config.write_text(f"""
worker_processes {workers};
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/logs/error.log crit;
worker_rlimit_nofile 65536;
events {{ worker_connections 8192; multi_accept on; }}
http {{
    access_log off;
    client_body_temp_path {directory}/body;
    proxy_temp_path {directory}/proxy;
    fastcgi_temp_path {directory}/fastcgi;
    uwsgi_temp_path {directory}/uwsgi;
    scgi_temp_path {directory}/scgi;
    ssl_session_cache off;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_tickets off;
    server {{
{listens}
        ssl_certificate {chain};
        ssl_certificate_key {key};
        return 204;
    }}
}}
""")
    process = subprocess.Popen(
        [nginx, "-p", str(directory), "-c", str(config), "-e", str(directory / "logs/error.log")]
    )
    try:
        _wait_listening(endpoints[-1], process)
        yield
    finally:
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _python_server(endpoints: Sequence[tuple[str, int]], chain: Path, key: Path) -> None:
    async def serve() -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(chain, key)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                await reader.read()
            writer.transport.abort()

        servers = [
            await asyncio.start_server(handle, address, port, ssl=context, backlog=1024)
            for address, port in endpoints
        ]
        await asyncio.gather(*(server.serve_forever() for server in servers))

    asyncio.run(serve())


@contextlib.contextmanager
def _python_servers(
    endpoints: Sequence[tuple[str, int]], chain: Path, key: Path, workers: int
) -> Iterator[None]:
    shares = [endpoints[i::workers] for i in range(workers)]
    processes = [
        multiprocessing.Process(target=_python_server, args=(share, chain, key), daemon=True)
        for share in shares
        if share
    ]
    for process in processes:
        process.start()
    try:
        for share in shares:
            if share:
                _wait_listening(share[-1], None)
        yield
    finally:
        for process in processes:
            process.terminate()
            process.join()


def _wait_listening(endpoint: tuple[str, int], process: subprocess.Popen[bytes] | None) -> None:
    address, port = endpoint
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the server exited with status {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {address}:{port}")


def _client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def _bare(
    endpoints: Sequence[tuple[str, int]], concurrency: int, context: ssl.SSLContext
) -> tuple[float, float, int]:
    semaphore = asyncio.Semaphore(concurrency)
    ok = 0

    async def one(address: str, port: int) -> None:
        nonlocal ok
        async with semaphore:
            with contextlib.suppress(OSError, TimeoutError):
                _, writer = await asyncio.wait_for(asyncio.open_connection(address, port, ssl=context), 10)
                ok += 1
                writer.transport.abort()

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(a, p) for a, p in endpoints))
    return time.perf_counter() - started, time.process_time() - cpu, ok


async def _ours(scanner: TlsScanner, spec: str, ports: Sequence[int]) -> tuple[float, float, int, int]:
    ok = checked = 0
    started, cpu = time.perf_counter(), time.process_time()
    async for result in scanner.scan(parse_targets([spec], ports=ports)):
        ok += result.ok
        checked += result.trusted and bool(result.hostname_match) and len(result.chain) == 2
    return time.perf_counter() - started, time.process_time() - cpu, ok, checked


async def _compare(
    addresses: Sequence[str], ports: Sequence[int], rounds: int, concurrency: int, root: Path
) -> list[Row]:
    """Alternate bare and sslclm passes so that load from other processes hits both alike."""
    context = _client_context()
    store = TrustStore.load(extra_roots=[root], use_system=False)
    scanner = TlsScanner(ScanOptions(concurrency=concurrency, trust_store=store))
    spec = f"{addresses[0]}-{addresses[-1].rsplit('.', 1)[1]}"
    endpoints = [(a, p) for p in ports for a in addresses]
    await _bare(endpoints, concurrency, context)  # warm-up: page in code, fill caches
    bare_s = bare_cpu = ours_s = ours_cpu = 0.0
    bare_ok = ours_ok = checked = 0
    for _ in range(rounds):
        seconds, cpu, ok = await _bare(endpoints, concurrency, context)
        bare_s, bare_cpu, bare_ok = bare_s + seconds, bare_cpu + cpu, bare_ok + ok
        seconds, cpu, ok, good = await _ours(scanner, spec, ports)
        ours_s, ours_cpu, ours_ok, checked = ours_s + seconds, ours_cpu + cpu, ours_ok + ok, checked + good
    total = len(endpoints) * rounds
    load = os.getloadavg()
    return [
        Row("bare asyncio open_connection(ssl=)", total, bare_s, bare_cpu, bare_ok, "handshake only", load),
        Row(
            "sslclm TlsScanner.scan",
            total,
            ours_s,
            ours_cpu,
            ours_ok,
            f"{checked} trusted+name, chain of 2",
            load,
        ),
    ]


def _recorded(
    addresses: Sequence[str], ports: Sequence[int], concurrency: int, root: Path, home: Path
) -> Row:
    """The whole ``run_scan`` path into a fresh SQLite platform: scanner plus batched database writes."""
    settings = Settings(home=home, master_key=base64.b64encode(secrets.token_bytes(32)).decode())
    platform = Platform.open(settings)
    try:
        spec = ScanTargetsIn(
            targets=[f"{addresses[0]}-{addresses[-1].rsplit('.', 1)[1]}"], ports=",".join(map(str, ports))
        )
        options = ScanOptionsIn(
            concurrency=concurrency, use_system_roots=False, extra_roots_pem=root.read_text()
        )
        timings = []
        for _ in range(2):  # the first scan creates every row, the second updates them
            with session_scope(platform.sessions) as session:
                scan_id = create_scan(
                    session, AuditContext(actor="bench"), spec, options, now=platform.clock(), enqueue=False
                ).id
            started, cpu = time.perf_counter(), time.process_time()
            outcome = run_scan(platform, scan_id)
            timings.append((time.perf_counter() - started, time.process_time() - cpu, outcome.found))
    finally:
        platform.close()
    seconds = sum(t[0] for t in timings)
    cpu = sum(t[1] for t in timings)
    found = sum(t[2] for t in timings)
    return Row(
        "sslclm run_scan into SQLite",
        len(addresses) * len(ports) * 2,
        seconds,
        cpu,
        found,
        f"2 scans (insert, then update): {timings[0][0]:.2f}s + {timings[1][0]:.2f}s",
        os.getloadavg(),
    )


async def _sweep(port: int, concurrency: int) -> dict[str, float]:
    targets = parse_targets(["127.2.0.0/16"], ports=[port])
    scanner = TlsScanner(ScanOptions(concurrency=concurrency, connect_timeout=2, trust_store=TrustStore([])))
    refused = total = 0
    started, cpu = time.perf_counter(), time.process_time()
    async for result in scanner.scan(targets):
        total += 1
        refused += result.error_kind == "refused"
    return {
        "endpoints": total,
        "refused": refused,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _peak_rss_mb() -> float:
    """This process's high-water RSS (VmHWM).

    Not ``ru_maxrss``: Linux carries that across ``exec``, so a child started by a large parent
    would report the parent's size.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sweep_in_child(concurrency: int) -> Row:
    """The sweep in a fresh interpreter, so its peak RSS is the sweep's own and nothing else's."""
    command = [sys.executable, "-m", "bench.scan", "--sweep-only", "--concurrency", str(concurrency)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=1800)
    figures = json.loads(done.stdout)
    return Row(
        "sslclm sweep, closed /16",
        int(figures["endpoints"]),
        figures["seconds"],
        figures["cpu_seconds"],
        0,
        f"{int(figures['refused'])} refused, peak RSS {figures['peak_rss_mb']:.0f} MB (whole process)",
        os.getloadavg(),
    )


def _print(rows: Sequence[Row], header: str) -> None:
    print(f"\n{header}\n")
    print(
        f"{'client':34} {'endpoints':>9} {'seconds':>8} {'per s':>7} {'vs bare':>7} "
        f"{'per CPU s':>9} {'vs bare':>7} {'ok':>5} {'load':>5}  note"
    )
    bare = rows[0]
    for row in rows:
        ratio = cpu_ratio = ""
        if row is not bare and row.ok:
            ratio, cpu_ratio = f"{row.rate / bare.rate:.0%}", f"{row.cpu_rate / bare.cpu_rate:.0%}"
        figures = f"{row.endpoints:9d} {row.seconds:8.2f} {row.rate:7.0f} {ratio:>7}"
        figures += f" {row.cpu_rate:9.0f} {cpu_ratio:>7}"
        print(f"{row.name:34} {figures} {row.ok:5d} {row.load[0]:5.1f}  {row.note}")
    print("\n'per CPU s' counts only the client's own processes, so other load on the machine cancels out.")


PEERS = ("s_time", "sslyze", "nmap", "sslscan")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--endpoints", type=int, default=1000, help="TLS endpoints served (rounded up)")
    parser.add_argument("--rounds", type=int, default=5, help="bare/sslclm passes over the endpoints")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--server", choices=("nginx", "python"), default="nginx")
    parser.add_argument("--server-workers", type=int, default=1)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--sweep", action="store_true", help="also scan a /16 of closed ports")
    parser.add_argument("--sweep-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--peers", default=",".join(PEERS), help="peer tools to run ('' for none)")
    parser.add_argument("--no-recorded", action="store_true", help="skip the run_scan-into-SQLite row")
    parser.add_argument("--stime-seconds", type=int, default=5)
    parser.add_argument(
        "--sslyze-python",
        type=Path,
        default=WORK_DIR / "sslyze-venv" / "bin" / "python",
        help="python of a venv with sslyze (python -m venv bench/.work/sslyze-venv && pip install sslyze)",
    )
    parser.add_argument("--output", type=Path, default=WORK_DIR / "results-scan.json")
    args = parser.parse_args(argv)
    if args.sweep_only:
        print(json.dumps(asyncio.run(_sweep(_free_port(), args.concurrency))))
        return 0
    if args.endpoints < 1:
        parser.error("--endpoints must be positive")
    peers = [p for p in args.peers.split(",") if p]
    unknown = set(peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))} (known: {', '.join(PEERS)})")
    address_count = min(args.endpoints, 250)
    addresses = [f"{BASE_OCTETS}.{i}" for i in range(1, address_count + 1)]
    ports = sorted({_free_port() for _ in range(-(-args.endpoints // address_count))})
    endpoints = [(a, p) for p in ports for a in addresses]
    runner = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        runner = uvloop.run
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="sslclm-bench-") as tmp:
        directory = Path(tmp)
        chain, key, root = _make_pki(directory, addresses)
        serving = (
            _nginx(directory, endpoints, chain, key, args.server_workers)
            if args.server == "nginx"
            else _python_servers(endpoints, chain, key, args.server_workers)
        )
        with serving:
            rows = runner(_compare(addresses, ports, args.rounds, args.concurrency, root))
            if not args.no_recorded:
                rows.append(_recorded(addresses, ports, args.concurrency, root, directory / "platform"))
            if "s_time" in peers:
                rows.append(run_s_time(endpoints, 4, args.stime_seconds))
            if "sslyze" in peers:
                if args.sslyze_python.exists():
                    rows.append(run_sslyze(args.sslyze_python, endpoints, root, directory))
                else:
                    print(f"skipping sslyze: {args.sslyze_python} not found", file=sys.stderr)
            if "nmap" in peers and shutil.which("nmap"):
                rows.append(run_nmap(addresses, ports, directory))
            if "sslscan" in peers and shutil.which("sslscan"):
                rows.append(run_sslscan(endpoints, directory))
        if args.sweep:
            rows.append(_sweep_in_child(max(args.concurrency, 500)))
    header = (
        f"{len(endpoints)} endpoints ({len(addresses)} addresses x {len(ports)} ports), "
        f"bare/sslclm x {args.rounds} rounds, server {args.server} "
        f"({args.server_workers} worker(s)), loop {args.loop}, concurrency {args.concurrency}, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}, "
        f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    _print(rows, header)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps(
            {
                "machine": machine_info(),
                "header": header,
                "load_average_before": load_before,
                "load_average_after": os.getloadavg(),
                "rows": [row.as_dict() for row in rows],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
