"""Shared fixtures: a fresh platform on SQLite and, when reachable, on PostgreSQL.

PostgreSQL tests run against ``SSLCLM_TEST_DATABASE_URL`` (default: the local ``test`` database).
With ``SSLCLM_REQUIRE_POSTGRES=1`` an unreachable server fails the run instead of skipping it.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from sslclm.api.app import create_app
from sslclm.audit.service import AuditContext
from sslclm.auth import service as auth_service
from sslclm.auth.secrets import use_password_hasher
from sslclm.core.config import Settings
from sslclm.core.db import create_db_engine, session_scope
from sslclm.core.migrate import upgrade_database
from sslclm.core.platform import Platform

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
PG_URL = os.environ.get("SSLCLM_TEST_DATABASE_URL", DEFAULT_PG_URL)
REQUIRE_PG = os.environ.get("SSLCLM_REQUIRE_POSTGRES") == "1"
TEST_PASSWORD = "correct horse battery staple"


def _postgres_reason() -> str | None:
    try:
        engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"PostgreSQL at {make_url(PG_URL).render_as_string()} unreachable: {type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session", autouse=True)
def _cheap_password_hashing() -> None:
    # Production argon2 costs ~64 MB and tens of milliseconds per hash; tests create hundreds of users.
    use_password_hasher(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    reason = _postgres_reason()
    if reason is not None:
        if REQUIRE_PG:
            pytest.fail(f"SSLCLM_REQUIRE_POSTGRES=1 but {reason}")
        pytest.skip(reason)  # no server here: these cases run wherever one is reachable
    return PG_URL


@pytest.fixture(scope="session")
def postgres_template(postgres_admin_url: str) -> Iterator[str]:
    """A database migrated once per run; each test gets a copy (CREATE DATABASE ... TEMPLATE)."""
    name = f"sslclm_tmpl_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_db_engine(
        make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    )
    try:
        upgrade_database(engine)
    finally:
        engine.dispose()
    try:
        yield name
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url(postgres_admin_url: str, postgres_template: str) -> Iterator[str]:
    """A fresh database at the current schema, with no rows, dropped afterwards."""
    name = f"sslclm_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"'))
    try:
        yield make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema at all, for tests of the migrations themselves."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    postgres_admin_url: str = request.getfixturevalue("postgres_admin_url")
    name = f"sslclm_e_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file migrated once per run; each test copies it."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    engine = create_db_engine(f"sqlite:///{path}")
    try:
        upgrade_database(engine)
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        target = tmp_path / "sslclm.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), target)
        return f"sqlite:///{target}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    home = tmp_path / "home"
    return Settings(
        home=home,
        database_url=database_url,
        master_key=base64.b64encode(secrets.token_bytes(32)).decode(),
        admin_password=TEST_PASSWORD,
    )


@pytest.fixture
def platform(settings: Settings) -> Iterator[Platform]:
    platform = Platform.open(settings)
    yield platform
    platform.close()


@dataclass
class ApiUser:
    username: str
    role: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def api_users(platform: Platform) -> dict[str, ApiUser]:
    """One user with a bearer token per role."""
    users: dict[str, ApiUser] = {}
    ctx = AuditContext(actor="test")
    with session_scope(platform.sessions) as session:
        for role in ("admin", "operator", "auditor", "viewer"):
            user = auth_service.create_user(session, ctx, f"{role}-user", TEST_PASSWORD, role)
            issued = auth_service.create_token(session, ctx, user, f"{role} token")
            users[role] = ApiUser(user.username, role, issued.secret)
    return users


@pytest.fixture
def client(platform: Platform) -> Iterator[TestClient]:
    with TestClient(create_app(platform=platform), base_url="https://testserver") as test_client:
        yield test_client
