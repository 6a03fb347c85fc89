"""Pooled PostgreSQL connections: pinged only after sitting idle, replaced when the server dropped them."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from sslclm.core import db


@pytest.fixture
def engine(postgres_url: str) -> Iterator[Engine]:
    engine = db.create_db_engine(postgres_url, pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(engine: Engine, pid: int) -> None:
    # From a connection of its own, outside the pool under test.
    admin = db.create_db_engine(engine.url.render_as_string(hide_password=False))
    try:
        with admin.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            other.commit()
    finally:
        admin.dispose()


def test_a_connection_dropped_while_idle_is_replaced_before_use(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.05)
    first = _backend_pid(engine)
    _terminate(engine, first)
    time.sleep(0.1)
    assert _backend_pid(engine) != first  # pinged, found dead, replaced: no error reaches the caller


def test_a_connection_handed_back_moments_ago_is_not_pinged(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 3600.0)
    pings: list[object] = []
    original = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping", lambda conn: pings.append(conn) or original(conn))
    first = _backend_pid(engine)
    assert _backend_pid(engine) == first
    assert pings == []
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)
    assert _backend_pid(engine) == first
    assert len(pings) == 1
