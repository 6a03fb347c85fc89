"""``sslclm jobs`` (list, show, retry, cancel) and ``sslclm worker`` (run jobs)."""

from __future__ import annotations

import logging
import sys
from datetime import timedelta
from typing import Annotated, Any

import typer

from sslclm.cli.common import (
    OutputFormat,
    OutputOption,
    cli_context,
    emit,
    emit_json,
    emit_mapping,
    emit_table,
    load_settings,
    opened_platform,
)
from sslclm.core.db import session_scope
from sslclm.jobs import service
from sslclm.jobs.periodic import Scheduler
from sslclm.jobs.registry import default_registry, load_task_modules
from sslclm.jobs.schemas import JobDetailOut, JobOut
from sslclm.jobs.worker import Worker

jobs_app = typer.Typer(help="Durable background jobs: list, show, retry, cancel.", no_args_is_help=True)

LIST_COLUMNS = [
    ("id", "ID"),
    ("kind", "Kind"),
    ("status", "Status"),
    ("step", "Step"),
    ("attempts", "Tries"),
    ("target", "Target"),
    ("updated_at", "Updated (UTC)"),
    ("last_error", "Last error"),
]
EVENT_COLUMNS = [("occurred_at", "Time (UTC)"), ("step", "Step"), ("message", "Message")]
JobIdArgument = Annotated[int, typer.Argument(min=1, help="The job's id.")]


def _record(job: JobOut) -> dict[str, Any]:
    return job.model_dump()


@jobs_app.command("list")
def list_jobs(
    output: OutputOption = OutputFormat.TABLE,
    status: Annotated[
        str | None, typer.Option("--status", help=f"Only jobs in this status: {service.STATUSES}.")
    ] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="Only jobs of this task kind.")] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="Only jobs working on this, e.g. managed_certificate:42.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=service.MAX_PAGE, help="At most this many.")
    ] = 50,
    before: Annotated[
        int | None, typer.Option("--before", min=1, help="Only jobs older than this id (the next page).")
    ] = None,
) -> None:
    """Jobs, newest first."""
    flt = service.JobFilter(status=service.parse_status(status), kind=kind, target=target)
    with opened_platform() as platform, platform.sessions() as session:
        page = service.list_jobs(session, flt, limit=limit, cursor=before)
        records = [_record(JobOut.of(job)) for job in page.items]
    emit(output, records, LIST_COLUMNS, empty="no jobs")
    if page.next_cursor is not None and output is OutputFormat.TABLE:
        typer.echo(f"more: --before {page.next_cursor}", err=True)


@jobs_app.command("show")
def show_job(job_id: JobIdArgument, output: OutputOption = OutputFormat.TABLE) -> None:
    """One job: status, input, state, result and history."""
    with opened_platform() as platform, platform.sessions() as session:
        job = service.get_job(session, job_id)
        detail = JobDetailOut.detail(job, service.job_events(session, job_id))
    if output is OutputFormat.JSON:
        emit_json(detail.model_dump())
        return
    record = detail.model_dump(exclude={"events"})
    emit_mapping(output, record)
    if detail.events:
        emit_table(
            [heading for _, heading in EVENT_COLUMNS],
            [[event.occurred_at, event.step, event.message] for event in detail.events],
            title="History",
        )


@jobs_app.command("retry")
def retry_job(job_id: JobIdArgument, output: OutputOption = OutputFormat.TABLE) -> None:
    """Run a failed or cancelled job again, from the step where it stopped."""
    with opened_platform() as platform, session_scope(platform.sessions) as session:
        job = JobOut.of(service.retry_job(session, cli_context(), job_id, now=platform.clock()))
    if output is OutputFormat.JSON:
        emit_json(_record(job))
    else:
        typer.echo(f"job {job.id} queued again at step '{job.step}'")


@jobs_app.command("cancel")
def cancel_job(job_id: JobIdArgument, output: OutputOption = OutputFormat.TABLE) -> None:
    """Cancel a job; a running job stops after the step it is in."""
    with opened_platform() as platform, session_scope(platform.sessions) as session:
        job = JobOut.of(service.cancel_job(session, cli_context(), job_id, now=platform.clock()))
    if output is OutputFormat.JSON:
        emit_json(_record(job))
    elif job.status == "cancelled":
        typer.echo(f"job {job.id} cancelled")
    else:
        typer.echo(f"job {job.id} is running: it stops after step '{job.step}'")


def worker(
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, max=256, help="Jobs run at once (threads).")
    ] = 4,
    poll_interval: Annotated[
        float, typer.Option("--poll-interval", min=0.05, max=60.0, help="Seconds between polls when idle.")
    ] = 1.0,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, max=10_000, help="Most jobs claimed per query.")
    ] = None,
    lease_seconds: Annotated[
        float,
        typer.Option(
            "--lease-seconds", min=1.0, max=3600.0, help="How soon other workers take over if this one dies."
        ),
    ] = 30.0,
    imports: Annotated[
        list[str] | None,
        typer.Option(
            "--import",
            envvar="SSLCLM_WORKER_IMPORT",
            help="Also load tasks from this Python module (repeatable).",
        ),
    ] = None,
    no_scheduler: Annotated[
        bool, typer.Option("--no-scheduler", help="Do not enqueue periodic tasks from this process.")
    ] = False,
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit once no job is ready instead of waiting for more.")
    ] = False,
) -> None:
    """Claim and run jobs until stopped (SIGTERM: finish the current steps, hand the rest back).

    Run as many workers as load needs, on as many hosts: they share the jobs through the database.
    The periodic scheduler runs here too; its ticks are de-duplicated in the database.
    """
    settings = load_settings()
    logging.basicConfig(
        stream=sys.stderr,
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    load_task_modules(imports or ())
    with opened_platform(settings) as platform:
        scheduler = None if no_scheduler else Scheduler(platform, default_registry.schedules())
        runner = Worker(
            platform,
            concurrency=concurrency,
            poll_interval=poll_interval,
            batch_size=batch_size,
            lease=timedelta(seconds=lease_seconds),
            scheduler=scheduler,
        )
        stats = runner.run_until_idle() if until_idle else runner.run_forever()
    typer.echo(
        f"worker {runner.id} stopped: {stats.succeeded} succeeded, {stats.failed} failed, "
        f"{stats.retried} to retry, {stats.waiting} waiting, {stats.cancelled} cancelled",
        err=True,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(jobs_app, name="jobs")
    app.command("worker")(worker)
