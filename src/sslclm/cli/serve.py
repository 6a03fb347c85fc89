"""``sslclm serve``: the all-in-one front door (API, web UI, embedded job worker and scheduler)."""

from __future__ import annotations

import ipaddress
import socket
from typing import Annotated, Any

import typer

from sslclm import __version__
from sslclm.auth.bootstrap import AdminCredentials, ensure_first_admin
from sslclm.cli.common import load_settings, opened_platform
from sslclm.core.config import Settings
from sslclm.core.platform import Platform
from sslclm.core.tls import ServerTls, ensure_server_tls
from sslclm.errors import ConfigurationError

WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def base_url(settings: Settings, host: str, port: int, *, https: bool) -> str:
    """The URL to tell people: the configured public URL, else what the listener is reachable at."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    shown = host
    if host in WILDCARD_HOSTS:
        # A wildcard address is not something to type into a browser; the certificate's first name is.
        shown = settings.server_hostnames[0] if settings.server_hostnames else "localhost"
    try:
        if ipaddress.ip_address(shown).version == 6:
            shown = f"[{shown}]"
    except ValueError:
        pass
    scheme = "https" if https else "http"
    default_port = 443 if https else 80
    return f"{scheme}://{shown}" if port == default_port else f"{scheme}://{shown}:{port}"


def admin_lines(creds: AdminCredentials | None) -> list[str]:
    if creds is None:
        return ["Admin:       sign in with an existing account (this data directory already has users)"]
    if creds.created and creds.password is None:
        return [f"Admin:       created user '{creds.username}' with the password from SSLCLM_ADMIN_PASSWORD"]
    if creds.created:
        return [
            f"Admin:       created user '{creds.username}' with password: {creds.password}",
            f"             (also kept in {creds.password_file} until that password is changed)",
        ]
    return [
        f"Admin:       user '{creds.username}', initial password: {creds.password}",
        f"             (from {creds.password_file}; change it to make this reminder go away)",
    ]


def jobs_line(settings: Settings) -> str:
    running = [
        name
        for name, on in (("job worker", settings.embedded_worker), ("scheduler", settings.embedded_scheduler))
        if on
    ]
    if not running:
        return "none in this process (stateless API node; run `sslclm worker` elsewhere)"
    return " and ".join(running) + " in this process"


def check_port_free(host: str, port: int) -> None:
    """Fails early, before any file is created or banner printed, when the address cannot be bound."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigurationError(f"cannot listen on {host}: {exc.strerror}", field="host") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # The same socket options uvicorn uses, so a port in TIME_WAIT is not reported as taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise ConfigurationError(f"cannot listen on {host}:{port}: {reason}", field="port") from None


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8443,
        http: Annotated[
            bool, typer.Option("--http", help="Serve plain HTTP (only behind a TLS-terminating proxy).")
        ] = False,
        no_worker: Annotated[
            bool, typer.Option("--no-worker", help="Do not run a job worker in this process.")
        ] = False,
        no_scheduler: Annotated[
            bool, typer.Option("--no-scheduler", help="Do not run the scheduler in this process.")
        ] = False,
        log_level: Annotated[
            str | None,
            typer.Option(
                "--log-level", help=f"Server log level: {', '.join(LOG_LEVELS)} (default SSLCLM_LOG_LEVEL)."
            ),
        ] = None,
        agent_port: Annotated[
            int | None,
            typer.Option(
                "--agent-port",
                min=1,
                max=65535,
                envvar="SSLCLM_AGENT_PORT",
                help="Also serve the agents (mutual TLS) on this port.",
            ),
        ] = None,
    ) -> None:
        """Run the platform: API under /api/v1, web UI under /ui/, over HTTPS with the internal CA.

        On first start it creates the database, the master key, the internal CA and the first admin.
        """
        if log_level is not None and log_level.lower() not in LOG_LEVELS:
            raise typer.BadParameter(f"choose one of {', '.join(LOG_LEVELS)}", param_hint="--log-level")
        overrides: dict[str, Any] = {}
        # Only an explicit flag overrides SSLCLM_EMBEDDED_*: the environment stays authoritative otherwise.
        if no_worker:
            overrides["embedded_worker"] = False
        if no_scheduler:
            overrides["embedded_scheduler"] = False
        settings = load_settings(**overrides)
        level = (log_level or settings.log_level).lower()
        if level not in LOG_LEVELS:
            raise ConfigurationError(
                f"SSLCLM_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}", field="log_level"
            )
        check_port_free(host, port)
        if agent_port is not None:
            if http:
                raise ConfigurationError("the agent listener needs TLS; drop --http", field="agent_port")
            if agent_port == port:
                raise ConfigurationError("--agent-port must differ from --port", field="agent_port")
            check_port_free(host, agent_port)
        with opened_platform(settings) as platform:
            creds = ensure_first_admin(platform)
            tls: ServerTls | None = None if http else ensure_server_tls(platform, host)
            url = base_url(settings, host, port, https=tls is not None)
            lines = [
                f"SSL-CLM {__version__} on {platform.engine.dialect.name}, data in {settings.home.resolve()}",
                f"Web UI:      {url}/ui/",
                f"API docs:    {url}/api/v1/docs",
            ]
            if tls is not None:
                lines.append(f"CA cert:     {url}/api/v1/system/ca.pem (file: {tls.ca_file})")
            if agent_port is not None:
                agent_url = base_url(settings, host, agent_port, https=True)
                lines.append(
                    f"Agents:      {agent_url} (mutual TLS; sslclm agent register --server {agent_url})"
                )
            lines.extend(admin_lines(creds))
            lines.append(f"Jobs:        {jobs_line(settings)}")
            typer.echo("\n".join(lines))
            if tls is None:
                typer.echo(
                    "warning: serving plain HTTP: passwords, tokens and keys cross the network unencrypted; "
                    "use --http only behind a TLS-terminating proxy",
                    err=True,
                )
            _run_server(platform, host, port, tls, level, agent_port)


def _run_server(
    platform: Platform, host: str, port: int, tls: ServerTls | None, log_level: str, agent_port: int | None
) -> None:
    # Imported here: every other command starts faster without the web stack loaded.
    import uvicorn

    from sslclm.api.app import create_app

    app = create_app(platform=platform)
    _embed_jobs(app, platform)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        server_header=False,
        ssl_certfile=str(tls.cert_file) if tls else None,
        ssl_keyfile=str(tls.key_file) if tls else None,
    )
    configs = [config]
    if tls is not None:
        _renew_while_running(app, platform, host, configs)
    if agent_port is not None and tls is not None:
        from sslclm.agents.listener import agent_listener_config, run_with_agent_listener

        agent_config = agent_listener_config(
            platform, host=host, port=agent_port, tls=tls, log_level=log_level
        )
        configs.append(agent_config)
        run_with_agent_listener(config, agent_config)
        return
    # uvicorn logs and exits with status 1 itself when it cannot bind (port in use, no permission).
    uvicorn.Server(config).run()


def _renew_while_running(app: Any, platform: Platform, host: str, configs: list[Any]) -> None:
    """Swaps a renewed server certificate into every listener without a restart."""
    import asyncio

    from sslclm.core.tls_renewal import ServerCertificateRenewer

    # Read at each renewal: a listener's context exists only once uvicorn has loaded its config.
    renewer = ServerCertificateRenewer(
        platform, host, lambda: [c.ssl for c in configs if c.loaded and c.ssl is not None]
    )
    app.state.startup_hooks.append(lambda _platform: renewer.start(asyncio.get_running_loop()))
    app.state.shutdown_hooks.append(lambda _platform: renewer.stop())


def _embed_jobs(app: Any, platform: Platform) -> None:
    """Runs a job worker and the periodic scheduler beside the server, unless switched off."""
    settings = platform.settings
    if not (settings.embedded_worker or settings.embedded_scheduler):
        return
    from sslclm.jobs import Scheduler, TaskRegistry, Worker, default_registry, load_task_modules

    load_task_modules()
    scheduler = Scheduler(platform, default_registry.schedules()) if settings.embedded_scheduler else None
    # Scheduler only: a worker with no task kinds claims nothing and just ticks the schedules.
    registry = default_registry if settings.embedded_worker else TaskRegistry()
    worker = Worker(platform, registry=registry, scheduler=scheduler)
    app.state.startup_hooks.append(lambda _platform: worker.start())
    app.state.shutdown_hooks.append(lambda _platform: worker.stop(timeout=30))
