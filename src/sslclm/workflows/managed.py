"""Managed certificates: declare, enroll, renew, revoke, adopt, and the renewal tick."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.core.platform import Platform
from sslclm.errors import ConflictError, InvalidInputError, NotFoundError
from sslclm.inventory.models import Certificate, PrivateKey
from sslclm.jobs import queue
from sslclm.jobs.models import Job
from sslclm.policies.enrollment import enforce_managed
from sslclm.spi.types import RevocationReason
from sslclm.workflows.models import Connection, Issuance, ManagedCertificate, Profile
from sslclm.workflows.names import check_allowed, normalize_dns_name, normalize_ip
from sslclm.workflows.planner import check_policy, policy_for, renewal_time
from sslclm.workflows.profiles import get_profile

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._*-]{0,254}$")
ISSUE_TASK = "certificate.issue"
BATCH_TASK = "certificate.renew-batch"  # see sslclm.workflows.batch
BATCH_SIZE = 100
# Gateways that issue in this process from the platform's own data (the built-in CA): their state
# writes join the step's transaction, and their renewals go in batches.
IN_PROCESS_CA_TYPES = frozenset({"local"})
REVOKE_TASK = "certificate.revoke"
# After a tick enqueues a renewal, the next attempt waits this long if that renewal fails.
RETRY_RENEWAL_AFTER = timedelta(hours=1)
TICK_BATCH = 5000
# How far back the key sweep looks for ended issuance jobs; it runs hourly, so a day covers outages.
SWEEP_LOOKBACK = timedelta(days=2)
SWEEP_JOBS = 10_000


class ManagedInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=255, description="Label; defaults to the common name.")
    common_name: str | None = Field(default=None, max_length=255)
    dns_names: list[str] = Field(default_factory=list, max_length=100)
    ip_addresses: list[str] = Field(default_factory=list, max_length=100)
    profile: str
    key_policy: str = "rotate"
    renewal_mode: str | None = None
    renewal_value: float | None = None
    auto_renew: bool = True
    owner: str | None = Field(default=None, max_length=255)
    team: str | None = Field(default=None, max_length=255)
    tags: list[str] = Field(default_factory=list, max_length=64)


def get_managed(session: Session, ref: str | int) -> ManagedCertificate:
    text = str(ref)
    stmt = select(ManagedCertificate)
    stmt = (
        stmt.where(ManagedCertificate.id == int(text))
        if text.isdigit()
        else stmt.where(ManagedCertificate.name == text)
    )
    managed = session.execute(stmt).scalar_one_or_none()
    if managed is None:
        raise NotFoundError(f"no managed certificate '{text}'", field="managed_certificate")
    return managed


def _names(data: ManagedInput) -> tuple[str, list[str], list[str]]:
    dns = [normalize_dns_name(n) for n in data.dns_names]
    ips = [normalize_ip(a) for a in data.ip_addresses]
    common_name = (
        data.common_name.strip().lower() if data.common_name else (dns[0] if dns else (ips[0] if ips else ""))
    )
    if not common_name:
        raise InvalidInputError("give at least one DNS name, IP address or a common name", field="dns_names")
    if data.common_name and common_name not in dns and not ips:
        dns.insert(0, normalize_dns_name(common_name))
    return common_name, list(dict.fromkeys(dns)), list(dict.fromkeys(ips))


def create_managed(
    session: Session, ctx: AuditContext, platform: Platform, data: ManagedInput, *, enroll: bool = True
) -> tuple[ManagedCertificate, Job | None]:
    """Declares a managed certificate and, unless told otherwise, enqueues its enrollment."""
    profile = get_profile(session, data.profile)
    common_name, dns, ips = _names(data)
    check_allowed(dns, ips, profile.allowed_names, profile.name)
    if data.key_policy not in ("rotate", "reuse"):
        raise InvalidInputError(
            "key policy is 'rotate' (new key each renewal) or 'reuse'", field="key_policy"
        )
    if data.renewal_mode is not None:
        check_policy(data.renewal_mode, data.renewal_value if data.renewal_value is not None else 1 / 3)
    name = data.name or common_name
    if not NAME.match(name):
        raise InvalidInputError("name must be 1-255 letters, digits or . _ * -", field="name")
    if session.execute(select(ManagedCertificate.id).where(ManagedCertificate.name == name)).first():
        raise ConflictError(f"a managed certificate named '{name}' already exists", field="name")
    now = platform.clock()
    if enroll:
        # Refused before anything is written, with every blocking reason (the job checks again).
        enforce_managed(
            session,
            names=[*dns, *ips] or [common_name],
            key_type=profile.key_type,
            validity_days=profile.validity_days,
            purpose=profile.purpose,
            profile=profile.name,
            owner=data.owner,
            team=data.team,
            tags=data.tags,
            now=now,
        )
    managed = ManagedCertificate(
        name=name,
        common_name=common_name,
        dns_names=dns,
        ip_addresses=ips,
        profile_id=profile.id,
        key_policy=data.key_policy,
        renewal_mode=data.renewal_mode,
        renewal_value=data.renewal_value,
        auto_renew=data.auto_renew,
        owner=data.owner,
        team=data.team,
        tags=sorted(set(data.tags)),
        status="new",
        created_by=ctx.actor,
        created_at=now,
        updated_at=now,
    )
    session.add(managed)
    session.flush()
    record(
        session, ctx, "managed.create", "managed_certificate", managed.id, {**data.model_dump(), "name": name}
    )
    job = request_issuance(session, ctx, platform, managed, reason="enroll") if enroll else None
    return managed, job


def request_issuance(
    session: Session, ctx: AuditContext, platform: Platform, managed: ManagedCertificate, *, reason: str
) -> Job:
    """Enqueues an enroll or renew job; a request while one is already running returns that job."""
    if managed.status in ("revoked", "disabled"):
        raise ConflictError(
            f"managed certificate '{managed.name}' is {managed.status}", field="managed_certificate"
        )
    now = platform.clock()
    job = queue.enqueue(
        session,
        ISSUE_TASK,
        {"managed_id": managed.id, "reason": reason, "requested_by": ctx.actor},
        now=now,
        dedupe_key=f"issue:{managed.id}",
        target=f"managed:{managed.id}",
    )
    managed.last_job_id = job.id
    if managed.status != "active":
        managed.status = "issuing"
    managed.updated_at = now
    record(session, ctx, f"managed.{reason}", "managed_certificate", managed.id, {"job_id": job.id})
    return job


def request_revocation(
    session: Session,
    ctx: AuditContext,
    platform: Platform,
    certificate: Certificate,
    reason: RevocationReason,
    *,
    stop_renewal: bool = True,
) -> Job:
    issuance = (
        session.execute(
            select(Issuance).where(Issuance.certificate_id == certificate.id).order_by(Issuance.id.desc())
        )
        .scalars()
        .first()
    )
    if issuance is None or issuance.ca_connection_id is None:
        raise InvalidInputError(
            "only certificates the platform issued can be revoked through it", field="certificate"
        )
    if certificate.revoked_at is not None:
        raise ConflictError("the certificate is already revoked", field="certificate")
    now = platform.clock()
    job = queue.enqueue(
        session,
        REVOKE_TASK,
        {
            "certificate_id": certificate.id,
            "ca_connection_id": issuance.ca_connection_id,
            "managed_id": issuance.managed_certificate_id,
            "reason": reason.value,
            "stop_renewal": stop_renewal,
        },
        now=now,
        dedupe_key=f"revoke:{certificate.id}",
        target=f"certificate:{certificate.id}",
    )
    record(
        session,
        ctx,
        "certificate.revoke-requested",
        "certificate",
        certificate.id,
        {"reason": reason.value, "job_id": job.id},
    )
    return job


def adopt(
    session: Session,
    ctx: AuditContext,
    platform: Platform,
    certificate: Certificate,
    *,
    profile_ref: str,
    name: str | None = None,
) -> ManagedCertificate:
    """Takes a discovered certificate into management: later renewals go through ``profile``."""
    if session.execute(select(Issuance.id).where(Issuance.certificate_id == certificate.id)).first():
        raise ConflictError("the certificate is already managed", field="certificate")
    dns = [s[4:] for s in certificate.sans if s.startswith("DNS:")]
    ips = [s[3:] for s in certificate.sans if s.startswith("IP:")]
    data = ManagedInput(
        name=name,
        common_name=certificate.common_name or None,
        dns_names=dns,
        ip_addresses=ips,
        profile=profile_ref,
        owner=certificate.owner,
        team=certificate.team,
    )
    managed, _ = create_managed(session, ctx, platform, data, enroll=False)
    profile = session.get(Profile, managed.profile_id)
    assert profile is not None
    managed.current_certificate_id = certificate.id
    managed.status = "active"
    managed.renew_at = renewal_time(
        not_before=certificate.not_before,
        not_after=certificate.not_after,
        policy=policy_for(managed, profile.renewal_mode, profile.renewal_value),
        seed=f"{managed.id}:{certificate.fingerprint_sha256}",
    )
    session.add(
        Issuance(
            managed_certificate_id=managed.id,
            certificate_id=certificate.id,
            reason="adopt",
            issued_at=platform.clock(),
        )
    )
    record(
        session, ctx, "managed.adopt", "managed_certificate", managed.id, {"certificate_id": certificate.id}
    )
    return managed


def renews_in_batch(connection_type: str, *, approval_required: bool, key_policy: str) -> bool:
    """Whether a renewal goes in a batch job: built-in CA, no approval, a new key."""
    return connection_type in IN_PROCESS_CA_TYPES and not approval_required and key_policy != "reuse"


def batch_specs(groups: dict[int, list[int]]) -> list[queue.JobSpec]:
    """Batch jobs for the due renewals of each CA connection, ``BATCH_SIZE`` managed certificates each."""
    specs = []
    for connection_id, managed_ids in groups.items():
        for start in range(0, len(managed_ids), BATCH_SIZE):
            specs.append(
                queue.JobSpec(
                    kind=BATCH_TASK,
                    payload={
                        "managed_ids": managed_ids[start : start + BATCH_SIZE],
                        "reason": "renew",
                        "requested_by": "scheduler",
                    },
                    target=f"ca_connection:{connection_id}",
                )
            )
    return specs


def enqueue_due_renewals(session: Session, *, now: datetime, limit: int = TICK_BATCH) -> int:
    """The scheduler's renewal tick: enqueues every managed certificate whose renewal time has come.

    Indexed on (auto_renew, renew_at), it reads only the due rows. Each enqueued renewal moves its
    renewal time an hour on, so a renewal that fails is tried again later rather than every tick;
    a successful one sets the next planned time.
    """
    rows = session.execute(
        select(
            ManagedCertificate.id,
            ManagedCertificate.key_policy,
            Profile.approval_required,
            Connection.id,
            Connection.type_key,
        )
        .join(Profile, Profile.id == ManagedCertificate.profile_id)
        .join(Connection, Connection.id == Profile.ca_connection_id)
        .where(
            ManagedCertificate.auto_renew.is_(True),
            ManagedCertificate.renew_at <= now,
            ManagedCertificate.status.in_(("active", "failed", "issuing")),
        )
        .order_by(ManagedCertificate.renew_at)
        .limit(limit)
    ).all()
    if not rows:
        return 0
    due = [row[0] for row in rows]
    # Renewals at the built-in CA go in batches (see sslclm.workflows.batch); the rest one job each.
    batches: dict[int, list[int]] = {}
    single: list[int] = []
    for managed_id, key_policy, approval_required, connection_id, connection_type in rows:
        if renews_in_batch(connection_type, approval_required=approval_required, key_policy=key_policy):
            batches.setdefault(connection_id, []).append(managed_id)
        else:
            single.append(managed_id)
    specs = [
        queue.JobSpec(
            kind=ISSUE_TASK,
            payload={"managed_id": managed_id, "reason": "renew", "requested_by": "scheduler"},
            dedupe_key=f"issue:{managed_id}",
            target=f"managed:{managed_id}",
        )
        for managed_id in single
    ]
    added = queue.enqueue_many(session, [*specs, *batch_specs(batches)], now=now)
    for start in range(0, len(due), 900):
        session.execute(
            update(ManagedCertificate)
            .where(ManagedCertificate.id.in_(due[start : start + 900]))
            .values(renew_at=now + RETRY_RENEWAL_AFTER)
        )
    return added


def sweep_orphan_keys(session: Session, *, now: datetime) -> int:
    """Deletes the keys of issuance jobs that ended failed or cancelled and that no certificate uses.

    A failing job deletes its key itself (its failure hook); this catches the ways a job can end
    without running it, such as an operator cancelling one that waits for its CA.
    """
    states = session.execute(
        select(Job.state)
        .where(
            Job.kind == ISSUE_TASK,
            Job.status.in_(("failed", "cancelled")),
            Job.finished_at >= now - SWEEP_LOOKBACK,
        )
        .order_by(Job.id.desc())
        .limit(SWEEP_JOBS)
    ).scalars()
    fingerprints = sorted({str(s["public_key_sha256"]) for s in states if s and s.get("public_key_sha256")})
    deleted = 0
    used = select(Certificate.id).where(Certificate.public_key_sha256 == PrivateKey.public_key_sha256)
    for start in range(0, len(fingerprints), 900):
        result = session.execute(
            delete(PrivateKey)
            .where(PrivateKey.public_key_sha256.in_(fingerprints[start : start + 900]), ~used.exists())
            .execution_options(synchronize_session=False)
        )
        deleted += int(getattr(result, "rowcount", 0) or 0)
    return deleted


def describe(managed: ManagedCertificate) -> dict[str, Any]:
    return {
        "id": managed.id,
        "name": managed.name,
        "common_name": managed.common_name,
        "dns_names": managed.dns_names,
        "ip_addresses": managed.ip_addresses,
        "profile_id": managed.profile_id,
        "key_policy": managed.key_policy,
        "renewal_mode": managed.renewal_mode,
        "renewal_value": managed.renewal_value,
        "auto_renew": managed.auto_renew,
        "owner": managed.owner,
        "team": managed.team,
        "tags": managed.tags,
        "status": managed.status,
        "status_message": managed.status_message,
        "current_certificate_id": managed.current_certificate_id,
        "renew_at": managed.renew_at,
        "ari_window_start": managed.ari_window_start,
        "ari_window_end": managed.ari_window_end,
        "last_job_id": managed.last_job_id,
        "created_by": managed.created_by,
        "created_at": managed.created_at,
        "updated_at": managed.updated_at,
    }


def list_managed(
    session: Session, *, status: str | None = None, limit: int = 50, after_id: int | None = None
) -> Sequence[ManagedCertificate]:
    stmt = select(ManagedCertificate).order_by(ManagedCertificate.id)
    if status:
        stmt = stmt.where(ManagedCertificate.status == status)
    if after_id is not None:
        stmt = stmt.where(ManagedCertificate.id > after_id)
    return session.execute(stmt.limit(limit)).scalars().all()


def lineage(session: Session, managed_id: int) -> list[dict[str, Any]]:
    rows = session.execute(
        select(Issuance, Certificate.fingerprint_sha256, Certificate.not_after, Certificate.revoked_at)
        .join(Certificate, Certificate.id == Issuance.certificate_id)
        .where(Issuance.managed_certificate_id == managed_id)
        .order_by(Issuance.id)
    ).all()
    return [
        {
            "certificate_id": issuance.certificate_id,
            "fingerprint_sha256": fingerprint,
            "reason": issuance.reason,
            "job_id": issuance.job_id,
            "issued_at": issuance.issued_at,
            "not_after": not_after,
            "revoked": revoked_at is not None,
        }
        for issuance, fingerprint, not_after, revoked_at in rows
    ]
