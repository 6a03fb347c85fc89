"""What scans, endpoints and schedules accept and return over the API."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sslclm.discovery.models import Endpoint, Scan, ScanSchedule

MAX_TARGET_TOKENS = 10_000


class ScanTargetsIn(BaseModel):
    """What to scan: target tokens (see ``sslclm scan --help``), ports, extra SNI names, exclusions."""

    model_config = ConfigDict(extra="forbid")

    targets: list[str] = Field(
        min_length=1,
        max_length=MAX_TARGET_TOKENS,
        description="Hostnames, addresses, CIDR blocks, ranges; 'host:443,8443', 'smtp://mail:25', "
        "'a,b@10.0.0.1'.",
    )
    ports: str = Field(default="443", max_length=2000, description="Default ports: '443,8443,9000-9010'.")
    sni: list[str] = Field(
        default_factory=list, max_length=100, description="SNI names added to every target."
    )
    exclude: list[str] = Field(default_factory=list, max_length=MAX_TARGET_TOKENS)
    protocol: str | None = Field(
        default=None, max_length=16, description="auto (by port), tls, smtp, imap, pop3, ldap, ftp, postgres."
    )

    @field_validator("ports", mode="before")
    @classmethod
    def _ports_text(cls, value: Any) -> Any:
        if isinstance(value, int):
            return str(value)
        if isinstance(value, list):
            return ",".join(str(item) for item in value)
        return value


class ScanOptionsIn(BaseModel):
    """How to scan; every field has a sensible default."""

    model_config = ConfigDict(extra="forbid")

    concurrency: int = Field(default=256, ge=1, le=10_000)
    connect_timeout: float = Field(default=5.0, gt=0, le=120)
    handshake_timeout: float = Field(default=10.0, gt=0, le=300)
    rate: float | None = Field(default=None, gt=0, description="New connections per second, all hosts.")
    per_host_rate: float | None = Field(
        default=None, gt=0, description="New connections per second per host."
    )
    per_host_concurrency: int | None = Field(default=None, ge=1, le=10_000)
    use_system_roots: bool = Field(default=True, description="Trust the system CA bundle.")
    extra_roots_pem: str | None = Field(
        default=None, max_length=2_000_000, description="PEM certificates trusted in addition."
    )
    max_targets: int = Field(default=1 << 20, ge=1, le=1 << 24, description="Refuse larger target sets.")


def shown_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """Options as the API shows them: a trust bundle is public but long, so only its size is shown."""
    shown = dict(options or {})
    bundle = shown.get("extra_roots_pem")
    if bundle:
        shown["extra_roots_pem"] = f"<{bundle.count('BEGIN CERTIFICATE')} certificates>"
    return shown


class ScanCreate(ScanTargetsIn):
    name: str | None = Field(default=None, max_length=255)
    options: ScanOptionsIn = Field(default_factory=ScanOptionsIn)


class ScanOut(BaseModel):
    id: int
    name: str | None
    status: str
    targets: dict[str, Any]
    options: dict[str, Any]
    total: int
    done: int
    found: int
    failed: int
    certificates: int
    progress: float = Field(description="done / total, 0 to 1.")
    cancel_requested: bool
    error: str | None
    job_id: int | None
    schedule_id: int | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, scan: Scan) -> ScanOut:
        options = dict(scan.options or {})
        if options.get("extra_roots_pem"):
            # Certificates are public, but a bundle is long: say how many, not what.
            options["extra_roots_pem"] = (
                f"<{options['extra_roots_pem'].count('BEGIN CERTIFICATE')} certificates>"
            )
        return cls(
            id=scan.id,
            name=scan.name,
            status=scan.status,
            targets=scan.targets,
            options=shown_options(scan.options),
            total=scan.total,
            done=scan.done,
            found=scan.found,
            failed=scan.failed,
            certificates=scan.certificates,
            progress=round(scan.done / scan.total, 4) if scan.total else 0.0,
            cancel_requested=scan.cancel_requested,
            error=scan.error,
            job_id=scan.job_id,
            schedule_id=scan.schedule_id,
            created_by=scan.created_by,
            created_at=scan.created_at,
            started_at=scan.started_at,
            finished_at=scan.finished_at,
        )


def endpoint_dict(endpoint: Endpoint, certificate: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": endpoint.id,
        "host": endpoint.host,
        "port": endpoint.port,
        "sni": endpoint.sni or None,
        "protocol": endpoint.protocol,
        "address": endpoint.address,
        "last_scanned_at": endpoint.last_scanned_at,
        "last_status": endpoint.last_status,
        "last_error_kind": endpoint.last_error_kind,
        "last_error": endpoint.last_error,
        "certificate_id": endpoint.certificate_id,
        "certificate": certificate,
        "chain": list(endpoint.chain or ()),
        "tls_version": endpoint.tls_version,
        "cipher": endpoint.cipher,
        "alpn": endpoint.alpn,
        "trusted": endpoint.trusted,
        "trust_error_kind": endpoint.trust_error_kind,
        "trust_error": endpoint.trust_error,
        "hostname_match": endpoint.hostname_match,
        "first_seen_at": endpoint.first_seen_at,
        "last_ok_at": endpoint.last_ok_at,
        "last_scan_id": endpoint.last_scan_id,
    }


class ScheduleCreate(ScanTargetsIn):
    name: str = Field(min_length=1, max_length=150)
    cron: str = Field(min_length=1, max_length=120, description="Five-field cron expression, in UTC.")
    enabled: bool = True
    options: ScanOptionsIn = Field(default_factory=ScanOptionsIn)


class ScheduleUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=150)
    cron: str | None = Field(default=None, min_length=1, max_length=120)
    enabled: bool | None = None
    targets: ScanTargetsIn | None = None
    options: ScanOptionsIn | None = None


class ScheduleOut(BaseModel):
    id: int
    name: str
    cron: str
    enabled: bool
    targets: dict[str, Any]
    options: dict[str, Any]
    next_run_at: datetime | None
    last_run_at: datetime | None
    last_scan_id: int | None
    created_by: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, schedule: ScanSchedule) -> ScheduleOut:
        return cls(
            id=schedule.id,
            name=schedule.name,
            cron=schedule.cron,
            enabled=schedule.enabled,
            targets=schedule.targets,
            options=shown_options(schedule.options),
            next_run_at=schedule.next_run_at,
            last_run_at=schedule.last_run_at,
            last_scan_id=schedule.last_scan_id,
            created_by=schedule.created_by,
            created_at=schedule.created_at,
            updated_at=schedule.updated_at,
        )
