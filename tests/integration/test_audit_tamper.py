"""The audit table refuses UPDATE and DELETE, and tampering by someone who gets past that is detected.

The attacker is simulated with direct database access: on SQLite they drop the guard triggers, on
PostgreSQL they switch triggers off for their session as a superuser can. verify_chain must then
name the first event that no longer fits: an altered row itself, or the row after a removed one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from conftest import ApiUser
from sslclm.audit.models import AuditEvent
from sslclm.audit.service import _digest, verify_chain
from sslclm.core.migrate import alembic_config
from sslclm.core.platform import Platform


@contextmanager
def attacker(platform: Platform) -> Iterator[Connection]:
    with platform.engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            connection.execute(text("DROP TRIGGER audit_events_no_update"))
            connection.execute(text("DROP TRIGGER audit_events_no_delete"))
        else:
            connection.execute(text("SET LOCAL session_replication_role = replica"))
        yield connection


def verify(client: TestClient, api_users: dict[str, ApiUser]) -> dict[str, object]:
    response = client.get("/api/v1/audit/verify", headers=api_users["auditor"].headers)
    assert response.status_code == 200
    result: dict[str, object] = response.json()
    return result


def test_database_refuses_changes(api_users: dict[str, ApiUser], platform: Platform) -> None:
    for statement in (
        "UPDATE audit_events SET actor = 'someone else' WHERE id = 3",
        "UPDATE audit_events SET note = 'harmless?'",
        "DELETE FROM audit_events WHERE id = 3",
        "DELETE FROM audit_events",
    ):
        with (
            pytest.raises(DBAPIError, match="audit_events is append-only"),
            platform.engine.begin() as connection,
        ):
            connection.execute(text(statement))
    with platform.sessions() as session:
        result = verify_chain(session)
    assert result.ok
    assert result.checked == 8


def test_postgresql_refuses_truncate(api_users: dict[str, ApiUser], platform: Platform) -> None:
    if platform.engine.dialect.name != "postgresql":
        # SQLite has no TRUNCATE; its DELETE without WHERE is refused above.
        assert platform.engine.dialect.name == "sqlite"
        return
    with (
        pytest.raises(DBAPIError, match="audit_events is append-only"),
        platform.engine.begin() as connection,
    ):
        connection.execute(text("TRUNCATE audit_events"))


def test_altered_row_is_named(client: TestClient, api_users: dict[str, ApiUser], platform: Platform) -> None:
    assert verify(client, api_users)["ok"] is True
    with attacker(platform) as connection:
        connection.execute(text("UPDATE audit_events SET actor = 'nobody' WHERE id = 3"))
    result = verify(client, api_users)
    assert result["ok"] is False
    assert result["broken_at_id"] == 3
    assert result["checked"] == 2
    assert "altered" in str(result["reason"])


def test_rehashed_row_breaks_the_next_link(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    # A careful attacker recomputes the altered row's hash (the algorithm is public), but the next
    # event still links to the old one.
    with platform.sessions() as session:
        event = session.get(AuditEvent, 4)
        assert event is not None
        event.actor = "nobody"
        forged = _digest(event.prev_hash, event)
        session.rollback()
    with attacker(platform) as connection:
        connection.execute(
            text("UPDATE audit_events SET actor = 'nobody', hash = :forged WHERE id = 4"), {"forged": forged}
        )
    result = verify(client, api_users)
    assert result["ok"] is False
    assert result["broken_at_id"] == 5
    assert "removed or reordered" in str(result["reason"])


def test_deleted_row_names_the_next(
    client: TestClient, api_users: dict[str, ApiUser], platform: Platform
) -> None:
    with attacker(platform) as connection:
        connection.execute(text("DELETE FROM audit_events WHERE id = 5"))
    result = verify(client, api_users)
    assert result["ok"] is False
    assert result["broken_at_id"] == 6
    assert result["checked"] == 4
    assert "removed" in str(result["reason"])


def test_deleted_tail_needs_an_outside_anchor(api_users: dict[str, ApiUser], platform: Platform) -> None:
    """Dropping the newest events leaves a valid shorter chain: only the count (or an exported head
    hash) reveals it, which is why ``checked`` is reported."""
    with platform.sessions() as session:
        before = verify_chain(session).checked
    with attacker(platform) as connection:
        connection.execute(text("DELETE FROM audit_events WHERE id = (SELECT MAX(id) FROM audit_events)"))
    with platform.sessions() as session:
        after = verify_chain(session)
    assert after.ok
    assert after.checked == before - 1


def test_migration_round_trip_keeps_the_guards(platform: Platform) -> None:
    from alembic import command

    with platform.engine.begin() as connection:
        config = alembic_config(platform.engine)
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
        command.upgrade(config, "head")
    with (
        pytest.raises(DBAPIError, match="audit_events is append-only"),
        platform.engine.begin() as connection,
    ):
        connection.execute(
            text(
                "INSERT INTO audit_events (occurred_at, actor, action, target_type, summary, prev_hash, hash)"
                " VALUES (CURRENT_TIMESTAMP, 'a', 'b', 'c', '{}', :p, :h)"
            ),
            {"p": "0" * 64, "h": "1" * 64},
        )
        connection.execute(text("DELETE FROM audit_events"))
