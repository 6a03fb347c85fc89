"""The admin commands (db, user, token, audit) through Typer's runner, on SQLite and PostgreSQL.

Each command opens the platform from SSLCLM_* variables exactly as the installed ``sslclm`` does;
the results are checked against the database and the real API.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.engine import make_url
from typer.testing import CliRunner, Result

from sslclm.api.app import create_app
from sslclm.audit.models import AuditEvent
from sslclm.auth.models import User
from sslclm.auth.secrets import verify_password
from sslclm.cli.main import build_app
from sslclm.core.config import Settings
from sslclm.core.platform import Platform

PASSWORD = "correct horse battery staple"


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

    def json(self, *args: str, input: str | None = None) -> object:
        return json.loads(self.ok(*args, "--output", "json", input=input).stdout)

    def platform(self) -> Platform:
        return Platform.open(
            Settings(
                home=Path(self.env["SSLCLM_HOME"]),
                database_url=self.env["SSLCLM_DATABASE_URL"],
                master_key=self.env["SSLCLM_MASTER_KEY"],
            )
        )


@pytest.fixture
def cli(tmp_path: Path, database_url: str) -> Cli:
    return Cli(
        {
            "SSLCLM_HOME": str(tmp_path / "home"),
            "SSLCLM_DATABASE_URL": database_url,
            "SSLCLM_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        }
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all (the shared fixtures hand out migrated copies)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    admin_url: str = request.getfixturevalue("postgres_admin_url")
    name = f"sslclm_empty_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def assert_one_line_error(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


def test_db_upgrade_and_current(tmp_path: Path, empty_database_url: str) -> None:
    cli = Cli(
        {
            "SSLCLM_HOME": str(tmp_path / "home"),
            "SSLCLM_DATABASE_URL": empty_database_url,
            "SSLCLM_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        }
    )
    before = cli.json("db", "current")
    assert isinstance(before, dict)
    assert before["current"] is None and before["up_to_date"] is False
    assert "(head)" in cli.ok("db", "upgrade").stdout
    state = cli.json("db", "current")
    assert isinstance(state, dict)
    assert state["up_to_date"] is True and state["current"] == state["head"]
    assert "up to date" in cli.ok("db", "current").stdout
    assert "(head)" in cli.ok("db", "upgrade").stdout  # a second run is a no-op


def test_user_lifecycle(cli: Cli) -> None:
    created = cli.json(
        "user", "create", "alice", "--role", "operator", "--password-stdin", input=PASSWORD + "\n"
    )
    assert isinstance(created, dict) and created["role"] == "operator"
    # Interactive: the password is asked twice and never echoed.
    prompted = cli.ok("user", "create", "bob", "--role", "viewer", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert "created user 'bob' with role viewer" in prompted.stdout
    assert PASSWORD not in prompted.stdout

    users = cli.json("user", "list")
    assert isinstance(users, list)
    assert [(u["username"], u["role"], u["disabled"]) for u in users] == [
        ("alice", "operator", False),
        ("bob", "viewer", False),
    ]
    table = cli.ok("user", "list").stdout
    assert "alice" in table and "operator" in table

    new_password = "another long password"
    assert (
        "password changed" in cli.ok("user", "passwd", "alice", "--password-stdin", input=new_password).stdout
    )
    cli.ok("user", "disable", "bob")
    platform = cli.platform()
    try:
        with platform.sessions() as session:
            alice = session.execute(select(User).where(User.username == "alice")).scalar_one()
            assert verify_password(alice.password_hash, new_password)
            assert not verify_password(alice.password_hash, PASSWORD)
            assert session.execute(select(User.disabled).where(User.username == "bob")).scalar_one()
            actors = set(session.execute(select(AuditEvent.actor)).scalars())
            assert all(actor.startswith("cli:") for actor in actors)
    finally:
        platform.close()


def test_token_create_use_revoke(cli: Cli) -> None:
    cli.ok("user", "create", "ops", "--role", "operator", "--password-stdin", input=PASSWORD)
    plain = cli.ok("token", "create", "--user", "ops", "--name", "ci", "--expires-days", "7")
    assert "shown once" in plain.stdout
    issued = cli.json("token", "create", "--user", "ops", "--name", "reader", "--role", "viewer")
    assert isinstance(issued, dict)
    assert issued["role"] == "viewer" and issued["secret"].startswith("sslclm_")

    listed = cli.json("token", "list", "--user", "ops")
    assert isinstance(listed, list)
    assert [(t["name"], t["status"]) for t in listed] == [("ci", "active"), ("reader", "active")]
    assert all("secret" not in t for t in listed)
    assert listed[0]["expires_at"] is not None

    platform = cli.platform()
    try:
        headers = {"Authorization": f"Bearer {issued['secret']}"}
        with TestClient(create_app(platform=platform), base_url="https://testserver") as client:
            info = client.get("/api/v1/system/info", headers=headers)
            assert info.status_code == 200
            assert info.json()["counts"]["users"] == 1
            assert "revoked" in cli.ok("token", "revoke", str(issued["id"])).stdout
            client.app.state.token_cache.clear()  # type: ignore[attr-defined]
            assert client.get("/api/v1/system/info", headers=headers).status_code == 401
    finally:
        platform.close()
    assert "already revoked" in cli.ok("token", "revoke", str(issued["id"])).stdout
    statuses = {t["name"]: t["status"] for t in cli.json("token", "list")}  # type: ignore[union-attr]
    assert statuses == {"ci": "active", "reader": "revoked"}


def test_audit_verify_intact_then_tampered(cli: Cli) -> None:
    cli.ok("user", "create", "carol", "--role", "auditor", "--password-stdin", input=PASSWORD)
    cli.ok("user", "disable", "carol")
    assert cli.ok("audit", "verify").stdout.strip() == "audit log intact: 2 events"
    platform = cli.platform()
    try:
        # The attacker has direct database access and removes the append-only guard first.
        with platform.engine.begin() as connection:
            if connection.dialect.name == "sqlite":
                connection.execute(text("DROP TRIGGER audit_events_no_update"))
            else:
                connection.execute(text("SET LOCAL session_replication_role = replica"))
            first = connection.execute(select(AuditEvent.id).order_by(AuditEvent.id)).scalars().first()
            connection.execute(update(AuditEvent).where(AuditEvent.id == first).values(actor="someone-else"))
    finally:
        platform.close()
    broken = cli("audit", "verify")
    assert broken.exit_code == 1
    assert (
        broken.stdout.strip()
        == f"audit log BROKEN at event #{first}: event content does not match its hash (row altered)"
    )
    report = json.loads(cli("audit", "verify", "--output", "json").stdout)
    assert report["ok"] is False and report["broken_at_id"] == first


def test_bad_input_is_one_line_and_no_traceback(cli: Cli) -> None:
    assert_one_line_error(
        cli("user", "create", "dave", "--role", "superuser", "--password-stdin", input=PASSWORD),
        1,
        "unknown role 'superuser'",
        "admin, operator, auditor, viewer",
    )
    assert_one_line_error(
        cli("user", "create", "dave", "--role", "viewer", "--password-stdin", input="short"),
        1,
        "at least 10 characters",
    )
    cli.ok("user", "create", "dave", "--role", "viewer", "--password-stdin", input=PASSWORD)
    assert_one_line_error(
        cli("user", "create", "dave", "--role", "viewer", "--password-stdin", input=PASSWORD),
        1,
        "already exists",
    )
    assert_one_line_error(
        cli("user", "passwd", "nobody", "--password-stdin", input=PASSWORD), 1, "no user named"
    )
    assert_one_line_error(
        cli("token", "create", "--user", "dave", "--name", "x", "--role", "admin"),
        1,
        "more rights than its user",
    )
    assert_one_line_error(cli("token", "revoke", "999"), 1, "no API token with id 999")
    assert_one_line_error(cli("token", "revoke", "abc"), 2, "valid integer")
    assert_one_line_error(
        cli("user", "list", "--bogus"), 2, "No such option: --bogus", "sslclm user list --help"
    )
    assert_one_line_error(cli("user", "list", "--output", "yaml"), 2, "--output")
    assert_one_line_error(cli("frobnicate"), 2, "No such command")
    # Asking for help is not an error.
    assert "Usage" in cli.ok("user", "create", "--help").stdout
    assert cli.ok("--version").stdout.startswith("sslclm ")
