"""moto's server mode in a subprocess: AWS APIs over real HTTP on loopback, for the AWS store tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

REGION = "us-east-1"
# moto accepts any key unless authentication is switched on; these stand for a configured key pair.
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def moto_server(log: Path, *, authenticate: bool = False, pids: list[int] | None = None) -> Iterator[str]:
    """Runs ``moto_server`` on a free loopback port and yields its endpoint URL.

    With ``authenticate`` the server checks every request's credentials against its (empty) IAM, so
    any key is refused as AWS refuses an unknown one. ``pids`` receives the server's process id (a
    benchmark reads its CPU time).
    """
    port = free_port()
    env = {**os.environ}
    if authenticate:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        if pids is not None:
            pids.append(process.pid)
        try:
            deadline = time.monotonic() + 60
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"moto_server exited with {process.returncode}: {log.read_text()[-2000:]}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/moto-api/", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not answer within 60 s")
                time.sleep(0.1)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def reset(url: str) -> None:
    """Forgets everything the server holds (moto's own management API)."""
    httpx.post(f"{url}/moto-api/reset", timeout=10).raise_for_status()


def store_config(url: str, **extra: object) -> dict[str, object]:
    return {
        "region": REGION,
        "endpoint_url": url,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        **extra,
    }
