"""Managed certificates from the command line: enroll, renew, revoke, adopt, and ``managed list|show``.

``--wait`` runs the job right here (a worker for certificate jobs only) until it ends, so no separate
worker is needed for a one-off issuance; the outcome is printed and a failure exits with status 1.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from sqlalchemy.orm import Session

from sslclm.cli.common import (
    OutputFormat,
    OutputOption,
    cli_context,
    emit,
    emit_json,
    emit_mapping,
    opened_platform,
)
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.errors import InvalidInputError, NotFoundError, SslClmError
from sslclm.inventory import service as inventory
from sslclm.inventory.models import Certificate
from sslclm.jobs.models import FINISHED_STATUSES, Job, JobStatus
from sslclm.spi.types import RevocationReason
from sslclm.workflows import managed
from sslclm.workflows.models import ManagedCertificate

managed_app = typer.Typer(help="Managed certificates: list, show.", no_args_is_help=True)

WORKFLOW_TASKS = ("certificate.issue", "certificate.revoke")
WaitOption = Annotated[
    bool, typer.Option("--wait", help="Run the job here and wait until it ends; print the outcome.")
]
TimeoutOption = Annotated[
    float,
    typer.Option("--timeout", min=1.0, max=86400.0, help="With --wait: give up after this many seconds."),
]


class WaitTimeoutError(SslClmError):
    """The job did not end in time."""

    code = "timeout"


def _job_runner(platform: Platform) -> Any:
    """A worker that runs certificate jobs only (never someone's network scan) in this process."""
    from sslclm.jobs.registry import TaskRegistry, default_registry, load_task_modules
    from sslclm.jobs.worker import Worker

    load_task_modules(plugins=False, modules=("sslclm.workflows.tasks",))
    registry = TaskRegistry()
    for kind in WORKFLOW_TASKS:
        registry.add(default_registry.get(kind))
    return Worker(platform, registry=registry, concurrency=2, poll_interval=0.1)


def wait_for_job(platform: Platform, job_id: int, timeout: float) -> Job:
    """Runs certificate jobs here until job ``job_id`` ends or parks waiting for a person."""
    runner = _job_runner(platform)
    runner.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            with platform.sessions() as session:
                job = session.get(Job, job_id)
                if job is None:
                    raise NotFoundError(f"no job {job_id}", field="job_id")
                parked = job.status == JobStatus.WAITING and job.run_after is None
                if job.status in FINISHED_STATUSES or parked:
                    return job
            if time.monotonic() >= deadline:
                raise WaitTimeoutError(
                    f"job {job_id} is still {job.status} after {timeout:.0f}s; "
                    f"follow it with 'sslclm jobs show {job_id}'"
                )
            time.sleep(0.1)
    finally:
        runner.stop(timeout=30)


def _certificate_summary(session: Session, certificate_id: int | None) -> dict[str, Any]:
    if certificate_id is None:
        return {}
    cert = session.get(Certificate, certificate_id)
    if cert is None:
        return {}
    return {
        "certificate_id": cert.id,
        "fingerprint_sha256": cert.fingerprint_sha256,
        "serial": cert.serial,
        "not_after": cert.not_after,
        "revoked_at": cert.revoked_at,
    }


def report_job(platform: Platform, output: OutputFormat, job_id: int, managed_id: int | None) -> int:
    """Prints where a waited-for job ended; exit status 1 when it failed or was cancelled."""
    with platform.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        record: dict[str, Any] = {"job_id": job.id, "job_status": job.status}
        if job.last_error and job.status != JobStatus.SUCCEEDED:
            record["error"] = job.last_error
        row = session.get(ManagedCertificate, managed_id) if managed_id is not None else None
        if row is not None:
            record.update(
                managed_certificate=row.name,
                status=row.status,
                renew_at=row.renew_at,
                **_certificate_summary(session, row.current_certificate_id),
            )
        elif job.result:
            record.update(job.result)
    if job.status == JobStatus.WAITING:
        record["note"] = "waiting for approval: sslclm approvals list"
    emit_mapping(output, record)
    if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        typer.echo(f"error: job {job.id} {job.status}: {job.last_error or 'no reason given'}", err=True)
        return 1
    return 0


def queued(output: OutputFormat, record: dict[str, Any], message: str) -> None:
    """A JSON record for scripts, or one line for people."""
    if output is OutputFormat.JSON:
        emit_json(record)
    else:
        typer.echo(message)


def enroll(
    profile: Annotated[str, typer.Option("--profile", "-p", help="Name or id of the profile.")],
    names: Annotated[
        list[str] | None, typer.Argument(help="DNS names; the first is the common name.")
    ] = None,
    ips: Annotated[
        list[str] | None, typer.Option("--ip", help="An IP address to include; repeatable.")
    ] = None,
    label: Annotated[
        str | None, typer.Option("--name", help="Name of the managed certificate (default: the first name).")
    ] = None,
    owner: Annotated[str | None, typer.Option("--owner")] = None,
    team: Annotated[str | None, typer.Option("--team")] = None,
    tags: Annotated[list[str] | None, typer.Option("--tag", help="A tag; repeatable.")] = None,
    key_policy: Annotated[
        str, typer.Option("--key-policy", help="rotate (new key each renewal) or reuse.")
    ] = "rotate",
    no_auto_renew: Annotated[bool, typer.Option("--no-auto-renew", help="Renew only on request.")] = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
    output: OutputOption = OutputFormat.TABLE,
) -> int:
    """Declare a managed certificate and enroll it (issue its first certificate)."""
    data = managed.ManagedInput(
        name=label,
        dns_names=names or [],
        ip_addresses=ips or [],
        profile=profile,
        key_policy=key_policy,
        auto_renew=not no_auto_renew,
        owner=owner,
        team=team,
        tags=tags or [],
    )
    with opened_platform() as platform:
        with session_scope(platform.sessions) as session:
            row, job = managed.create_managed(session, cli_context(), platform, data)
            assert job is not None
            record = {**managed.describe(row), "job_id": job.id}
        if wait:
            return report_job(platform, output, wait_for_job(platform, job.id, timeout).id, row.id)
    queued(output, record, f"managed certificate '{row.name}' declared; enrollment is job {job.id}")
    return 0


def renew(
    ref: Annotated[str, typer.Argument(metavar="MANAGED", help="Name or id of the managed certificate.")],
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
    output: OutputOption = OutputFormat.TABLE,
) -> int:
    """Renew a managed certificate now."""
    with opened_platform() as platform:
        with session_scope(platform.sessions) as session:
            row = managed.get_managed(session, ref)
            job = managed.request_issuance(session, cli_context(), platform, row, reason="renew")
            record = {"job_id": job.id, "managed_certificate_id": row.id}
        if wait:
            return report_job(platform, output, wait_for_job(platform, job.id, timeout).id, row.id)
    queued(output, record, f"renewal of '{row.name}' is job {job.id}")
    return 0


def _revocation_target(session: Session, ref: str) -> Certificate:
    """``managed:<ref>``, ``cert:<ref>``, or a bare managed name, certificate id or fingerprint."""
    kind, sep, rest = ref.partition(":")
    row: ManagedCertificate | None = None
    if sep and kind == "cert":
        return inventory.get_certificate(session, rest)
    if sep and kind == "managed":
        row = managed.get_managed(session, rest)
    elif not ref.isdigit():
        try:
            row = managed.get_managed(session, ref)
        except NotFoundError:
            row = None
    if row is None:
        return inventory.get_certificate(session, ref)
    if row.current_certificate_id is None:
        raise InvalidInputError(f"'{row.name}' has no certificate yet", field="managed_certificate")
    return inventory.get_certificate(session, row.current_certificate_id)


def revoke(
    ref: Annotated[
        str,
        typer.Argument(
            metavar="CERT_OR_MANAGED",
            help="A managed certificate's name (its current certificate), or a certificate id or "
            "fingerprint; prefix managed: or cert: to be explicit.",
        ),
    ],
    reason: Annotated[
        RevocationReason, typer.Option("--reason", help="RFC 5280 reason.", case_sensitive=False)
    ],
    keep_renewing: Annotated[
        bool, typer.Option("--keep-renewing", help="Keep the managed certificate renewing (e.g. superseded).")
    ] = False,
    wait: WaitOption = False,
    timeout: TimeoutOption = 300.0,
    output: OutputOption = OutputFormat.TABLE,
) -> int:
    """Revoke a certificate the platform issued, at its CA."""
    with opened_platform() as platform:
        with session_scope(platform.sessions) as session:
            cert = _revocation_target(session, ref)
            job = managed.request_revocation(
                session, cli_context(), platform, cert, reason, stop_renewal=not keep_renewing
            )
            record = {"job_id": job.id, "certificate_id": cert.id}
        if wait:
            return report_job(platform, output, wait_for_job(platform, job.id, timeout).id, None)
    queued(output, record, f"revocation of certificate {cert.id} ({reason.value}) is job {job.id}")
    return 0


def adopt(
    ref: Annotated[str, typer.Argument(metavar="CERT", help="Certificate id or SHA-256 fingerprint.")],
    profile: Annotated[str, typer.Option("--profile", "-p", help="Profile its renewals go through.")],
    name: Annotated[str | None, typer.Option("--name", help="Name of the managed certificate.")] = None,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Take a discovered certificate into management; it renews through the profile from now on."""
    with opened_platform() as platform, session_scope(platform.sessions) as session:
        cert = inventory.get_certificate(session, ref)
        row = managed.adopt(session, cli_context(), platform, cert, profile_ref=profile, name=name)
        record = managed.describe(row)
    queued(output, record, f"certificate {cert.id} adopted as '{row.name}'; renewal planned {row.renew_at}")


MANAGED_COLUMNS = [
    ("id", "ID"),
    ("name", "Name"),
    ("status", "Status"),
    ("current_certificate_id", "Certificate"),
    ("renew_at", "Renew at (UTC)"),
    ("status_message", "Message"),
]


@managed_app.command("list")
def managed_list(
    status: Annotated[str | None, typer.Option("--status", help="Only in this status.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    after: Annotated[
        int | None, typer.Option("--after", min=0, help="Only ids above this (next page).")
    ] = None,
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """Managed certificates, by id."""
    with opened_platform() as platform, platform.sessions() as session:
        rows = managed.list_managed(session, status=status, limit=limit, after_id=after)
        records = [managed.describe(r) for r in rows]
    emit(output, records, MANAGED_COLUMNS, empty="no managed certificates")


@managed_app.command("show")
def managed_show(
    ref: Annotated[str, typer.Argument(metavar="MANAGED", help="Name or id.")],
    output: OutputOption = OutputFormat.TABLE,
) -> None:
    """One managed certificate and every certificate it received."""
    with opened_platform() as platform, platform.sessions() as session:
        row = managed.get_managed(session, ref)
        record = {**managed.describe(row), "issuances": managed.lineage(session, row.id)}
    if output is OutputFormat.JSON:
        emit_json(record)
        return
    issuances = record.pop("issuances")
    emit_mapping(output, record)
    emit(
        output,
        issuances,
        [
            ("certificate_id", "Certificate"),
            ("reason", "Reason"),
            ("job_id", "Job"),
            ("not_after", "Expires"),
        ],
        empty="no certificates yet",
    )


def register(app: typer.Typer) -> None:
    app.add_typer(managed_app, name="managed")
    app.command("enroll")(enroll)
    app.command("renew")(renew)
    app.command("revoke")(revoke)
    app.command("adopt")(adopt)
