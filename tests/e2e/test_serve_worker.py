"""``sslclm serve`` runs a job worker and the scheduler inside itself: enrolling through the running
server's API gets a certificate issued with no separate worker process; ``--no-worker`` turns it off."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

SSLCLM = Path(sys.executable).with_name("sslclm")
PASSWORD = "a long and sturdy admin passphrase"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Served:
    def __init__(self, home: Path, logs: Path, *args: str) -> None:
        self.port = free_port()
        env = {key: value for key, value in os.environ.items() if not key.startswith("SSLCLM_")}
        env.update(SSLCLM_HOME=str(home), SSLCLM_ADMIN_PASSWORD=PASSWORD)
        self.log = logs
        with logs.open("wb") as out:
            self.process = subprocess.Popen(
                [str(SSLCLM), "serve", "--http", "--port", str(self.port), *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        deadline = time.monotonic() + 120
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if self.client.get("/api/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.2)
        login = self.client.post("/api/v1/auth/login", json={"username": "admin", "password": PASSWORD})
        assert login.status_code == 200, login.text
        # The session cookie is marked Secure; over this plain-HTTP test listener it is sent by hand.
        self.client.headers["Cookie"] = f"sslclm_session={login.cookies['sslclm_session']}"
        self.client.headers["X-CSRF-Token"] = login.json()["csrf_token"]

    def stop(self) -> int:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


@pytest.fixture
def servers() -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for served in started:
        served.stop()


def _wait_for_job(served: Served, job_id: int, timeout: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, object] = served.client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_the_embedded_worker_issues_what_the_api_enrolls(servers: list[Served], tmp_path: Path) -> None:
    home = tmp_path / "home"
    served = Served(home, tmp_path / "serve.log")
    servers.append(served)
    api = served.client
    assert api.post("/api/v1/ca-connections", json={"name": "internal", "type": "local"}).status_code == 201
    assert api.post("/api/v1/profiles", json={"name": "web", "ca_connection": "internal"}).status_code == 201
    created = api.post(
        "/api/v1/managed-certificates", json={"dns_names": ["e2e.example.com"], "profile": "web"}
    )
    assert created.status_code == 202, created.text
    job = _wait_for_job(served, created.json()["job_id"], 120)
    assert job["status"] == "succeeded", job
    managed = api.get(f"/api/v1/managed-certificates/{created.json()['id']}").json()
    assert managed["status"] == "active" and managed["current_certificate_id"]
    # The embedded scheduler runs too: its renewal tick has been enqueued and run.
    ticks = api.get("/api/v1/jobs", params={"kind": "renewals.tick"}).json()["items"]
    assert ticks and ticks[0]["status"] in ("queued", "running", "succeeded")
    served.stop()
    # Shut down in order: the worker was stopped by the app's shutdown hook, not killed with it.
    assert "Application shutdown complete" in served.log.read_text()

    # Without the embedded worker the same request stays queued until some worker runs it.
    quiet = Served(home, tmp_path / "quiet.log", "--no-worker", "--no-scheduler")
    servers.append(quiet)
    second = quiet.client.post(
        "/api/v1/managed-certificates", json={"dns_names": ["later.example.com"], "profile": "web"}
    )
    assert second.status_code == 202, second.text
    time.sleep(3)
    assert quiet.client.get(f"/api/v1/jobs/{second.json()['job_id']}").json()["status"] == "queued"
