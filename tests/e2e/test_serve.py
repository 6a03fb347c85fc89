"""``sslclm serve`` as an operator runs it: a real process, a real port, a real TLS handshake.

Trust is bootstrapped the way a client would do it: fetch /api/v1/system/ca.pem once, then verify
every later connection against that CA only (no system trust store, no verification switched off).
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

SSLCLM = Path(sys.executable).with_name("sslclm")
ADMIN_PASSWORD = "a long and sturdy admin passphrase"
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    stdout_file: Path
    stderr_file: Path

    @property
    def stdout(self) -> str:
        return self.stdout_file.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_file.read_text()

    def line(self, prefix: str) -> str:
        for line in self.stdout.splitlines():
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line starting with {prefix!r} in:\n{self.stdout}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _env(home: Path, admin_password: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SSLCLM_")}
    env["SSLCLM_HOME"] = str(home)
    if admin_password is not None:
        env["SSLCLM_ADMIN_PASSWORD"] = admin_password
    return env


def _wait_listening(server: Server) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(
                f"serve exited with {server.process.returncode}:\n{server.stdout}\n{server.stderr}"
            )
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"serve did not listen within {START_TIMEOUT}s:\n{server.stdout}\n{server.stderr}")


Start = Callable[..., Server]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    servers: list[Server] = []

    def _start(home: Path, *args: str, admin_password: str | None = ADMIN_PASSWORD) -> Server:
        port = free_port()
        run = len(servers)
        out, err = tmp_path / f"serve{run}.out", tmp_path / f"serve{run}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(
                [str(SSLCLM), "serve", "--port", str(port), *args],
                env=_env(home, admin_password),
                stdout=stdout,
                stderr=stderr,
                # A suite started in the background (`make test &`) ignores SIGINT, and a child
                # inherits that: the server gets Ctrl-C's default handling, as at a terminal.
                preexec_fn=_default_sigint,
            )
        server = Server(process, port, out, err)
        servers.append(server)
        _wait_listening(server)
        return server

    yield _start
    for server in servers:
        server.stop()


def fetch_ca(port: int, dest: Path) -> Path:
    """The one unverified request of a client's life: getting the CA to verify everything else with."""
    bootstrap = ssl.create_default_context()
    bootstrap.check_hostname = False
    bootstrap.verify_mode = ssl.CERT_NONE
    with httpx.Client(verify=bootstrap) as client:
        response = client.get(f"https://127.0.0.1:{port}/api/v1/system/ca.pem")
    assert response.status_code == 200
    dest.write_bytes(response.content)
    return dest


def handshake(port: int, ca_file: Path, server_hostname: str) -> dict[str, object]:
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname) as tls,
    ):
        peer = tls.getpeercert()
        assert peer is not None
        return {"version": tls.version(), "peer": peer}


def login(port: int, ca_file: Path, password: str) -> dict[str, object]:
    context = ssl.create_default_context(cafile=str(ca_file))
    with httpx.Client(base_url=f"https://localhost:{port}", verify=context) as client:
        response = client.post("/api/v1/auth/login", json={"username": "admin", "password": password})
        assert response.status_code == 200, response.text
        info = client.get("/api/v1/system/info")
        assert info.status_code == 200, info.text
        body: dict[str, object] = info.json()
        return body


def test_https_first_start_then_restart_on_the_same_home(start: Start, tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start(home)
    url = f"https://127.0.0.1:{server.port}"
    assert server.line("Web UI:") == f"Web UI:      {url}/ui/"
    assert server.line("API docs:") == f"API docs:    {url}/api/v1/docs"
    assert server.line("CA cert:").startswith(f"CA cert:     {url}/api/v1/system/ca.pem")
    assert (
        server.line("Admin:")
        == "Admin:       created user 'admin' with the password from SSLCLM_ADMIN_PASSWORD"
    )
    assert ADMIN_PASSWORD not in server.stdout + server.stderr
    assert server.line("Jobs:") == "Jobs:        job worker and scheduler in this process"

    ca_file = fetch_ca(server.port, tmp_path / "downloaded-ca.pem")
    assert ca_file.read_bytes() == (home / "tls" / "internal-ca.pem").read_bytes()
    for name in ("localhost", "127.0.0.1", "::1"):
        result = handshake(server.port, ca_file, name)
        assert result["version"] in {"TLSv1.2", "TLSv1.3"}
    with pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|doesn't match"):
        handshake(server.port, ca_file, "not-in-the-certificate.example")
    # The system trust store does not know the internal CA: trust comes only from ca.pem.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"), httpx.Client() as stranger:
        stranger.get(f"https://localhost:{server.port}/api/v1/health")

    info = login(server.port, ca_file, ADMIN_PASSWORD)
    assert info["database_dialect"] == "sqlite"
    first_counts = info["counts"]
    assert isinstance(first_counts, dict) and first_counts["users"] == 1
    server_pem = (home / "tls" / "server.pem").read_bytes()
    server.stop()
    # Ctrl-C: uvicorn shuts down cleanly, then the process reports the interrupt as shells expect.
    assert server.process.returncode == 128 + signal.SIGINT
    assert "error:" not in server.stderr and "Traceback" not in server.stderr

    again = start(home)
    assert "created" not in again.line("Admin:")
    assert "existing account" in again.line("Admin:")
    assert (home / "tls" / "server.pem").read_bytes() == server_pem  # still valid, names still covered
    handshake(again.port, ca_file, "localhost")  # the CA a client downloaded first still works
    info = login(again.port, ca_file, ADMIN_PASSWORD)
    counts = info["counts"]
    assert isinstance(counts, dict) and counts["users"] == 1


def test_generated_admin_password_is_shown_then_recalled(start: Start, tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start(home, admin_password=None)
    admin = server.line("Admin:")
    assert admin.startswith("Admin:       created user 'admin' with password: ")
    password = admin.rsplit(": ", 1)[1]
    password_file = home / "initial-admin-password"
    assert password_file.read_text().strip() == password
    assert password_file.stat().st_mode & 0o777 == 0o600
    ca_file = fetch_ca(server.port, tmp_path / "ca.pem")
    login(server.port, ca_file, password)
    server.stop()

    again = start(home, admin_password=None)
    assert again.line("Admin:") == f"Admin:       user 'admin', initial password: {password}"
    login(again.port, ca_file, password)
    again.stop()

    # Once the admin has a password of their own the reminder (and its file) are gone.
    changed = subprocess.run(
        [str(SSLCLM), "user", "passwd", "admin", "--password-stdin"],
        env=_env(home, None),
        input="the admin's own choice\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert changed.returncode == 0, changed.stderr
    assert not password_file.exists()
    third = start(home, admin_password=None)
    assert "existing account" in third.line("Admin:")
    login(third.port, ca_file, "the admin's own choice")


def test_plain_http_only_when_asked(start: Start, tmp_path: Path) -> None:
    server = start(tmp_path / "home", "--http", "--no-worker", "--no-scheduler")
    assert server.line("Web UI:") == f"Web UI:      http://127.0.0.1:{server.port}/ui/"
    assert "CA cert:" not in server.stdout
    assert server.line("Jobs:").startswith("Jobs:        none in this process")
    assert "warning: serving plain HTTP" in server.stderr
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
        assert client.get("/api/v1/health").json()["status"] == "ok"
        response = client.post("/api/v1/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
        assert response.status_code == 200
        # The session cookie is Secure, so a client keeps it only for HTTPS; send it by hand here.
        cookie = f"sslclm_session={response.cookies['sslclm_session']}"
        info = client.get("/api/v1/system/info", headers={"Cookie": cookie})
        assert info.status_code == 200, info.text
        assert info.json()["embedded_worker"] is False and info.json()["embedded_scheduler"] is False
    with (
        pytest.raises(ssl.SSLError),
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        ssl.create_default_context().wrap_socket(raw, server_hostname="localhost"),
    ):
        pass


def test_port_in_use_is_one_error_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [str(SSLCLM), "serve", "--port", str(port)],
            env=_env(tmp_path / "home", ADMIN_PASSWORD),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: cannot listen on 127.0.0.1:{port}: address already in use"
    assert done.stdout == ""
    assert not (tmp_path / "home").exists()  # refused before creating anything
