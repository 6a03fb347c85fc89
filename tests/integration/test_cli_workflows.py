"""Issuance from the command line: ``sslclm ca``, ``profile``, ``enroll``, ``renew``, ``revoke``, ``adopt``,
``approvals`` and ``renewals forecast``, through Typer's runner and once as a real process."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner, Result

from sslclm.audit.service import AuditContext
from sslclm.cli.main import build_app
from sslclm.core.config import Settings
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.inventory.models import PrivateKey
from sslclm.jobs.registry import load_task_modules
from sslclm.jobs.worker import Worker
from sslclm.workflows import managed
from sslclm.workflows.models import Connection, ManagedCertificate
from support.certs import make_ca, make_leaf

SSLCLM = Path(sys.executable).with_name("sslclm")


class Cli:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(build_app(), list(args), env=self.env, input=input)

    def ok(self, *args: str, input: str | None = None) -> Result:
        result = self(*args, input=input)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result

    def json(self, *args: str, input: str | None = None) -> Any:
        return json.loads(self.ok(*args, "--output", "json", input=input).stdout)

    def fails(self, code: int, *args: str) -> str:
        result = self(*args)
        assert result.exit_code == code, (result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert lines and lines[-1].startswith("error: "), result.stderr
        assert "Traceback" not in result.stderr
        return lines[-1]

    def platform(self) -> Platform:
        return Platform.open(
            Settings(
                home=Path(self.env["SSLCLM_HOME"]),
                database_url=self.env["SSLCLM_DATABASE_URL"],
                master_key=self.env["SSLCLM_MASTER_KEY"],
            )
        )


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    # The commands are thin over the services, which run on both databases in their own tests.
    return Cli(
        {
            "SSLCLM_HOME": str(tmp_path / "home"),
            "SSLCLM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
            "SSLCLM_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            "SSLCLM_PUBLIC_URL": "https://clm.example.com",
        }
    )


@pytest.fixture
def web_profile(cli: Cli) -> None:
    cli.ok("ca", "add", "internal", "--type", "local", "--set", "max_validity_days=120")
    cli.ok(
        "profile", "create", "web", "--ca", "internal", "--allow", "*.example.com", "--validity-days", "30"
    )


def test_connection_profile_enroll_renew_revoke_and_forecast(cli: Cli, web_profile: None) -> None:
    [connection] = cli.json("ca", "list")
    assert connection["type"] == "local" and connection["config"]["max_validity_days"] == 120
    assert connection["config"]["crl_url"] == (
        f"https://clm.example.com/api/v1/ca-connections/{connection['id']}/crl"
    )
    check = cli.json("ca", "check", "internal")
    assert check["ok"] is True and "first use" in check["message"]
    profile = cli.json("profile", "show", "web")
    assert profile["ca_connection"] == "internal" and profile["allowed_names"] == ["*.example.com"]
    assert "web" in cli.ok("profile", "list").stdout

    enrolled = cli.json("enroll", "--profile", "web", "www.example.com", "api.example.com", "--wait")
    assert enrolled["job_status"] == "succeeded" and enrolled["status"] == "active"
    first = enrolled["certificate_id"]
    renewed = cli.json("renew", "www.example.com", "--wait")
    assert renewed["job_status"] == "succeeded" and renewed["certificate_id"] != first
    shown = cli.json("managed", "show", "www.example.com")
    assert [i["reason"] for i in shown["issuances"]] == ["enroll", "renew"]
    assert shown["dns_names"] == ["www.example.com", "api.example.com"]

    revoked = cli.json("revoke", "www.example.com", "--reason", "key-compromise", "--wait")
    assert revoked["job_status"] == "succeeded" and revoked["certificate_id"] == renewed["certificate_id"]
    cert = cli.json("certs", "show", str(renewed["certificate_id"]))
    assert cert["revocation_reason"] == "key-compromise"
    assert cli.json("managed", "show", "www.example.com")["status"] == "revoked"
    # The superseded certificate can still be revoked by id.
    assert (
        cli.json("revoke", f"cert:{first}", "--reason", "superseded", "--wait")["job_status"] == "succeeded"
    )

    plan = cli.json("renewals", "forecast", "--days", "30")
    assert plan["days"] == 30 and len(plan["per_day"]) == 31
    assert "total 0 in the next 90 days" in cli.ok("renewals", "forecast").stdout  # revoked: no renewal


def test_bad_input_is_one_line_and_a_nonzero_exit(cli: Cli, web_profile: None) -> None:
    assert "does not allow: evil.org" in cli.fails(1, "enroll", "--profile", "web", "evil.org")
    assert "no profile 'nope'" in cli.fails(1, "enroll", "--profile", "nope", "a.example.com")
    assert "config.max_validity_days" in cli.fails(
        1, "ca", "add", "other", "--type", "local", "--set", "max_validity_days=many"
    )
    assert "already exists" in cli.fails(1, "ca", "add", "internal", "--type", "local")
    assert "no ca-gateway type 'nosuch'" in cli.fails(1, "ca", "add", "x", "--type", "nosuch")
    assert "--set wants key=value" in cli.fails(1, "ca", "add", "y", "--type", "local", "--set", "oops")
    assert "not JSON" in cli.fails(1, "ca", "add", "z", "--type", "local", "--config", "{nope")
    cli.fails(2, "revoke", "www.example.com", "--reason", "bored")
    assert "no managed certificate" in cli.fails(1, "renew", "ghost.example.com")
    assert "key type must be one of" in cli.fails(
        1, "profile", "create", "p2", "--ca", "internal", "--key-type", "DSA-1024"
    )


def test_secrets_come_from_stdin_and_are_never_shown(cli: Cli) -> None:
    secret = "c2VjcmV0LWhtYWMta2V5LWZvci10ZXN0cw"
    added = cli.json(
        "ca",
        "add",
        "public-acme",
        "--type",
        "acme",
        "--set",
        "directory_url=https://acme.invalid/directory",
        "--set",
        "eab_kid=kid-1",
        "--set",
        "terms_of_service_agreed=true",
        "--secret",
        "eab_hmac_key",
        input=secret + "\n",
    )
    assert added["config"]["eab_hmac_key"] == "********"
    assert added["config"]["terms_of_service_agreed"] is True
    listing = cli.ok("ca", "list", "--output", "json").stdout
    assert secret not in listing
    platform = cli.platform()
    try:
        with platform.sessions() as session:
            row = session.execute(select(Connection).where(Connection.name == "public-acme")).scalar_one()
            assert row.sealed_secrets is not None and secret.encode() not in row.sealed_secrets
            assert "eab_hmac_key" not in row.config
    finally:
        platform.close()
    assert "no value given for secret" in cli.fails(
        1,
        "ca",
        "add",
        "second",
        "--type",
        "acme",
        "--set",
        "directory_url=https://a.invalid/d",
        "--secret",
        "x",
    )


def _run_worker(platform: Platform) -> None:
    load_task_modules()
    Worker(platform, concurrency=2, poll_interval=0.05).run_until_idle(timeout=60)


def test_approvals_need_someone_else(cli: Cli, web_profile: None) -> None:
    cli.ok("profile", "create", "guarded", "--ca", "internal", "--approval-required")
    # Own request: --wait stops when the job parks for a decision.
    own = cli.json("enroll", "--profile", "guarded", "own.example.com", "--wait")
    assert own["job_status"] == "waiting" and "approvals" in own["note"]
    platform = cli.platform()
    try:
        with session_scope(platform.sessions) as session:
            for name in ("pay.example.com", "shop.example.com"):
                data = managed.ManagedInput(dns_names=[name], profile="guarded")
                managed.create_managed(session, AuditContext(actor="alice"), platform, data)
        _run_worker(platform)
        pending = {a["managed_certificate"]: a for a in cli.json("approvals", "list")}
        assert set(pending) == {"own.example.com", "pay.example.com", "shop.example.com"}
        assert "someone other than its requester" in cli.fails(
            1, "approvals", "approve", str(pending["own.example.com"]["id"])
        )
        assert cli.json("approvals", "approve", str(pending["pay.example.com"]["id"]))["status"] == "approved"
        cli.fails(2, "approvals", "reject", str(pending["shop.example.com"]["id"]))  # a reason is required
        rejected = cli.json(
            "approvals", "reject", str(pending["shop.example.com"]["id"]), "--reason", "not our domain"
        )
        assert rejected["status"] == "rejected"
        _run_worker(platform)
        with platform.sessions() as session:
            states = dict(session.execute(select(ManagedCertificate.name, ManagedCertificate.status)).all())
            keys = session.execute(select(func.count()).select_from(PrivateKey)).scalar_one()
        assert states["pay.example.com"] == "active"
        assert states["shop.example.com"] == "failed"
        assert keys == 1  # the approved one's; nothing was generated for the others
    finally:
        platform.close()
    assert "not our domain" in cli.json("managed", "show", "shop.example.com")["status_message"]
    assert {a["status"] for a in cli.json("approvals", "list", "--status", "all")} == {
        "pending",
        "approved",
        "rejected",
    }


def test_adopt_a_discovered_certificate(cli: Cli, web_profile: None, tmp_path: Path) -> None:
    leaf = make_leaf(make_ca("Elsewhere CA"), "legacy.example.com", days=60)
    (tmp_path / "legacy.pem").write_bytes(leaf.pem)
    cli.ok("import", str(tmp_path / "legacy.pem"))
    adopted = cli.json("adopt", leaf.fingerprint, "--profile", "web")
    assert adopted["status"] == "active" and adopted["renew_at"] is not None
    assert "already managed" in cli.fails(1, "adopt", leaf.fingerprint, "--profile", "web")


def test_enroll_as_a_real_process(cli: Cli, web_profile: None) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SSLCLM_")}
    env.update(cli.env)
    done = subprocess.run(
        [str(SSLCLM), "enroll", "--profile", "web", "proc.example.com", "--wait", "--output", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["job_status"] == "succeeded" and outcome["fingerprint_sha256"]
    refused = subprocess.run(
        [str(SSLCLM), "enroll", "--profile", "web", "proc.example.org"],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: profile 'web' does not allow: proc.example.org (allowed: *.example.com)"
    ]
