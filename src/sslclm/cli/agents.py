"""``sslclm agents`` (server side: agents and registration tokens) and ``sslclm agent`` (the agent).

The server-side commands import the database stack inside each command, so ``sslclm agent run`` on
a managed host loads only the agent's own modules.
"""

from __future__ import annotations

import logging
import signal
from datetime import timedelta
from typing import Annotated

import typer

from sslclm.errors import ConfigurationError, InvalidInputError

agents_app = typer.Typer(help="Registered agents and their registration tokens.", no_args_is_help=True)
token_app = typer.Typer(help="One-time registration tokens for new agents.", no_args_is_help=True)
agents_app.add_typer(token_app, name="token")
agent_app = typer.Typer(help="Run this host's agent: register it once, then run it.", no_args_is_help=True)

AGENT_COLUMNS = [
    ("id", "ID"),
    ("name", "Name"),
    ("status", "Status"),
    ("labels", "Labels"),
    ("hostname", "Host"),
    ("version", "Version"),
    ("last_seen_at", "Last seen (UTC)"),
]
TOKEN_COLUMNS = [
    ("id", "ID"),
    ("state", "State"),
    ("labels", "Labels"),
    ("description", "Description"),
    ("expires_at", "Expires (UTC)"),
    ("used_by_agent_id", "Agent"),
]
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    value, unit = text[:-1], text[-1:].lower()
    if unit not in UNITS or not value.isdigit() or int(value) <= 0:
        raise InvalidInputError(f"--expires-in {text!r}: use a positive number with s, m, h or d (e.g. 1h)")
    return timedelta(seconds=int(value) * UNITS[unit])


@agents_app.command("list")
def list_agents(
    status: Annotated[str | None, typer.Option("--status", help="online, offline or revoked")] = None,
    label: Annotated[str | None, typer.Option("--label", help="Only agents with this label")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """List the registered agents."""
    from sslclm.agents import service
    from sslclm.cli.common import OutputFormat, emit, opened_platform

    with opened_platform() as platform, platform.sessions() as session:
        rows = [service.describe(agent) for agent in service.list_agents(session, status=status, label=label)]
    emit(OutputFormat.JSON if json_output else OutputFormat.TABLE, rows, AGENT_COLUMNS, empty="no agents")


@agents_app.command("show")
def show_agent(
    agent: Annotated[str, typer.Argument(help="The agent's id or name")],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """One agent: status, capabilities, identity and its recent jobs."""
    from sslclm.agents import queue, service
    from sslclm.cli.common import OutputFormat, emit_mapping, opened_platform

    with opened_platform() as platform, platform.sessions() as session:
        row = service.get_agent(session, agent)
        record = service.describe(row)
        record["jobs"] = [
            queue.describe_job(job) for job in queue.list_jobs(session, agent_id=row.id, limit=20)
        ]
    emit_mapping(OutputFormat.JSON if json_output else OutputFormat.TABLE, record)


@agents_app.command("revoke")
def revoke_agent(agent: Annotated[str, typer.Argument(help="The agent's id or name")]) -> None:
    """Revoke an agent: its certificate is refused from its next call on; its queued jobs are cancelled."""
    from sslclm.agents import service
    from sslclm.cli.common import cli_context, opened_platform
    from sslclm.core.db import session_scope

    with opened_platform() as platform, session_scope(platform.sessions) as session:
        row = service.revoke_agent(session, cli_context(), agent, now=platform.clock())
        name = row.name
    typer.echo(f"agent '{name}' revoked")


@token_app.command("create")
def create_token(
    label: Annotated[
        list[str] | None, typer.Option("--label", help="A label the agent may carry (repeat)")
    ] = None,
    expires_in: Annotated[str, typer.Option("--expires-in", help="Lifetime, e.g. 30m, 24h, 7d")] = "24h",
    description: Annotated[str, typer.Option("--description", help="What the token is for")] = "",
) -> None:
    """Create a one-time registration token; it is shown once."""
    from sslclm.agents import service
    from sslclm.cli.common import cli_context, opened_platform
    from sslclm.core.db import session_scope

    ttl = parse_duration(expires_in)
    with opened_platform() as platform, session_scope(platform.sessions) as session:
        issued = service.create_token(
            session, cli_context(), labels=label or [], description=description, ttl=ttl, now=platform.clock()
        )
        expires = issued.row.expires_at.isoformat(timespec="seconds")
    typer.echo(issued.secret)
    typer.echo(f"one-time token, expires {expires}; it is not shown again", err=True)


@token_app.command("list")
def list_tokens(
    all_tokens: Annotated[bool, typer.Option("--all", help="Include used and revoked tokens")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON")] = False,
) -> None:
    """List registration tokens (never their secret)."""
    from sslclm.agents import service
    from sslclm.cli.common import OutputFormat, emit, opened_platform

    with opened_platform() as platform, platform.sessions() as session:
        now = platform.clock()
        rows = [
            {
                "id": token.id,
                "state": service.token_state(token, now),
                "labels": token.labels,
                "description": token.description,
                "expires_at": token.expires_at,
                "used_by_agent_id": token.used_by_agent_id,
            }
            for token in service.list_tokens(session, include_finished=all_tokens)
        ]
    emit(OutputFormat.JSON if json_output else OutputFormat.TABLE, rows, TOKEN_COLUMNS, empty="no tokens")


@token_app.command("revoke")
def revoke_token(token_id: Annotated[int, typer.Argument(min=1, help="The token's id")]) -> None:
    """Revoke a registration token that has not been used yet."""
    from sslclm.agents import service
    from sslclm.cli.common import cli_context, opened_platform
    from sslclm.core.db import session_scope

    with opened_platform() as platform, session_scope(platform.sessions) as session:
        service.revoke_token(session, cli_context(), token_id, now=platform.clock())
    typer.echo(f"token {token_id} revoked")


# --- the agent itself --------------------------------------------------------------------------------

ConfigOption = Annotated[
    str | None,
    typer.Option("--config", "-c", help="Configuration file (default /etc/sslclm-agent/agent.yaml)"),
]
StateOption = Annotated[
    str | None, typer.Option("--state-dir", help="Where the identity and results are kept")
]


@agent_app.command("register")
def agent_register(
    server: Annotated[
        str | None, typer.Option("--server", help="https://host:port of the agent listener")
    ] = None,
    token: Annotated[
        str, typer.Option("--token", help="The one-time registration token", prompt=True, hide_input=True)
    ] = "",
    ca_fingerprint: Annotated[
        str, typer.Option("--ca-fingerprint", help="SHA-256 fingerprint of the platform CA (pins the server)")
    ] = "",
    name: Annotated[str | None, typer.Option("--name", help="The agent's name (default: host name)")] = None,
    label: Annotated[list[str] | None, typer.Option("--label", help="A label (repeat)")] = None,
    config: ConfigOption = None,
    state_dir: StateOption = None,
) -> None:
    """Register this host: make a key here, send its CSR, keep the identity owner-only."""
    from sslclm.agent.config import load_config
    from sslclm.agent.runner import register

    if not ca_fingerprint:
        raise ConfigurationError(
            "--ca-fingerprint is required: it is how the agent knows the server is genuine"
        )
    settings = load_config(config, server=server, name=name, labels=label, state_dir=state_dir)
    answer = register(settings, token, ca_fingerprint)
    until = f"{answer.not_after:%Y-%m-%d %H:%M} UTC"
    typer.echo(f"registered as agent '{answer.name}' (id {answer.agent_id}); identity valid until {until}")


@agent_app.command("run")
def agent_run(
    config: ConfigOption = None,
    state_dir: StateOption = None,
    server: Annotated[str | None, typer.Option("--server", help="Override the server URL")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")] = "info",
) -> None:
    """Run the agent: heartbeats, jobs, results, identity renewal (SIGTERM stops it)."""
    from sslclm.agent.config import load_config
    from sslclm.agent.runner import Agent

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_config(config, server=server, state_dir=state_dir)
    agent = Agent(settings)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    agent.run_forever()
    if agent.refused is not None:
        raise ConfigurationError(f"the server refuses this agent: {agent.refused}")
