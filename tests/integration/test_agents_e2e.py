"""Agents end to end: a real ``sslclm serve`` with its agent listener and three real agent processes,
all over real TLS on loopback (mutual TLS for everything after registration)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sslclm.pki import create_ca, issue_server_certificate
from sslclm.pki.export import certificate_to_pem
from sslclm.pki.keys import private_key_to_pem

SSLCLM = Path(sys.executable).with_name("sslclm")
ADMIN_PASSWORD = "a long and sturdy admin passphrase"
API = "/api/v1"

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def env_for(home: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SSLCLM_")}
    env.update(
        SSLCLM_HOME=str(home),
        SSLCLM_ADMIN_PASSWORD=ADMIN_PASSWORD,
        SSLCLM_AGENT_HEARTBEAT_SECONDS="1",
    )
    return env


@dataclass
class Stack:
    tmp: Path
    home: Path
    port: int = 0
    agent_port: int = 0
    server: subprocess.Popen[bytes] | None = None
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_token: str = ""

    @property
    def agent_url(self) -> str:
        return f"https://127.0.0.1:{self.agent_port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(SSLCLM), *args], env=env_for(self.home), capture_output=True, text=True, timeout=120
        )
        if check:
            assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
        return done

    def start_server(self) -> None:
        with (self.tmp / "serve.out").open("ab") as out:
            self.server = subprocess.Popen(
                [str(SSLCLM), "serve", "--port", str(self.port), "--agent-port", str(self.agent_port)],
                env=env_for(self.home),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        for port in (self.port, self.agent_port):
            wait_for(lambda port=port: _listening(port), 120, f"port {port}")

    def stop_server(self, sig: int = signal.SIGINT) -> None:
        assert self.server is not None
        self.server.send_signal(sig)
        self.server.wait(timeout=60)

    @property
    def ca_file(self) -> Path:
        return self.home / "tls" / "internal-ca.pem"

    def ca_fingerprint(self) -> str:
        pem = ssl.PEM_cert_to_DER_cert(self.ca_file.read_text())
        return hashlib.sha256(pem).hexdigest()

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"https://127.0.0.1:{self.port}{API}",
            verify=ssl.create_default_context(cafile=str(self.ca_file)),
            headers={"Authorization": f"Bearer {self.api_token}"},
            timeout=30,
        )

    def token(self, *labels: str, expires_in: str = "1h") -> str:
        args = ["agents", "token", "create", "--expires-in", expires_in]
        for label in labels:
            args += ["--label", label]
        return self.cli(*args).stdout.strip()

    def agent_dir(self, name: str) -> Path:
        return self.tmp / "agents" / name

    def configure_agent(self, name: str) -> Path:
        base = self.agent_dir(name)
        (base / "certs").mkdir(parents=True, exist_ok=True)
        (base / "store").mkdir(exist_ok=True)
        config = {
            "name": name,
            "state_dir": str(base / "state"),
            "discovery_paths": [str(base / "certs")],
            "stores": {"web": {"directory": str(base / "store")}},
            "poll_seconds": 2,
        }
        path = base / "agent.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def register(
        self, name: str, token: str, *labels: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        config = self.configure_agent(name)
        args = ["agent", "register", "--config", str(config), "--server", self.agent_url, "--token", token]
        args += ["--ca-fingerprint", self.ca_fingerprint()]
        for label in labels:
            args += ["--label", label]
        return self.cli(*args, check=check)

    def run_agent(self, name: str) -> subprocess.Popen[bytes]:
        with (self.agent_dir(name) / "agent.log").open("ab") as log:
            process = subprocess.Popen(
                [str(SSLCLM), "agent", "run", "--config", str(self.agent_dir(name) / "agent.yaml")],
                env=env_for(self.home),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.agents[name] = process
        return process

    def agent_log(self, name: str) -> str:
        return (self.agent_dir(name) / "agent.log").read_text()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _api_token(stack: Stack) -> str:
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    with httpx.Client(base_url=f"https://127.0.0.1:{stack.port}{API}", verify=context) as client:
        login = client.post("/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        assert login.status_code == 200, login.text
        csrf = login.json()["csrf_token"]
        created = client.post("/tokens", json={"name": "agents test"}, headers={"X-CSRF-Token": csrf})
        assert created.status_code == 201, created.text
        return str(created.json()["token"])


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp=tmp_path, home=tmp_path / "home", port=free_port(), agent_port=free_port())
    stack.start_server()
    stack.api_token = _api_token(stack)
    yield stack
    for process in stack.agents.values():
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
    if stack.server is not None and stack.server.poll() is None:
        stack.stop_server()


def _agents(stack: Stack) -> dict[str, dict[str, Any]]:
    with stack.api() as api:
        response = api.get("/agents")
        assert response.status_code == 200, response.text
        return {row["name"]: row for row in response.json()}


def _agent_job(stack: Stack, name: str, job_id: int) -> dict[str, Any]:
    with stack.api() as api:
        rows = api.get(f"/agents/{name}/jobs").json()
    return next(row for row in rows if row["id"] == job_id)


def _write_certificate(directory: Path, name: str) -> str:
    key, ca = create_ca(f"test CA {name}")
    _, cert = issue_server_certificate(key, ca, hostnames=[f"{name}.example.test"])
    (directory / f"{name}.pem").write_bytes(certificate_to_pem(cert))
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(certificate_to_pem(cert).decode())).hexdigest()


def test_three_agents_register_work_and_are_held_to_their_identity(stack: Stack, tmp_path: Path) -> None:
    names = ["agent-a", "agent-b", "agent-c"]
    for name in names:
        assert stack.register(name, stack.token("web"), "web").returncode == 0
        state = stack.agent_dir(name) / "state" / "identity"
        assert oct(state.stat().st_mode & 0o777) == "0o700"
        assert oct((state / "key.pem").stat().st_mode & 0o777) == "0o600"
        stack.run_agent(name)
    agents = wait_for(
        lambda: (
            (rows := _agents(stack))
            and all(rows.get(n, {}).get("status") == "online" for n in names)
            and rows
        ),
        what="three agents online",
    )
    assert all(agents[n]["last_seen_at"] for n in names)
    assert agents["agent-a"]["capabilities"]["job_kinds"]
    assert agents["agent-a"]["address"] == "127.0.0.1"

    # Filesystem discovery on agent-a's host lands in the inventory, sightings naming the agent.
    fingerprint = _write_certificate(stack.agent_dir("agent-a") / "certs", "found")
    with stack.api() as api:
        queued = api.post("/agents/agent-a/discover", json={})
        assert queued.status_code == 202, queued.text
        job_id = queued.json()["id"]
    done = wait_for(
        lambda: (row := _agent_job(stack, "agent-a", job_id))["status"] in ("succeeded", "failed") and row,
        what="discovery job",
    )
    assert done["status"] == "succeeded", done
    with stack.api() as api:
        cert = api.get(f"/certificates/{fingerprint}")
        assert cert.status_code == 200, cert.text
        sightings = api.get("/sightings", params={"certificate_id": cert.json()["id"]}).json()
    text = str(sightings)
    assert "agent-a:" in text and "agent-b" not in text

    # A PEM deployment to agent-b: the key is made on agent-b, only the CSR reaches the server.
    with stack.api() as api:
        assert (
            api.post("/ca-connections", json={"name": "internal", "type": "local", "config": {}}).status_code
            == 201
        )
        profile = {"name": "web", "ca_connection": "internal", "validity_days": 30}
        assert api.post("/profiles", json=profile).status_code == 201
        managed = api.post(
            "/managed-certificates", json={"dns_names": ["www.example.test"], "profile": "web"}
        )
        assert managed.status_code == 202, managed.text
        managed_id = managed.json()["id"]
        enroll = api.post(
            "/agents/agent-b/enroll",
            json={"managed_certificate_id": managed_id, "store": "web", "alias": "www"},
        )
        assert enroll.status_code == 202, enroll.text
        job = enroll.json()["job_id"]
        finished = wait_for(
            lambda: (row := api.get(f"/jobs/{job}").json())["status"] in ("succeeded", "failed") and row,
            what="agent enrollment",
        )
    assert finished["status"] == "succeeded", finished
    store = stack.agent_dir("agent-b") / "store"
    assert (store / "www.crt").exists() and (store / "www.key").exists()
    assert oct((store / "www.key").stat().st_mode & 0o777) == "0o600"
    assert not (stack.agent_dir("agent-a") / "store" / "www.crt").exists()

    # An agent asking for another agent's job is refused.
    with _mtls(stack, "agent-c") as client:
        answer = client.get(f"/agent/v1/jobs/{job_id}")
    assert answer.status_code == 403, answer.text

    # A client certificate from another CA does not even complete the handshake.
    with _foreign_client(stack, tmp_path) as intruder, pytest.raises((ssl.SSLError, httpx.TransportError)):
        intruder.post("/agent/v1/heartbeat", json={})

    # Revoked: its next call is refused and the agent stops with an error.
    stack.cli("agents", "revoke", "agent-c")
    assert stack.agents["agent-c"].wait(timeout=30) != 0
    assert "revoked" in stack.agent_log("agent-c")
    with _mtls(stack, "agent-c") as client:
        assert client.post("/agent/v1/heartbeat", json={}).status_code == 403

    # Killed: it goes offline after missed heartbeats.
    stack.agents["agent-a"].kill()
    wait_for(lambda: _agents(stack)["agent-a"]["status"] == "offline", 30, "agent-a offline")
    assert _agents(stack)["agent-b"]["status"] == "online"


def _mtls(stack: Stack, name: str) -> httpx.Client:
    identity = stack.agent_dir(name) / "state" / "identity"
    context = ssl.create_default_context(cafile=str(identity / "server-ca.pem"))
    context.load_cert_chain(str(identity / "cert.pem"), str(identity / "key.pem"))
    return httpx.Client(base_url=stack.agent_url, verify=context, timeout=30)


def _foreign_client(stack: Stack, tmp_path: Path) -> httpx.Client:
    ca_key, ca = create_ca("someone else's CA")
    key, cert = issue_server_certificate(ca_key, ca, hostnames=["intruder.example.test"])
    (tmp_path / "intruder.pem").write_bytes(certificate_to_pem(cert))
    (tmp_path / "intruder.key").write_bytes(private_key_to_pem(key))
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    context.load_cert_chain(str(tmp_path / "intruder.pem"), str(tmp_path / "intruder.key"))
    return httpx.Client(base_url=stack.agent_url, verify=context, timeout=30)


def test_tokens_are_one_time_and_expire(stack: Stack) -> None:
    token = stack.token("web")
    assert stack.register("first", token, "web").returncode == 0
    replay = stack.register("second", token, "web", check=False)
    assert replay.returncode == 1 and "registration token is used" in replay.stderr
    expired = stack.token(expires_in="1s")
    time.sleep(1.5)
    late = stack.register("third", expired, check=False)
    assert late.returncode == 1 and "expired" in late.stderr
    label = stack.register("fourth", stack.token("web"), "db", check=False)
    assert label.returncode == 1 and "does not allow the label" in label.stderr
    wrong_pin = stack.cli(
        "agent",
        "register",
        "--config",
        str(stack.configure_agent("fifth")),
        "--server",
        stack.agent_url,
        "--token",
        stack.token(),
        "--ca-fingerprint",
        "00" * 32,
        check=False,
    )
    assert wrong_pin.returncode == 1 and "refusing to send the token" in wrong_pin.stderr
    assert set(_agents(stack)) == {"first"}


def test_identity_with_loose_permissions_is_refused(stack: Stack) -> None:
    assert stack.register("loose", stack.token()).returncode == 0
    key = stack.agent_dir("loose") / "state" / "identity" / "key.pem"
    key.chmod(0o644)
    done = stack.cli("agent", "run", "--config", str(stack.agent_dir("loose") / "agent.yaml"), check=False)
    assert done.returncode == 1 and "must be 0600" in done.stderr


def test_a_result_finished_while_the_server_is_down_arrives_exactly_once(stack: Stack) -> None:
    assert stack.register("steady", stack.token()).returncode == 0
    stack.run_agent("steady")
    wait_for(lambda: _agents(stack).get("steady", {}).get("status") == "online", what="online")
    certs = stack.agent_dir("steady") / "certs"
    # Enough files that the walk outlasts the server: it is killed while the agent works.
    _write_certificate(certs, "c0")
    pem = (certs / "c0.pem").read_bytes()
    for n in range(1, 4000):
        (certs / f"c{n}.pem").write_bytes(pem)
    with stack.api() as api:
        job_id = api.post("/agents/steady/discover", json={}).json()["id"]
        wait_for(lambda: _agent_job(stack, "steady", job_id)["status"] == "running", 60, "the job taken")
    stack.stop_server(signal.SIGKILL)
    results = stack.agent_dir("steady") / "state" / "results"
    wait_for(lambda: list(results.glob(f"{job_id}-*.json")), 120, "the result spooled on disk")
    stack.start_server()
    wait_for(lambda: not list(results.glob("*.json")), 90, "the result uploaded")
    row = _agent_job(stack, "steady", job_id)
    assert row["status"] == "succeeded" and row["attempt"] == 1
    with stack.api() as api:
        items = api.get("/audit/events", params={"action": "agent.job-finished"}).json()["items"]
    assert len([e for e in items if str(e.get("target_id")) == str(job_id)]) == 1
