"""Network scan rate: our TLS scanner against a bare asyncio TLS client, on the same loopback endpoints.

Run ``python -m bench.scan`` (``--help`` for knobs). It serves N TLS endpoints on loopback — nginx
listening on up to 250 addresses 127.0.1.x times as many ports as needed, or with ``--server python``
asyncio listeners in worker processes — each with a leaf + intermediate chain from a generated PKI,
then in one run:

* **bare**: ``asyncio.open_connection(ssl=...)`` per endpoint with the same concurrency, closing
  right after the handshake; no chain, no checks. This is the raw handshake limit of a Python client.
* **sslclm**: ``parse_targets`` + ``TlsScanner.scan`` with full chains, trust against the zoo root
  and hostname checks; every result must come back trusted.
* **sweep** (``--sweep``): a /16 of closed ports (127.2.0.0/16), with the peak RSS of the process.

The issue's bar is sslclm ≥ 60% of bare; the table prints the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sslclm.connectors.tls_scan import ScanOptions, TlsScanner, TrustStore, parse_targets

BASE_OCTETS = "127.0.1"


@dataclass(frozen=True)
class Row:
    name: str
    endpoints: int
    seconds: float
    cpu_seconds: float  # this process only: the client's own cost, whatever else loads the machine
    ok: int
    note: str = ""

    @property
    def rate(self) -> float:
        return self.endpoints / self.seconds if self.seconds else 0.0

    @property
    def cpu_rate(self) -> float:
        return self.endpoints / self.cpu_seconds if self.cpu_seconds else 0.0


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
    return [
        Row("bare asyncio open_connection(ssl=)", total, bare_s, bare_cpu, bare_ok, "handshake only"),
        Row(
            "sslclm TlsScanner.scan", total, ours_s, ours_cpu, ours_ok, f"{checked} trusted+name, chain of 2"
        ),
    ]


async def _sweep(port: int, concurrency: int) -> Row:
    targets = parse_targets(["127.2.0.0/16"], ports=[port])
    scanner = TlsScanner(ScanOptions(concurrency=concurrency, connect_timeout=2, trust_store=TrustStore([])))
    refused = total = 0
    started, cpu = time.perf_counter(), time.process_time()
    async for result in scanner.scan(targets):
        total += 1
        refused += result.error_kind == "refused"
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return Row(
        "sslclm sweep, closed /16", total, seconds, cpu, 0, f"{refused} refused, peak RSS {peak_mb:.0f} MB"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--endpoints", type=int, default=1000, help="TLS endpoints served (rounded up)")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the endpoints per client")
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--server", choices=("nginx", "python"), default="nginx")
    parser.add_argument("--server-workers", type=int, default=1)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--sweep", action="store_true", help="also scan a /16 of closed ports")
    args = parser.parse_args(argv)
    if args.endpoints < 1:
        parser.error("--endpoints must be positive")
    address_count = min(args.endpoints, 250)
    addresses = [f"{BASE_OCTETS}.{i}" for i in range(1, address_count + 1)]
    ports = sorted({_free_port() for _ in range(-(-args.endpoints // address_count))})
    endpoints = [(a, p) for p in ports for a in addresses]
    runner = asyncio.run
    if args.loop == "uvloop":
        import uvloop

        runner = uvloop.run
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
        if args.sweep:
            rows.append(runner(_sweep(_free_port(), args.concurrency)))
    print(
        f"\n{len(endpoints)} endpoints ({len(addresses)} addresses x {len(ports)} ports) "
        f"x {args.rounds} rounds, server {args.server} "
        f"({args.server_workers} worker(s)), loop {args.loop}, concurrency {args.concurrency}, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}\n"
    )
    print(
        f"{'client':34} {'endpoints':>9} {'seconds':>8} {'per s':>7} {'vs bare':>7} "
        f"{'per CPU s':>9} {'vs bare':>7} {'ok':>5}  note"
    )
    bare = rows[0]
    for row in rows:
        ratio = cpu_ratio = ""
        if row is not bare and row.ok:
            ratio, cpu_ratio = f"{row.rate / bare.rate:.0%}", f"{row.cpu_rate / bare.cpu_rate:.0%}"
        figures = f"{row.endpoints:9d} {row.seconds:8.2f} {row.rate:7.0f} {ratio:>7}"
        figures += f" {row.cpu_rate:9.0f} {cpu_ratio:>7}"
        print(f"{row.name:34} {figures} {row.ok:5d}  {row.note}")
    print("\n'per CPU s' counts only this process (the client), so other load on the machine cancels out.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
