"""Evaluating policy sets over the inventory, incrementally, and at enrollment.

Violations and risk scores are stored and rewritten only where they change, so listing them is a
plain indexed query. They are kept current three ways: :func:`evaluate_certificates` for the
certificates an import, a metadata change, a sighting or a scan touched (callers pass the ids);
:func:`reevaluate_all` after a policy set changes; and the periodic ``policies.reevaluate`` task,
which walks the inventory in id order, a batch per step, for the checks that depend on time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from sslclm.discovery.models import Endpoint
from sslclm.inventory.models import Certificate, CertificateTag, Issuer
from sslclm.policies.checks import CHECKS, SEVERITY_RANK, Params, PolicyInput, Severity, Violation
from sslclm.policies.document import BASELINE, PolicyDocument
from sslclm.policies.models import (
    CertificateRisk,
    PolicyExemption,
    PolicySet,
    PolicyViolation,
    PolicyViolationCount,
)
from sslclm.policies.risk import risk_score
from sslclm.workflows.models import Issuance, ManagedCertificate, Profile

IN_CHUNK = 900
BATCH = 2000


def _insert(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


@dataclass(frozen=True, slots=True)
class CompiledCheck:
    name: str
    params: Params
    severity: Severity | None  # the document's override


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    name: str
    scope_kind: str
    scope_value: str | None
    checks: tuple[CompiledCheck, ...]

    def applies(self, item: PolicyInput) -> bool:
        kind, value = self.scope_kind, self.scope_value
        if kind == "all":
            return True
        if kind == "tag":
            return value in item.tags
        return bool(getattr(item, kind) == value)

    def run(self, item: PolicyInput, now: datetime) -> list[Violation]:
        found = []
        for entry in self.checks:
            violation = CHECKS[entry.name].function(item, entry.params, now)
            if violation is not None:
                if entry.severity is not None and violation.severity is not Severity.INFO:
                    violation = Violation(
                        violation.check, entry.severity, violation.reason, violation.details
                    )
                found.append(violation)
        return found


def compile_document(document: PolicyDocument) -> CompiledPolicy:
    return CompiledPolicy(
        document.name,
        document.scope.kind,
        document.scope.value,
        tuple(CompiledCheck(c.check, c.parsed_params(), c.severity) for c in document.checks),
    )


def load_policies(session: Session) -> list[CompiledPolicy]:
    rows = session.execute(
        select(PolicySet.document)
        .where(PolicySet.enabled.is_(True))
        .order_by(PolicySet.position, PolicySet.id)
    ).scalars()
    compiled = [compile_document(PolicyDocument.model_validate(doc)) for doc in rows]
    if not compiled and session.execute(select(PolicySet.id).limit(1)).first() is None:
        compiled = [compile_document(BASELINE)]  # nothing defined at all: the built-in rules
    return compiled


@dataclass(frozen=True, slots=True)
class ActiveExemption:
    id: int
    certificate_id: int | None
    policy: str | None
    check: str | None

    def covers(self, certificate_id: int, policy: str, check: str) -> bool:
        return (
            self.certificate_id in (None, certificate_id)
            and self.policy in (None, policy)
            and self.check in (None, check)
        )


def load_exemptions(session: Session, now: datetime) -> list[ActiveExemption]:
    rows = session.execute(
        select(
            PolicyExemption.id, PolicyExemption.certificate_id, PolicyExemption.policy, PolicyExemption.check
        ).where(PolicyExemption.expires_at > now)
    )
    return [ActiveExemption(*row) for row in rows]


def _chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(ids), IN_CHUNK):
        yield ids[start : start + IN_CHUNK]


INPUT_COLUMNS = (
    Certificate.id,
    Certificate.not_before,
    Certificate.not_after,
    Certificate.key_algorithm,
    Certificate.key_size,
    Certificate.key_curve,
    Certificate.signature_algorithm,
    Certificate.sans,
    Certificate.common_name,
    Certificate.extended_key_usage,
    Issuer.dn,
    Certificate.self_signed,
    Certificate.is_ca,
    Certificate.revoked_at,
    Certificate.public_key_sha256,
    Certificate.owner,
    Certificate.team,
    Certificate.environment,
)


def load_inputs(session: Session, rows: Sequence[Any]) -> list[PolicyInput]:
    """Policy inputs for certificate rows (``INPUT_COLUMNS``, in that order), with tags, profile,
    endpoints and key reuse."""
    ids = [row[0] for row in rows]
    tags: dict[int, set[str]] = {}
    profiles: dict[int, str] = {}
    served: dict[int, tuple[int, str | None, int, int]] = {}
    untrusted = case((Endpoint.trusted.is_(False), 1), else_=0)
    mismatch = case((Endpoint.hostname_match.is_(False), 1), else_=0)
    for chunk in _chunks(ids):
        for cid, tag in session.execute(
            select(CertificateTag.certificate_id, CertificateTag.tag).where(
                CertificateTag.certificate_id.in_(chunk)
            )
        ):
            tags.setdefault(cid, set()).add(tag)
        for cid, name in session.execute(
            select(Issuance.certificate_id, Profile.name)
            .join(ManagedCertificate, ManagedCertificate.id == Issuance.managed_certificate_id)
            .join(Profile, Profile.id == ManagedCertificate.profile_id)
            .where(Issuance.certificate_id.in_(chunk))
        ):
            profiles[cid] = name
        for cid, count, lowest, bad_trust, bad_name in session.execute(
            select(
                Endpoint.certificate_id,
                func.count(),
                func.min(Endpoint.tls_version),
                func.sum(untrusted),
                func.sum(mismatch),
            )
            .where(Endpoint.certificate_id.in_(chunk), Endpoint.last_status == "ok")
            .group_by(Endpoint.certificate_id)
        ):
            served[cid] = (count, lowest, int(bad_trust or 0), int(bad_name or 0))
    keys = key_counts(session, {row[14] for row in rows})
    inputs = []
    no_tags: frozenset[str] = frozenset()
    # Rows unpacked by position: attribute access by name costs more than the checks themselves.
    for (
        cid,
        not_before,
        not_after,
        key_algorithm,
        key_size,
        key_curve,
        signature_algorithm,
        sans,
        common_name,
        eku,
        issuer,
        self_signed,
        is_ca,
        revoked_at,
        public_key,
        owner,
        team,
        environment,
    ) in rows:
        endpoints, lowest, bad_trust, bad_name = served.get(cid, (0, None, 0, 0))
        cert_tags = tags.get(cid)
        inputs.append(
            PolicyInput(
                certificate_id=cid,
                not_before=not_before,  # UTCDateTime returns aware UTC
                not_after=not_after,
                key_algorithm=key_algorithm,
                key_size=key_size,
                key_curve=key_curve,
                signature_algorithm=signature_algorithm,
                sans=tuple(sans or ()),
                common_name=common_name,
                extended_key_usage=tuple(eku or ()),
                issuer=issuer,
                self_signed=self_signed,
                is_ca=is_ca,
                revoked=revoked_at is not None,
                public_key_sha256=public_key,
                owner=owner,
                team=team,
                environment=environment,
                profile=profiles.get(cid),
                tags=frozenset(cert_tags) if cert_tags else no_tags,
                key_shared_with=max(keys.get(public_key, 1) - 1, 0),
                endpoints=endpoints,
                min_tls_version=lowest,
                untrusted_endpoints=bad_trust,
                hostname_mismatches=bad_name,
            )
        )
    return inputs


def _stored(value: datetime) -> str:
    """A datetime as ``UTCDateTime`` columns hold it (naive UTC text), for the driver directly."""
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}"


def _bulk_insert(
    session: Session, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """Inserts through the driver's executemany: SQLAlchemy's per-row parameter processing costs
    more than the evaluation itself on a first pass that writes a million violations."""
    if not rows:
        return
    mark = "?" if session.get_bind().dialect.name == "sqlite" else "%s"
    names = ", ".join(f'"{c}"' for c in columns)
    # Table and column names are this module's constants; the values go as parameters.
    sql = f"INSERT INTO {table} ({names}) VALUES ({', '.join(mark for _ in columns)})"  # noqa: S608
    cursor = session.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(sql, rows)
    finally:
        cursor.close()


def key_counts(session: Session, public_keys: Iterable[str]) -> dict[str, int]:
    """How many certificates carry each of these public keys (keys held by one only are left out).

    A grouped count over the public-key index: cheap for the usual unique keys; a key shared by
    thousands of certificates costs one index range scan per batch that contains it.
    """
    wanted = sorted(set(public_keys))
    found: dict[str, int] = {}
    for start in range(0, len(wanted), IN_CHUNK):
        for pub, count in session.execute(
            select(Certificate.public_key_sha256, func.count())
            .where(Certificate.public_key_sha256.in_(wanted[start : start + IN_CHUNK]))
            .group_by(Certificate.public_key_sha256)
            .having(func.count() > 1)
        ):
            found[pub] = count
    return found


@dataclass(slots=True)
class EvaluationStats:
    certificates: int = 0
    violations: int = 0
    added: int = 0
    removed: int = 0
    changed: int = 0
    new_critical: list[int] = field(default_factory=list)  # violation ids first seen at critical

    def merge(self, other: EvaluationStats) -> None:
        self.certificates += other.certificates
        self.violations += other.violations
        self.added += other.added
        self.removed += other.removed
        self.changed += other.changed
        self.new_critical.extend(other.new_critical)

    def as_dict(self) -> dict[str, Any]:
        return {
            "certificates": self.certificates,
            "violations": self.violations,
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "new_critical": len(self.new_critical),
        }


Key = tuple[int, str, str]
VIOLATION_INSERT = (
    "certificate_id",
    "policy",
    "check",
    "severity",
    "severity_rank",
    "reason",
    "exemption_id",
    "first_seen",
    "updated_at",
)
SEVERITY_VALUE = {s: s.value for s in Severity}  # plain str for the driver
RISK_INSERT = ("certificate_id", "score", "violations", "max_severity_rank", "evaluated_at")


class _CountDeltas:
    """Changes to ``policy_violation_counts`` from one batch, written in one statement."""

    def __init__(self) -> None:
        self.deltas: dict[tuple[str, str, str], list[int]] = {}

    def add(self, policy: str, check: str, severity: str, exemption: int | None, delta: int) -> None:
        entry = self.deltas.setdefault((policy, check, severity), [0, 0])
        entry[0 if exemption is None else 1] += delta

    def apply(self, session: Session) -> None:
        rows = [
            {"policy": p, "check": c, "severity": s, "violations": v, "exempted": e}
            for (p, c, s), (v, e) in self.deltas.items()
            if v or e
        ]
        if not rows:
            return
        table = PolicyViolationCount.__table__
        stmt = _insert(session, table)
        stmt = stmt.on_conflict_do_update(
            index_elements=["policy", "check", "severity"],
            set_={
                "violations": table.c.violations + stmt.excluded.violations,
                "exempted": table.c.exempted + stmt.excluded.exempted,
            },
        )
        session.execute(stmt, rows)


def _forget(session: Session, condition: Any) -> None:
    """Deletes the violations matching ``condition`` and takes them out of the counts."""
    counts = _CountDeltas()
    for policy, check, severity, exempted, total in session.execute(
        select(
            PolicyViolation.policy,
            PolicyViolation.check,
            PolicyViolation.severity,
            func.count(PolicyViolation.exemption_id),
            func.count(),
        )
        .where(condition)
        .group_by(PolicyViolation.policy, PolicyViolation.check, PolicyViolation.severity)
    ):
        counts.add(policy, check, severity, None, -(total - exempted))
        counts.add(policy, check, severity, 1, -exempted)
    session.execute(delete(PolicyViolation).where(condition))
    counts.apply(session)


def rebuild_counts(session: Session) -> None:
    """Recounts ``policy_violation_counts`` from the violations (after a full re-evaluation)."""
    session.execute(delete(PolicyViolationCount))
    rows = [
        {"policy": p, "check": c, "severity": s, "violations": n - e, "exempted": e}
        for p, c, s, n, e in session.execute(
            select(
                PolicyViolation.policy,
                PolicyViolation.check,
                PolicyViolation.severity,
                func.count(),
                func.count(PolicyViolation.exemption_id),
            ).group_by(PolicyViolation.policy, PolicyViolation.check, PolicyViolation.severity)
        )
    ]
    if rows:
        session.execute(_insert(session, PolicyViolationCount.__table__), rows)


def _store(
    session: Session,
    inputs: Sequence[PolicyInput],
    found: dict[Key, tuple[Violation, int | None]],
    now: datetime,
) -> EvaluationStats:
    stats = EvaluationStats(certificates=len(inputs), violations=len(found))
    ids = [item.certificate_id for item in inputs if item.certificate_id is not None]
    existing: dict[Key, tuple[int, str, str, int | None]] = {}
    risks: dict[int, int] = {}
    for chunk in _chunks(ids):
        for vid, cid, policy, check, severity, reason, exemption in session.execute(
            select(
                PolicyViolation.id,
                PolicyViolation.certificate_id,
                PolicyViolation.policy,
                PolicyViolation.check,
                PolicyViolation.severity,
                PolicyViolation.reason,
                PolicyViolation.exemption_id,
            ).where(PolicyViolation.certificate_id.in_(chunk))
        ):
            existing[(cid, policy, check)] = (vid, severity, reason, exemption)
        for cid, score in session.execute(
            select(CertificateRisk.certificate_id, CertificateRisk.score).where(
                CertificateRisk.certificate_id.in_(chunk)
            )
        ):
            risks[cid] = score
    counts = _CountDeltas()
    gone = []
    for key, (vid, severity, _, exemption) in existing.items():
        if key not in found:
            gone.append(vid)
            counts.add(key[1], key[2], severity, exemption, -1)
    for start in range(0, len(gone), IN_CHUNK):
        session.execute(delete(PolicyViolation).where(PolicyViolation.id.in_(gone[start : start + IN_CHUNK])))
    stats.removed = len(gone)
    stamp = _stored(now)
    new_rows: list[tuple[Any, ...]] = []
    changed: list[dict[str, Any]] = []
    critical: set[Key] = set()
    for key, (violation, exemption) in found.items():
        old = existing.get(key)
        severity = SEVERITY_VALUE[violation.severity]
        reason = violation.reason[:2000]
        if old is None:
            rank = SEVERITY_RANK[violation.severity]
            new_rows.append((key[0], key[1], key[2], severity, rank, reason, exemption, stamp, stamp))
            counts.add(key[1], key[2], severity, exemption, 1)
            if violation.severity is Severity.CRITICAL and exemption is None:
                critical.add(key)
        elif (old[1], old[2], old[3]) != (severity, reason, exemption):
            changed.append(
                {
                    "id": old[0],
                    "severity": severity,
                    "severity_rank": SEVERITY_RANK[violation.severity],
                    "reason": reason,
                    "exemption_id": exemption,
                    "updated_at": now,
                }
            )
            counts.add(key[1], key[2], old[1], old[3], -1)
            counts.add(key[1], key[2], severity, exemption, 1)
    _bulk_insert(session, "policy_violations", VIOLATION_INSERT, new_rows)
    for chunk in _chunks(sorted({key[0] for key in critical})):
        for vid, cid, policy, check in session.execute(
            select(
                PolicyViolation.id,
                PolicyViolation.certificate_id,
                PolicyViolation.policy,
                PolicyViolation.check,
            ).where(
                PolicyViolation.certificate_id.in_(chunk),
                PolicyViolation.severity_rank == SEVERITY_RANK[Severity.CRITICAL],
            )
        ):
            if (cid, policy, check) in critical:
                stats.new_critical.append(vid)
    if changed:
        session.execute(update(PolicyViolation), changed)
    stats.added, stats.changed = len(new_rows), len(changed)
    counts.apply(session)

    per_cert: dict[int, list[Severity]] = {}
    for (cid, _, _), (violation, exemption) in found.items():
        if exemption is None:
            per_cert.setdefault(cid, []).append(violation.severity)
    risk_new: list[tuple[Any, ...]] = []
    risk_changed: list[dict[str, Any]] = []
    for item in inputs:
        if item.certificate_id is None:
            continue
        cid = item.certificate_id
        severities = per_cert.get(cid, [])
        score = risk_score(severities, endpoints=item.endpoints, not_after=item.not_after, now=now)
        worst = max((SEVERITY_RANK[s] for s in severities), default=-1)
        if cid not in risks:
            risk_new.append((cid, score, len(severities), worst, stamp))
        elif risks[cid] != score:
            risk_changed.append(
                {
                    "certificate_id": cid,
                    "score": score,
                    "violations": len(severities),
                    "max_severity_rank": worst,
                    "evaluated_at": now,
                }
            )
    _bulk_insert(session, "certificate_risk", RISK_INSERT, risk_new)
    if risk_changed:
        session.execute(update(CertificateRisk), risk_changed)
    return stats


def evaluate_inputs(
    inputs: Sequence[PolicyInput],
    policies: Sequence[CompiledPolicy],
    exemptions: Sequence[ActiveExemption],
    now: datetime,
) -> dict[Key, tuple[Violation, int | None]]:
    """The pure part: every violation of every input under every applicable policy set."""
    found: dict[Key, tuple[Violation, int | None]] = {}
    for item in inputs:
        cid = item.certificate_id or 0
        for policy in policies:
            if not policy.applies(item):
                continue
            for violation in policy.run(item, now):
                exemption = next(
                    (e.id for e in exemptions if e.covers(cid, policy.name, violation.check)), None
                )
                found[(cid, policy.name, violation.check)] = (violation, exemption)
    return found


def _evaluate_rows(
    session: Session,
    rows: Sequence[Any],
    policies: Sequence[CompiledPolicy],
    exemptions: Sequence[ActiveExemption],
    now: datetime,
) -> EvaluationStats:
    inputs = load_inputs(session, rows)
    return _store(session, inputs, evaluate_inputs(inputs, policies, exemptions, now), now)


def _input_select() -> Any:
    return select(*INPUT_COLUMNS).join(Issuer, Issuer.id == Certificate.issuer_id)


def evaluate_certificates(
    session: Session, certificate_ids: Iterable[int], *, now: datetime
) -> EvaluationStats:
    """Re-evaluates these certificates (call after an import, metadata change, sighting or scan).

    Runs in the caller's transaction; the caller commits. Archived certificates lose their
    violations and score.
    """
    ids = sorted(set(certificate_ids))
    stats = EvaluationStats()
    if not ids:
        return stats
    policies = load_policies(session)
    exemptions = load_exemptions(session, now)
    for chunk in _chunks(ids):
        rows = session.execute(
            _input_select().where(Certificate.id.in_(chunk), Certificate.archived_at.is_(None))
        ).all()
        live = {row.id for row in rows}
        archived = [cid for cid in chunk if cid not in live]
        if archived:
            _forget(session, PolicyViolation.certificate_id.in_(archived))
            session.execute(delete(CertificateRisk).where(CertificateRisk.certificate_id.in_(archived)))
        stats.merge(_evaluate_rows(session, rows, policies, exemptions, now))
    return stats


def evaluate_batch(
    session: Session, *, after_id: int, limit: int = BATCH, now: datetime
) -> tuple[int | None, EvaluationStats]:
    """Evaluates the next ``limit`` live certificates after ``after_id``.

    Returns the last id evaluated, or None when there were none left.
    """
    rows = session.execute(
        _input_select()
        .where(Certificate.id > after_id, Certificate.archived_at.is_(None))
        .order_by(Certificate.id)
        .limit(limit)
    ).all()
    if not rows:
        return None, EvaluationStats()
    stats = _evaluate_rows(session, rows, load_policies(session), load_exemptions(session, now), now)
    return rows[-1].id, stats


def drop_policy(session: Session, name: str) -> None:
    _forget(session, PolicyViolation.policy == name)


def reevaluate_all(session: Session, *, now: datetime, batch: int = BATCH) -> EvaluationStats:
    """Every live certificate, batch by batch in one transaction (for CLI use and tests)."""
    stats = EvaluationStats()
    policies = {p.name for p in load_policies(session)}
    session.execute(delete(PolicyViolation).where(PolicyViolation.policy.not_in(policies)))
    after = 0
    while True:
        last, part = evaluate_batch(session, after_id=after, limit=batch, now=now)
        if last is None:
            # Recounted from scratch: a full pass also repairs counts that anything drifted.
            rebuild_counts(session)
            return stats
        stats.merge(part)
        after = last
