"""``sslclm store host|validate``: certificate stores run by agents on their hosts.

``store host STORE --agent NAME`` (or ``--label LABEL``) makes deployments to the store's bindings
agent jobs; ``--server`` hands it back to the server. ``store validate STORE`` asks the agent to read
the store (drift of each binding, its entries into the inventory).
"""

from __future__ import annotations

from typing import Annotated

import typer

from sslclm.agents import hosting, validation
from sslclm.cli.common import OutputFormat, OutputOption, cli_context, emit_mapping, opened_platform
from sslclm.cli.issuance import queued
from sslclm.cli.stores import StoreArgument
from sslclm.core.db import session_scope
from sslclm.deployments.service import store_connection
from sslclm.errors import InvalidInputError


def store_host(
    ref: StoreArgument,
    agent: Annotated[
        str | None, typer.Option("--agent", help="Name or id of the agent that runs it.")
    ] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="Any agent carrying this label runs it.")
    ] = None,
    server: Annotated[bool, typer.Option("--server", help="The server runs it again.")] = False,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Show where a store runs, or host it on an agent (--agent or --label) or the server (--server)."""
    if server and (agent or label):
        raise InvalidInputError("--server cannot be combined with --agent or --label", field="server")
    with opened_platform() as platform, session_scope(platform.sessions) as session:
        if agent is None and label is None and not server:
            record = hosting.describe_host(session, store_connection(session, ref))
        else:
            row = hosting.host_store(session, cli_context(), platform, ref, agent=agent, label=label)
            record = hosting.describe_host(session, row)
    emit_mapping(output, record)


def store_validate(ref: StoreArgument, output: OutputOption = OutputFormat.TABLE) -> None:
    """Have the agent read a hosted store: drift of its bindings, what it holds into the inventory."""
    with opened_platform() as platform, session_scope(platform.sessions) as session:
        jobs = validation.validate_store(session, cli_context(), platform, ref)
        ids = [job.id for job in jobs]
    queued(output, {"agent_job_ids": ids}, f"validation queued as agent job(s) {', '.join(map(str, ids))}")


def register(store_app: typer.Typer) -> None:
    store_app.command("host")(store_host)
    store_app.command("validate")(store_validate)
