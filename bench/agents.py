"""Agent heartbeats at fleet scale (issue 6), beside the bare TLS cost, in one run:

(a) bare: a minimal asyncio TLS server on loopback that asks for the same client certificate
    (CERT_REQUIRED against the agent CA) and answers every request with a fixed 200; the generator
    measures a full handshake + one request per connection, then requests on kept-alive connections;
(b) platform: ``sslclm serve --agent-port`` (one process, SQLite unless --database-url) and
    ``--agents`` simulated agents, each on its own kept-alive mutual-TLS connection, sending
    ``POST /agent/v1/heartbeat`` every ``--interval`` seconds (spread evenly), for ``--duration``.
    Every request is authenticated (certificate bound to an agent record) and updates last_seen.

    python -m bench.agents --agents 5000 --interval 30 --duration 120

Identities: ``--identities`` agents are registered through the real registration service (a token
and a CSR each, issued by the agent CA); simulated agents beyond that reuse them round-robin, which
costs the server the same per heartbeat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import psutil

from bench._util import WORK_DIR, free_port, latency_summary, machine_info

SSLCLM = Path(sys.executable).with_name("sslclm")
BODY = b'{"status":"ok","version":"bench"}'


@dataclass
class Identity:
    cert: Path
    key: Path


@dataclass
class Results:
    latencies: list[float] = field(default_factory=list)
    handshakes: list[float] = field(default_factory=list)
    errors: int = 0
    server_cpu_seconds: float = 0.0


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _request(host: str, path: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"X-SSLCLM-Agent-Protocol: 1\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() == "content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


def _client_context(ca_file: Path, identity: Identity) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    context.load_cert_chain(str(identity.cert), str(identity.key))
    return context


async def _simulated_agent(
    port: int,
    context: ssl.SSLContext,
    start_delay: float,
    interval: float,
    measure_from: float,
    until: float,
    results: Results,
) -> None:
    await asyncio.sleep(start_delay)
    loop = asyncio.get_running_loop()
    writer = None
    try:
        began = loop.time()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
        )
        results.handshakes.append(loop.time() - began)
        request = _request("127.0.0.1", "/agent/v1/heartbeat")
        next_at = loop.time()
        while next_at < until:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            sent = loop.time()
            writer.write(request)
            status = await _read_response(reader)
            if status != 200:
                results.errors += 1
            elif sent >= measure_from:
                results.latencies.append(loop.time() - sent)
            next_at += interval
    except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
        results.errors += 1
    finally:
        if writer is not None:
            writer.close()


async def _cpu_window(server: psutil.Process, start: float, until: float, results: Results) -> None:
    """The server's CPU seconds over the measured window (what a heartbeat costs, whatever else runs)."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, start - loop.time()))
    before = _cpu_seconds(server)
    await asyncio.sleep(max(0.0, until - loop.time()))
    results.server_cpu_seconds = _cpu_seconds(server) - before


def _cpu_seconds(process: psutil.Process) -> float:
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        times = member.cpu_times()
        total += times.user + times.system
    return total


async def _fleet(
    port: int,
    contexts: list[ssl.SSLContext],
    members: range,
    agents: int,
    interval: float,
    duration: float,
    warmup: float,
    start_wall: float,
    server: psutil.Process | None = None,
) -> Results:
    """Runs simulated agents ``members`` of ``agents``: they connect during ``warmup`` (spread out by
    their index), then ``duration`` is measured. ``start_wall`` aligns several generator processes."""
    results = Results()
    loop = asyncio.get_running_loop()
    base = loop.time() + (start_wall - time.time())
    measure_from = base + warmup
    until = measure_from + duration
    tasks = [
        _simulated_agent(
            port,
            contexts[n % len(contexts)],
            max(0.0, base + interval * n / agents - loop.time()),
            interval,
            measure_from,
            until,
            results,
        )
        for n in members
    ]
    if server is not None:
        tasks.append(_cpu_window(server, measure_from, until, results))
    await asyncio.gather(*tasks)
    return results


def _generator(
    port: int,
    ca_file: Path,
    identities: list[Identity],
    members: range,
    agents: int,
    timing: tuple[float, float, float, float],
    server_pid: int | None,
) -> Results:
    """One load-generator process (several keep the generator's own event loop out of the figures)."""
    _raise_fd_limit()
    interval, duration, warmup, start_wall = timing
    contexts = [_client_context(ca_file, identity) for identity in identities]
    server = psutil.Process(server_pid) if server_pid is not None else None
    return asyncio.run(
        _fleet(port, contexts, members, agents, interval, duration, warmup, start_wall, server)
    )


def _run_fleet(
    port: int, ca_file: Path, identities: list[Identity], args: argparse.Namespace, server_pid: int
) -> Results:
    start_wall = time.time() + 2.0
    timing = (args.interval, args.duration, args.warmup, start_wall)
    slices = [range(g, args.agents, args.generators) for g in range(args.generators)]
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(args.generators, mp_context=context) as pool:
        futures = [
            pool.submit(
                _generator,
                port,
                ca_file,
                identities,
                members,
                args.agents,
                timing,
                server_pid if g == 0 else None,
            )
            for g, members in enumerate(slices)
        ]
        parts = [future.result() for future in futures]
    total = Results()
    for part in parts:
        total.latencies.extend(part.latencies)
        total.handshakes.extend(part.handshakes)
        total.errors += part.errors
        total.server_cpu_seconds += part.server_cpu_seconds
    return total


# --- (a) the bare TLS server -----------------------------------------------------------------------


async def _bare_server(port: int, cert: Path, key: Path, ca: Path) -> asyncio.Server:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(cert), str(key))
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.decode("latin-1").split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                await reader.readexactly(length)
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", port, ssl=context, backlog=4096)


async def _bare(
    cert: Path, key: Path, ca: Path, server_ca: Path, identity: Identity, connections: int, requests: int
) -> dict[str, object]:
    port = free_port()
    server = await _bare_server(port, cert, key, ca)
    context = _client_context(server_ca, identity)
    loop = asyncio.get_running_loop()
    handshake_and_request: list[float] = []
    kept_alive: list[float] = []
    request = _request("127.0.0.1", "/")
    began = loop.time()
    for _ in range(connections):
        start = loop.time()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
        )
        writer.write(request)
        await _read_response(reader)
        handshake_and_request.append(loop.time() - start)
        writer.close()
    handshake_rate = connections / (loop.time() - began)
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
    )
    for _ in range(requests):
        start = loop.time()
        writer.write(request)
        await _read_response(reader)
        kept_alive.append(loop.time() - start)
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.2)  # the handler sees the end of the stream and returns before the server closes
    server.close()
    await server.wait_closed()
    return {
        "handshake_plus_request": latency_summary(handshake_and_request),
        "handshakes_per_second": round(handshake_rate, 1),
        "kept_alive_request": latency_summary(kept_alive),
    }


# --- (b) the platform ------------------------------------------------------------------------------


def _identities(home: Path, count: int, out: Path) -> list[Identity]:
    """Registers ``count`` agents through the registration service (tokens, CSRs, the agent CA)."""
    os.environ["SSLCLM_HOME"] = str(home)
    from sslclm.agents import service
    from sslclm.agents.ca import load_agent_ca
    from sslclm.audit.service import AuditContext
    from sslclm.core.config import Settings
    from sslclm.core.platform import Platform
    from sslclm.pki.identity import new_identity_request
    from sslclm.protocol import AgentCapabilities, RegisterRequest

    platform = Platform.open(Settings())
    ca = load_agent_ca(platform)
    identities = []
    with platform.sessions() as session:
        for n in range(count):
            now = platform.clock()
            token = service.create_token(
                session,
                AuditContext(actor="bench"),
                labels=[],
                description="",
                ttl=timedelta(hours=1),
                now=now,
            )
            key_pem, csr = new_identity_request(f"bench-{n}")
            caps = AgentCapabilities(job_kinds=["discover-filesystem"])
            body = RegisterRequest(token=token.secret, name=f"bench-{n}", csr_pem=csr, capabilities=caps)
            answer = service.register(session, ca, body, address="127.0.0.1", server_ca_pem="", now=now)
            cert, key = out / f"{n}.pem", out / f"{n}.key"
            cert.write_text(answer.certificate_pem)
            key.write_bytes(key_pem)
            key.chmod(0o600)
            identities.append(Identity(cert, key))
        session.commit()
    platform.close()
    return identities


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=5000)
    parser.add_argument("--identities", type=int, default=500)
    parser.add_argument("--interval", type=float, default=30.0)
    parser.add_argument("--duration", type=float, default=120.0, help="Measured seconds, after the warm-up")
    parser.add_argument(
        "--warmup",
        type=float,
        default=90.0,
        help="Seconds for the fleet to connect (handshakes), not measured",
    )
    parser.add_argument("--generators", type=int, default=4, help="Load-generator processes")
    parser.add_argument("--bare-connections", type=int, default=500)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    _raise_fd_limit()
    with tempfile.TemporaryDirectory(prefix="sslclm-bench-agents-") as scratch:
        base = Path(scratch)
        home = base / "home"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SSLCLM_")}
        env.update(
            SSLCLM_HOME=str(home),
            SSLCLM_ADMIN_PASSWORD="bench admin passphrase 1234",
            SSLCLM_LOG_LEVEL="warning",
        )
        env["SSLCLM_AGENT_HEARTBEAT_SECONDS"] = str(int(args.interval))
        if args.database_url:
            env["SSLCLM_DATABASE_URL"] = args.database_url
        port, agent_port = free_port(), free_port()
        with (base / "serve.log").open("wb") as log:
            server = subprocess.Popen(
                [
                    str(SSLCLM),
                    "serve",
                    "--port",
                    str(port),
                    "--agent-port",
                    str(agent_port),
                    "--no-worker",
                    "--log-level",
                    "warning",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 180
            while not (home / "tls" / "agent-ca.pem").exists() or not _listening(agent_port):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"serve did not start:\n{(base / 'serve.log').read_text()}")
                time.sleep(0.3)
            if args.database_url:
                os.environ["SSLCLM_DATABASE_URL"] = args.database_url
            ids_dir = base / "identities"
            ids_dir.mkdir(mode=0o700)
            started = time.perf_counter()
            identities = _identities(home, args.identities, ids_dir)
            issue_seconds = time.perf_counter() - started
            tls = home / "tls"
            bare = asyncio.run(
                _bare(
                    tls / "server.pem",
                    tls / "server.key",
                    tls / "agent-ca.pem",
                    tls / "internal-ca.pem",
                    identities[0],
                    args.bare_connections,
                    2000,
                )
            )
            fleet = _run_fleet(agent_port, tls / "internal-ca.pem", identities, args, server.pid)
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
    report = {
        "agents": args.agents,
        "generators": args.generators,
        "identities": args.identities,
        "identities_issued_per_second": round(args.identities / issue_seconds, 1),
        "interval_s": args.interval,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "heartbeats": len(fleet.latencies),
        "heartbeats_per_second": round(len(fleet.latencies) / args.duration, 1),
        "errors": fleet.errors,
        "server_cpu_ms_per_heartbeat": round(
            fleet.server_cpu_seconds * 1000 / max(len(fleet.latencies), 1), 2
        ),
        "server_cpu_share_of_one_core": round(fleet.server_cpu_seconds / args.duration, 2),
        "heartbeat_latency": latency_summary(fleet.latencies),
        "platform_handshake": latency_summary(fleet.handshakes),
        "bare_tls": bare,
    }
    report["machine"] = machine_info()
    WORK_DIR.mkdir(exist_ok=True)
    (WORK_DIR / "results-agents.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


if __name__ == "__main__":
    main()
