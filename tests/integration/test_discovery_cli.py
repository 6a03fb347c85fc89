"""``sslclm scan`` end to end: the installed command in a subprocess, no server, a real local database."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from sslclm.core.config import Settings
from sslclm.core.platform import Platform
from sslclm.discovery.models import Endpoint, Scan
from sslclm.inventory.models import Certificate
from sslclm.pki import compute_fingerprint
from support.tls_threads import ServerThread
from support.tls_zoo import Pki, free_port, issue, server_context, write_identity

SSLCLM = str(Path(sys.executable).parent / "sslclm")


@pytest.fixture
def env(tmp_path: Path, database_url: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SSLCLM_HOME": str(tmp_path / "home"),
        "SSLCLM_DATABASE_URL": database_url,
        "SSLCLM_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    }


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SSLCLM_HOME": str(tmp_path / "home"),
        "SSLCLM_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    }


@pytest.fixture
def servers() -> Iterator[ServerThread]:
    with ServerThread() as thread:
        yield thread


def sslclm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SSLCLM, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def open_platform(env: dict[str, str]) -> Platform:
    return Platform.open(
        Settings(
            home=Path(env["SSLCLM_HOME"]),
            database_url=env["SSLCLM_DATABASE_URL"],
            master_key=env["SSLCLM_MASTER_KEY"],
        )
    )


def test_scan_command_records_into_the_local_inventory(
    env: dict[str, str], servers: ServerThread, tmp_path: Path
) -> None:
    pki = Pki.create("Cli")
    leaf = pki.leaf("127.0.0.1", "www.cli.test")
    good = servers.serve(
        ssl_context=server_context(*write_identity(tmp_path, "good", leaf, [pki.intermediate]))
    )
    odd = issue("odd.cli.test", names=["odd.cli.test"])
    strange = servers.serve(ssl_context=server_context(*write_identity(tmp_path, "odd", odd)))
    closed = free_port()
    bundle = tmp_path / "root.pem"
    bundle.write_bytes(pki.root.pem)
    ports = f"{good.port},{strange.port},{closed}"

    done = sslclm(env, "scan", "127.0.0.1", "-p", ports, "--ca-bundle", str(bundle), "--output", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["scan"]["status"] == "succeeded"
    assert (report["scan"]["total"], report["scan"]["found"], report["scan"]["failed"]) == (3, 2, 1)
    endpoints = {e["port"]: e for e in report["endpoints"]}
    assert set(endpoints) == {good.port, strange.port}
    assert (endpoints[good.port]["trusted"], endpoints[good.port]["hostname_match"]) == (True, True)
    assert endpoints[good.port]["certificate"]["fingerprint_sha256"] == compute_fingerprint(leaf.der)
    assert (endpoints[strange.port]["trust_error_kind"], endpoints[strange.port]["hostname_match"]) == (
        "self-signed",
        False,
    )

    # The table, with an extra SNI name: every endpoint, its problem, and what changed since.
    table = sslclm(env, "scan", "127.0.0.1", "-p", ports, "--sni", "www.cli.test", "--ca-bundle", str(bundle))
    assert table.returncode == 0, table.stderr
    assert f"127.0.0.1:{good.port} (www.cli.test)" in table.stdout
    assert "self-signed certificate" in table.stdout
    assert "scan 2 succeeded: 6 of 6 endpoints, 4 served a certificate (2 distinct), 2 failed" in table.stdout

    platform = open_platform(env)
    try:
        with platform.sessions() as session:
            assert session.execute(select(Scan.status).order_by(Scan.id)).scalars().all() == ["succeeded"] * 2
            assert len(session.execute(select(Endpoint)).scalars().all()) == 4
            fingerprints = set(session.execute(select(Certificate.fingerprint_sha256)).scalars())
    finally:
        platform.close()
    assert fingerprints == {compute_fingerprint(c.der) for c in (leaf, pki.intermediate, odd)}


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["10.0.0.0/33"], "invalid target '10.0.0.0/33'"),
        (["10.0.0.1", "-p", "0"], "invalid port '0'"),
        (["10.0.0.1", "--exclude", "999.1.1.1"], "999.1.1.1"),
        (["10.0.0.1", "--ca-bundle", "/nonexistent/root.pem"], "cannot read /nonexistent/root.pem"),
        (["10.0.0.1", "--no-system-roots"], "--no-system-roots needs at least one --ca-bundle"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(sqlite_env: dict[str, str], args: list[str], fragment: str) -> None:
    result = sslclm(sqlite_env, "scan", *args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert fragment in lines[0]
