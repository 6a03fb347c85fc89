"""The 0007 migration creates exactly what the agent models declare (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from sslclm.core.models import Base
from sslclm.core.platform import Platform

OURS = {"agents", "agent_tokens", "agent_jobs"}


def _table_of(diff: Any) -> str | None:
    item = diff[0] if isinstance(diff, list) else diff
    for part in item[1:] if isinstance(item, tuple) else ():
        table = getattr(part, "table", None)
        if table is not None:
            return str(table.name)
        name = part if isinstance(part, str) else getattr(part, "name", None)
        if name in OURS:
            return str(name)
    return None


def test_the_migration_matches_the_agent_models(platform: Platform) -> None:
    with platform.engine.connect() as connection:
        diffs = compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), Base.metadata
        )
    assert [d for d in diffs if _table_of(d) in OURS] == []
