"""``sslclm db``: schema migrations."""

from __future__ import annotations

from typing import Any

import typer
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from sslclm.cli.common import OutputFormat, OutputOption, emit_mapping, load_settings
from sslclm.core.db import create_db_engine
from sslclm.core.migrate import alembic_config, upgrade_database

app = typer.Typer(help="Database schema: upgrade and inspect.", no_args_is_help=True)


def _state() -> dict[str, Any]:
    settings = load_settings()
    if settings.is_sqlite:
        settings.ensure_home()
    engine = create_db_engine(settings.resolved_database_url)
    try:
        head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
        return {
            "database": engine.url.render_as_string(hide_password=True),
            "dialect": engine.dialect.name,
            "current": current,
            "head": head,
            "up_to_date": current == head,
        }
    finally:
        engine.dispose()


@app.command("upgrade")
def upgrade(output: OutputOption = OutputFormat.TABLE) -> None:
    """Apply every pending migration (safe to run again; it does nothing when up to date)."""
    settings = load_settings()
    if settings.is_sqlite:
        settings.ensure_home()
    engine = create_db_engine(settings.resolved_database_url)
    try:
        upgrade_database(engine)
    finally:
        engine.dispose()
    state = _state()
    if output is OutputFormat.JSON:
        emit_mapping(output, state)
    else:
        typer.echo(f"database at revision {state['current']} (head) on {state['dialect']}")


@app.command("current")
def current(output: OutputOption = OutputFormat.TABLE) -> None:
    """Show the database's schema revision and whether migrations are pending."""
    state = _state()
    if output is OutputFormat.JSON:
        emit_mapping(output, state)
        return
    revision = state["current"] or "(empty database)"
    status = "up to date" if state["up_to_date"] else f"upgrade pending to {state['head']}"
    typer.echo(f"{revision}: {status} ({state['dialect']}, {state['database']})")
