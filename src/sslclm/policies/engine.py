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
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.orm import Session

from sslclm.core.clock import as_utc
from sslclm.discovery.models import Endpoint
from sslclm.errors import InvalidInputError
from sslclm.inventory.models import Certificate, CertificateTag, Issuer
from sslclm.inventory.writer import _insert
from sslclm.policies.checks import CHECKS, SEVERITY_RANK, Params, PolicyInput, Severity, Violation
from sslclm.policies.document import BASELINE, PolicyDocument
from sslclm.policies.models import CertificateRisk, PolicyExemption, PolicySet, PolicyViolation
from sslclm.policies.risk import risk_score
from sslclm.workflows.models import Issuance, ManagedCertificate, Profile

IN_CHUNK = 900
BATCH = 2000


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
    """Policy inputs for certificate rows (``INPUT_COLUMNS``), with tags, profile, endpoints and key reuse."""
    ids = [row.id for row in rows]
    tags: dict[int, set[str]] = {}
    profiles: dict[int, str] = {}
    served: dict[int, tuple[int, str | None, int, int]] = {}
    keys: dict[str, int] = {}
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
    key_list = list({row.public_key_sha256 for row in rows})
    for start in range(0, len(key_list), IN_CHUNK):
        for pub, count in session.execute(
            select(Certificate.public_key_sha256, func.count())
            .where(Certificate.public_key_sha256.in_(key_list[start : start + IN_CHUNK]))
            .group_by(Certificate.public_key_sha256)
            .having(func.count() > 1)
        ):
            keys[pub] = count
    inputs = []
    for row in rows:
        endpoints, lowest, bad_trust, bad_name = served.get(row.id, (0, None, 0, 0))
        inputs.append(
            PolicyInput(
                certificate_id=row.id,
                not_before=as_utc(row.not_before),
                not_after=as_utc(row.not_after),
                key_algorithm=row.key_algorithm,
                key_size=row.key_size,
                key_curve=row.key_curve,
                signature_algorithm=row.signature_algorithm,
                sans=tuple(row.sans or ()),
                common_name=row.common_name,
                extended_key_usage=tuple(row.extended_key_usage or ()),
                issuer=row.dn,
                self_signed=row.self_signed,
                is_ca=row.is_ca,
                revoked=row.revoked_at is not None,
                public_key_sha256=row.public_key_sha256,
                owner=row.owner,
                team=row.team,
                environment=row.environment,
                profile=profiles.get(row.id),
                tags=frozenset(tags.get(row.id, ())),
                key_shared_with=max(keys.get(row.public_key_sha256, 1) - 1, 0),
                endpoints=endpoints,
                min_tls_version=lowest,
                untrusted_endpoints=bad_trust,
                hostname_mismatches=bad_name,
            )
        )
    return inputs


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
    gone = [row[0] for key, row in existing.items() if key not in found]
    for start in range(0, len(gone), IN_CHUNK):
        session.execute(delete(PolicyViolation).where(PolicyViolation.id.in_(gone[start : start + IN_CHUNK])))
    stats.removed = len(gone)
    new_rows, changed = [], []
    for key, (violation, exemption) in found.items():
        old = existing.get(key)
        values = {
            "severity": violation.severity.value,
            "severity_rank": SEVERITY_RANK[violation.severity],
            "reason": violation.reason[:2000],
            "exemption_id": exemption,
            "updated_at": now,
        }
        if old is None:
            new_rows.append(
                {"certificate_id": key[0], "policy": key[1], "check": key[2], "first_seen": now, **values}
            )
        elif (old[1], old[2], old[3]) != (values["severity"], values["reason"], exemption):
            changed.append({"id": old[0], **values})
    if new_rows:
        session.execute(_insert(session, PolicyViolation.__table__), new_rows)
        critical = [
            r for r in new_rows if r["severity"] == Severity.CRITICAL.value and r["exemption_id"] is None
        ]
        for row in critical:
            vid = session.execute(
                select(PolicyViolation.id).where(
                    PolicyViolation.certificate_id == row["certificate_id"],
                    PolicyViolation.policy == row["policy"],
                    PolicyViolation.check == row["check"],
                )
            ).scalar_one()
            stats.new_critical.append(vid)
    if changed:
        session.execute(update(PolicyViolation), changed)
    stats.added, stats.changed = len(new_rows), len(changed)

    per_cert: dict[int, list[Severity]] = {}
    for (cid, _, _), (violation, exemption) in found.items():
        if exemption is None:
            per_cert.setdefault(cid, []).append(violation.severity)
    risk_new, risk_changed = [], []
    for item in inputs:
        if item.certificate_id is None:
            continue
        cid = item.certificate_id
        severities = per_cert.get(cid, [])
        score = risk_score(severities, endpoints=item.endpoints, not_after=item.not_after, now=now)
        row = {
            "certificate_id": cid,
            "score": score,
            "violations": len(severities),
            "max_severity_rank": max((SEVERITY_RANK[s] for s in severities), default=-1),
            "evaluated_at": now,
        }
        if cid not in risks:
            risk_new.append(row)
        elif risks[cid] != score:
            risk_changed.append(row)
    if risk_new:
        session.execute(_insert(session, CertificateRisk.__table__), risk_new)
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
            session.execute(delete(PolicyViolation).where(PolicyViolation.certificate_id.in_(archived)))
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
    session.execute(delete(PolicyViolation).where(PolicyViolation.policy == name))


def reevaluate_all(session: Session, *, now: datetime, batch: int = BATCH) -> EvaluationStats:
    """Every live certificate, batch by batch in one transaction (for CLI use and tests)."""
    stats = EvaluationStats()
    policies = {p.name for p in load_policies(session)}
    session.execute(delete(PolicyViolation).where(PolicyViolation.policy.not_in(policies)))
    after = 0
    while True:
        last, part = evaluate_batch(session, after_id=after, limit=batch, now=now)
        if last is None:
            return stats
        stats.merge(part)
        after = last


# ---- enrollment --------------------------------------------------------------------------------


class PolicyRefusedError(InvalidInputError):
    """The request breaks a blocking policy rule."""

    code = "policy-refused"


BLOCKING = frozenset({Severity.HIGH, Severity.CRITICAL})


def _key_facts(key_type: str) -> tuple[str, int | None, str | None]:
    kind, _, size = key_type.upper().partition("-")
    if kind == "RSA":
        return "RSA", int(size) if size.isdigit() else None, None
    if kind == "EC":
        curve = {"P256": "secp256r1", "P384": "secp384r1", "P521": "secp521r1"}.get(size, size.lower())
        return "EC", {"secp256r1": 256, "secp384r1": 384, "secp521r1": 521}.get(curve), curve
    return key_type, None, None


def check_enrollment(
    session: Session,
    *,
    names: Sequence[str],
    key_type: str,
    validity_days: int,
    now: datetime,
    profile: str | None = None,
    owner: str | None = None,
    team: str | None = None,
    environment: str | None = None,
    tags: Iterable[str] = (),
    issuer: str = "",
    extended_key_usage: Sequence[str] = ("serverAuth",),
) -> list[Violation]:
    """Every violation an enrollment request would have, before any key or CSR exists.

    Blocking ones are those at high or critical severity; :func:`enforce_enrollment` refuses them.
    """
    algorithm, size, curve = _key_facts(key_type)
    sans = tuple(f"IP:{n}" if n.replace(".", "").isdigit() or ":" in n else f"DNS:{n.lower()}" for n in names)
    item = PolicyInput(
        not_before=now,
        not_after=now + timedelta(days=validity_days),
        key_algorithm=algorithm,
        key_size=size,
        key_curve=curve,
        signature_algorithm="sha256",
        sans=sans,
        common_name=names[0] if names else None,
        extended_key_usage=tuple(extended_key_usage),
        issuer=issuer,
        owner=owner,
        team=team,
        environment=environment,
        profile=profile,
        tags=frozenset(tags),
        enrollment=True,
    )
    found = []
    for policy in load_policies(session):
        if policy.applies(item):
            found.extend(policy.run(item, now))
    return found


def enforce_enrollment(session: Session, **request: Any) -> list[Violation]:
    """Raises :class:`PolicyRefusedError` listing every blocking reason; returns the non-blocking ones."""
    found = check_enrollment(session, **request)
    blocking = [v for v in found if v.severity in BLOCKING]
    if blocking:
        reasons = [{"check": v.check, "severity": v.severity.value, "reason": v.reason} for v in blocking]
        raise PolicyRefusedError(
            "refused by policy: " + "; ".join(f"{v.check}: {v.reason}" for v in blocking),
            field="policy",
            reasons=reasons,
        )
    return found
