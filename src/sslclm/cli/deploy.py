"""``sslclm deploy bind|list|show|redeploy|undeploy``: where managed certificates are deployed.

The commands call the same services as the API's ``/bindings`` routes. ``--wait`` runs the deployment
job right here (a worker for deployment and store-scan jobs only) and prints where the binding ended;
a failed deployment exits with status 1 and its reason.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from sqlalchemy import select

from sslclm.cli.common import (
    OutputFormat,
    OutputOption,
    cli_context,
    emit,
    emit_mapping,
    opened_platform,
)
from sslclm.cli.issuance import TimeoutOption, WaitOption, queued
from sslclm.cli.workflows import build_config
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.deployments import service
from sslclm.errors import InvalidInputError
from sslclm.jobs.models import FINISHED_STATUSES, Job, JobStatus
from sslclm.workflows.managed import get_managed
from sslclm.workflows.models import ManagedCertificate

deploy_app = typer.Typer(
    help="Bindings of managed certificates to stores: bind, list, show, redeploy, undeploy.",
    no_args_is_help=True,
)

HERE_TASKS = (service.DEPLOY_TASK, service.SCAN_TASK)
BindingArgument = Annotated[int, typer.Argument(min=1, help="The binding's id (see 'sslclm deploy list').")]
LIST_COLUMNS = [
    ("id", "ID"),
    ("managed_certificate", "Managed certificate"),
    ("store", "Store"),
    ("alias", "Alias"),
    ("endpoint", "Verify at"),
    ("status", "Status"),
    ("last_deployed_at", "Deployed (UTC)"),
    ("error", "Error"),
]


def run_jobs_here(platform: Platform, job_id: int, timeout: float) -> Job:
    """Runs deployment and store-scan jobs in this process until none is ready; returns ``job_id``'s row."""
    from sslclm.jobs.registry import TaskRegistry, default_registry, load_task_modules
    from sslclm.jobs.worker import Worker

    load_task_modules(plugins=False, modules=("sslclm.deployments.tasks",))
    registry = TaskRegistry()
    for kind in HERE_TASKS:
        registry.add(default_registry.get(kind))
    Worker(platform, registry=registry, concurrency=1, poll_interval=0.1).run_until_idle(timeout=timeout)
    with platform.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
    return job


def job_outcome(job: Job) -> int:
    """Exit status for a waited-for job, with one line on stderr when it did not succeed."""
    if job.status == JobStatus.SUCCEEDED:
        return 0
    if job.status in FINISHED_STATUSES:
        typer.echo(f"error: job {job.id} {job.status}: {job.last_error or 'no reason given'}", err=True)
    else:
        typer.echo(
            f"error: job {job.id} is still {job.status} ({job.last_error or 'not finished'}); "
            f"follow it with 'sslclm jobs show {job.id}'",
            err=True,
        )
    return 1


def parse_endpoint(value: str) -> tuple[str, int]:
    """``host:port`` or ``[v6-address]:port``."""
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInputError(
            f"--verify-endpoint wants host:port with a port from 1 to 65535, got '{value}'",
            field="verify_endpoint",
        )
    return host, int(port)


def parse_options(assignments: list[str]) -> dict[str, Any]:
    return build_config(None, assignments, [])


def _binding_record(platform: Platform, binding_id: int, *, history: bool = False) -> dict[str, Any]:
    with platform.sessions() as session:
        binding = service.get_binding(session, binding_id)
        store = service.store_connection(session, binding.store_connection_id)
        record = service.describe_binding(binding, store.name)
        managed = session.get(ManagedCertificate, binding.managed_certificate_id)
        record["managed_certificate"] = managed.name if managed else None
        if history:
            record["deployments"] = [
                service.describe_deployment(d) for d in service.history(session, binding_id)
            ]
    return record


def _endpoint(record: dict[str, Any]) -> str | None:
    verify = record.get("verify")
    return f"{verify['host']}:{verify['port']}" if verify else None


def _finish(platform: Platform, output: OutputFormat, binding_id: int, job_id: int, timeout: float) -> int:
    job = run_jobs_here(platform, job_id, timeout)
    record = {**_binding_record(platform, binding_id), "job_id": job.id, "job_status": job.status}
    emit_mapping(output, record)
    return job_outcome(job)


@deploy_app.command("bind")
def bind(
    managed_ref: Annotated[
        str, typer.Argument(metavar="MANAGED", help="Name or id of the managed certificate.")
    ],
    store_ref: Annotated[str, typer.Argument(metavar="STORE", help="Name or id of the store.")],
    alias: Annotated[
        str, typer.Option("--alias", help="Name of the entry in the store (file names, alias).")
    ],
    verify_endpoint: Annotated[
        str | None,
        typer.Option(
            "--verify-endpoint",
            metavar="HOST:PORT",
            help="After each deployment, a TLS handshake here must present the new certificate.",
        ),
    ] = None,
    sni: Annotated[str | None, typer.Option("--sni", help="Server name sent in that handshake.")] = None,
    options: Annotated[
        list[str] | None,
        typer.Option("--option", help="key=value binding option, e.g. verify_timeout=30; repeatable."),
    ] = None,
    no_deploy: Annotated[
        bool, typer.Option("--no-deploy", help="Only bind; deploy with the next renewal or a redeploy.")
    ] = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
    output: OutputOption = OutputFormat.TABLE,
) -> int:
    """Bind a managed certificate to a store alias and deploy its current certificate there."""
    host, port = parse_endpoint(verify_endpoint) if verify_endpoint else (None, None)
    if sni and host is None:
        raise InvalidInputError("--sni needs --verify-endpoint", field="sni")
    data = service.BindingInput(
        managed=managed_ref,
        store=store_ref,
        alias=alias,
        options=parse_options(options or []),
        verify_host=host,
        verify_port=port,
        verify_sni=sni,
    )
    with opened_platform() as platform:
        with session_scope(platform.sessions) as session:
            binding, job = service.create_binding(
                session, cli_context(), platform, data, deploy=not no_deploy
            )
            binding_id, job_id = binding.id, job.id if job else None
        if wait and job_id is not None:
            return _finish(platform, output, binding_id, job_id, timeout)
        record = {**_binding_record(platform, binding_id), "job_id": job_id}
    deploying = f"; deployment is job {job_id}" if job_id else ""
    queued(output, record, f"binding {binding_id} created{deploying}")
    return 0


@deploy_app.command("list")
def list_bindings(
    managed_ref: Annotated[
        str | None, typer.Option("--managed", help="Only this managed certificate (name or id).")
    ] = None,
    store_ref: Annotated[str | None, typer.Option("--store", help="Only this store (name or id).")] = None,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Bindings with their deployment status."""
    with opened_platform() as platform, platform.sessions() as session:
        managed_id = get_managed(session, managed_ref).id if managed_ref else None
        store_id = service.store_connection(session, store_ref).id if store_ref else None
        rows = service.list_bindings(session, managed_id=managed_id, store_id=store_id)
        wanted = {binding.managed_certificate_id for binding, _ in rows}
        names: dict[int, str] = {
            row.id: row.name
            for row in session.execute(
                select(ManagedCertificate.id, ManagedCertificate.name).where(
                    ManagedCertificate.id.in_(wanted)
                )
            )
        }
        records = []
        for binding, store_name in rows:
            record = service.describe_binding(binding, store_name)
            record["managed_certificate"] = names[binding.managed_certificate_id]
            record["endpoint"] = _endpoint(record)
            records.append(record)
    emit(output, records, LIST_COLUMNS, empty="no bindings")


@deploy_app.command("show")
def show(binding_id: BindingArgument, output: OutputOption = OutputFormat.TABLE) -> None:
    """One binding and its deployment history, newest first."""
    with opened_platform() as platform:
        record = _binding_record(platform, binding_id, history=True)
    if output is OutputFormat.JSON:
        emit_mapping(output, record)
        return
    history = record.pop("deployments")
    record["verify"] = _endpoint(record)
    emit_mapping(output, record)
    emit(
        output,
        history,
        [
            ("id", "ID"),
            ("action", "Action"),
            ("status", "Status"),
            ("fingerprint", "SHA-256"),
            ("job_id", "Job"),
            ("started_at", "Started (UTC)"),
            ("error", "Error"),
        ],
        title="Deployments",
        empty="no deployments yet",
    )


@deploy_app.command("redeploy")
def redeploy(
    binding_id: BindingArgument,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
    output: OutputOption = OutputFormat.TABLE,
) -> int:
    """Deploy the managed certificate's current certificate to the binding again."""
    with opened_platform() as platform:
        with session_scope(platform.sessions) as session:
            job = service.redeploy(session, cli_context(), binding_id, now=platform.clock())
            job_id = job.id
        if wait:
            return _finish(platform, output, binding_id, job_id, timeout)
    queued(output, {"job_id": job_id, "binding_id": binding_id}, f"redeployment is job {job_id}")
    return 0


@deploy_app.command("undeploy")
def undeploy(
    binding_id: BindingArgument,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
    output: OutputOption = OutputFormat.TABLE,
) -> int:
    """Remove the binding's entry from its store (the binding stays, as undeployed)."""
    with opened_platform() as platform:
        with session_scope(platform.sessions) as session:
            job = service.undeploy(session, cli_context(), binding_id, now=platform.clock())
            job_id = job.id
        if wait:
            return _finish(platform, output, binding_id, job_id, timeout)
    queued(output, {"job_id": job_id, "binding_id": binding_id}, f"removal is job {job_id}")
    return 0


def register(app: typer.Typer) -> None:
    app.add_typer(deploy_app, name="deploy")
