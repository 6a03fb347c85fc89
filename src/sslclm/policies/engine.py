"""Evaluating policy sets over the inventory, incrementally, and at enrollment.

Violations and risk scores are stored and rewritten only where they change, so listing them is a
plain indexed query. They are kept current three ways: :func:`evaluate_certificates` for the
certificates an import, a metadata change, a sighting or a scan touched (callers pass the ids);
:func:`reevaluate_all` after a policy set changes; and the periodic ``policies.reevaluate`` task,
which walks the inventory in id order, a batch per step, for the checks that depend on time.

Inputs are read and new violations and scores written through the database driver
(:mod:`sslclm.policies.driver`, :mod:`sslclm.policies.inputs`): a full pass over a million
certificates spent most of its time in SQLAlchemy's per-row work, not in the checks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from sslclm.inventory.models import Certificate
from sslclm.policies.checks import CHECKS, SEVERITY_RANK, Params, PolicyInput, Severity, Violation
from sslclm.policies.document import BASELINE, PolicyDocument
from sslclm.policies.driver import IN_CHUNK, Driver, IdRange, Ids, stored_timestamp
from sslclm.policies.inputs import INPUT_COLUMNS as INPUT_COLUMNS
from sslclm.policies.inputs import fetch_after, fetch_ids, input_select, iter_inputs, shared_keys
from sslclm.policies.inputs import load_inputs as load_inputs
from sslclm.policies.models import (
    CertificateRisk,
    PolicyExemption,
    PolicySet,
    PolicyViolation,
    PolicyViolationCount,
)
from sslclm.policies.risk import SEVERITY_POINTS, combined_score

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
    # Whether a check is named twice, so one certificate can fail it twice (the later one stands).
    repeats: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        names = [entry.name for entry in self.checks]
        object.__setattr__(self, "repeats", len(set(names)) != len(names))

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


def needs_der(policies: Sequence[CompiledPolicy]) -> bool:
    """Whether any of these policy sets has a check that reads the certificate itself."""
    return any(CHECKS[entry.name].needs_der for policy in policies for entry in policy.checks)


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
Stored = tuple[int, str, str, int | None]  # a stored violation's id, severity, reason and exemption
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
# Per severity: its plain str value for the driver, its rank and its risk points.
SEVERITY_FACTS = {s: (str(s.value), SEVERITY_RANK[s], SEVERITY_POINTS[s]) for s in Severity}
CRITICAL_RANK = SEVERITY_RANK[Severity.CRITICAL]
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


Tally = dict[tuple[str, str, str, bool], int]  # (policy, check, severity, exempted) -> violations


def _recount_after_pass(session: Session, seen: Tally) -> None:
    """``rebuild_counts`` for a full pass, without grouping every stored violation again.

    After the pass, the live certificates hold exactly the violations it found (``seen``); the only
    others are those of archived certificates, counted here through the certificate index.
    """
    session.execute(delete(PolicyViolationCount))
    totals: dict[tuple[str, str, str], list[int]] = {}
    for (policy, check, severity, exempted), number in seen.items():
        totals.setdefault((policy, check, severity), [0, 0])[1 if exempted else 0] += number
    archived = select(Certificate.id).where(Certificate.archived_at.is_not(None))
    for policy, check, severity, number, exempted_number in session.execute(
        select(
            PolicyViolation.policy,
            PolicyViolation.check,
            PolicyViolation.severity,
            func.count(),
            func.count(PolicyViolation.exemption_id),
        )
        .where(PolicyViolation.certificate_id.in_(archived))
        .group_by(PolicyViolation.policy, PolicyViolation.check, PolicyViolation.severity)
    ):
        entry = totals.setdefault((policy, check, severity), [0, 0])
        entry[0] += number - exempted_number
        entry[1] += exempted_number
    rows = [
        {"policy": p, "check": c, "severity": s, "violations": v, "exempted": e}
        for (p, c, s), (v, e) in totals.items()
        if v or e
    ]
    if rows:
        session.execute(_insert(session, PolicyViolationCount.__table__), rows)


_VIOLATIONS_SQL = (
    'SELECT id, certificate_id, policy, "check", severity, reason, exemption_id FROM policy_violations WHERE '
)
_RISKS_SQL = "SELECT certificate_id, score FROM certificate_risk WHERE "
# The rank is filtered here rather than in SQL: given "severity_rank = 4", SQLite walks the
# (severity_rank, id) index over every critical violation stored so far instead of probing these
# certificates' few rows, which made a full pass quadratic.
_CRITICAL_SQL = 'SELECT id, certificate_id, policy, "check", severity_rank FROM policy_violations WHERE '


def _stored_verdicts(
    driver: Driver, evaluated: set[int], ids: Ids
) -> tuple[dict[Key, Stored], dict[int, int]]:
    """The stored violations (id, severity, reason, exemption) and scores of these certificates."""
    existing: dict[Key, Stored] = {}
    risks: dict[int, int] = {}
    # On a first pass these find nothing, and cost one index probe per batch of an id range.
    for condition, params in driver.filters("certificate_id", ids):
        for vid, cid, policy, check, severity, reason, exemption in driver.fetch(
            _VIOLATIONS_SQL + condition, params
        ):
            if cid in evaluated:
                existing[(cid, policy, check)] = (vid, severity, reason, exemption)
        for cid, score in driver.fetch(_RISKS_SQL + condition, params):
            if cid in evaluated:
                risks[cid] = score
    return existing, risks


def _exemption_for(exemptions: Sequence[ActiveExemption], cid: int, policy: str, check: str) -> int | None:
    return next((e.id for e in exemptions if e.covers(cid, policy, check)), None)


def _last_per_check(found: list[Violation]) -> list[Violation]:
    """A policy set naming a check twice: the later verdict stands, as in ``evaluate_inputs``."""
    return list({violation.check: violation for violation in found}.values())


def _store(
    driver: Driver,
    session: Session,
    inputs: Iterable[PolicyInput],
    evaluated: set[int],
    policies: Sequence[CompiledPolicy],
    exemptions: Sequence[ActiveExemption],
    now: datetime,
    ids: Ids,
    seen: Tally | None = None,
) -> EvaluationStats:
    """Evaluates these inputs (of the ``evaluated`` certificates) and writes what changed; ``ids``
    selects their certificates (and maybe others).

    The verdicts are those of :func:`evaluate_inputs`, but each input is built, checked and turned
    into the plain tuples to write (and its risk score) before the next: a batch's inputs,
    ``Violation`` objects and per-certificate tallies, kept until the batch was stored, made tens
    of thousands of objects outlive the young garbage-collector generations per batch, and the
    full collections they set off cost a first pass more than writing its rows.

    ``seen``, when given, gains every violation found, by policy, check, severity and exemption;
    the caller (a full pass) then recounts ``policy_violation_counts`` from it at the end, so the
    per-batch count changes are not kept here.
    """
    stats = EvaluationStats(certificates=len(evaluated))
    existing, risks = _stored_verdicts(driver, evaluated, ids)
    counts = _CountDeltas() if seen is None else None
    stamp = stored_timestamp(now)
    new_rows: list[tuple[Any, ...]] = []
    changed: list[dict[str, Any]] = []
    critical: list[Key] = []
    kept: set[Key] = set()
    risk_new: list[tuple[Any, ...]] = []
    risk_changed: list[dict[str, Any]] = []
    found = 0
    facts = SEVERITY_FACTS
    # This loop runs once per violation found (2.5 million on a first pass over a million
    # certificates): it does only what every violation needs, in locals.
    for item in inputs:
        cid = item.certificate_id or 0
        # Over its non-exempt violations: risk points, how many, the worst rank.
        points = flagged = 0
        worst = -1
        for policy in policies:
            if not policy.applies(item):
                continue
            name = policy.name
            verdicts = policy.run(item, now)
            if policy.repeats:
                verdicts = _last_per_check(verdicts)
            for violation in verdicts:
                check = violation.check
                exemption = _exemption_for(exemptions, cid, name, check) if exemptions else None
                severity, rank, weight = facts[violation.severity]
                found += 1
                if exemption is None:
                    points += weight
                    flagged += 1
                    if rank > worst:
                        worst = rank
                if seen is not None:
                    tally_key = (name, check, severity, exemption is not None)
                    seen[tally_key] = seen.get(tally_key, 0) + 1
                reason = violation.reason[:2000]
                old = existing.get((cid, name, check)) if existing else None
                if old is None:
                    new_rows.append((cid, name, check, severity, rank, reason, exemption, stamp, stamp))
                    if rank == CRITICAL_RANK and exemption is None:
                        critical.append((cid, name, check))
                    continue
                kept.add((cid, name, check))
                if (old[1], old[2], old[3]) != (severity, reason, exemption):
                    changed.append(_changed_violation(old[0], severity, rank, reason, exemption, now))
                    if counts is not None:
                        counts.add(name, check, old[1], old[3], -1)
                        counts.add(name, check, severity, exemption, 1)
        if item.certificate_id is None:
            continue
        score = combined_score(points, item.endpoints, item.not_after - now)
        if cid not in risks:
            risk_new.append((cid, score, flagged, worst, stamp))
        elif risks[cid] != score:
            risk_changed.append(
                {
                    "certificate_id": cid,
                    "score": score,
                    "violations": flagged,
                    "max_severity_rank": worst,
                    "evaluated_at": now,
                }
            )
    stats.violations = found
    gone = [(key, old) for key, old in existing.items() if key not in kept]
    stats.removed = _delete_gone(session, gone, counts)
    driver.insert("policy_violations", VIOLATION_INSERT, new_rows)
    if critical:
        stats.new_critical = _new_critical(driver, critical)
    if changed:
        session.execute(update(PolicyViolation), changed)
    stats.added, stats.changed = len(new_rows), len(changed)
    if counts is not None:
        # Each new row's policy, check, severity and exemption (see VIOLATION_INSERT).
        for (policy, check, severity, exemption), number in Counter(
            (row[1], row[2], row[3], row[6]) for row in new_rows
        ).items():
            counts.add(policy, check, severity, exemption, number)
        counts.apply(session)
    driver.insert("certificate_risk", RISK_INSERT, risk_new)
    if risk_changed:
        session.execute(update(CertificateRisk), risk_changed)
    return stats


def _changed_violation(
    vid: int, severity: str, rank: int, reason: str, exemption: int | None, now: datetime
) -> dict[str, Any]:
    return {
        "id": vid,
        "severity": severity,
        "severity_rank": rank,
        "reason": reason,
        "exemption_id": exemption,
        "updated_at": now,
    }


def _delete_gone(session: Session, gone: Sequence[tuple[Key, Stored]], counts: _CountDeltas | None) -> int:
    """Deletes stored violations no longer found, taking them out of ``counts`` when kept."""
    if counts is not None:
        for (_, policy, check), (_, severity, _, exemption) in gone:
            counts.add(policy, check, severity, exemption, -1)
    ids = [vid for _, (vid, _, _, _) in gone]
    for start in range(0, len(ids), IN_CHUNK):
        session.execute(delete(PolicyViolation).where(PolicyViolation.id.in_(ids[start : start + IN_CHUNK])))
    return len(ids)


def _new_critical(driver: Driver, critical: Sequence[Key]) -> list[int]:
    """The ids of the violations just written among ``critical``."""
    wanted = set(critical)
    found: list[int] = []
    for condition, params in driver.filters("certificate_id", sorted({key[0] for key in wanted})):
        for vid, cid, policy, check, rank in driver.fetch(_CRITICAL_SQL + condition, params):
            if rank == CRITICAL_RANK and (cid, policy, check) in wanted:
                found.append(vid)
    return found


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
    driver: Driver,
    session: Session,
    rows: Sequence[Any],
    ids: Ids,
    policies: Sequence[CompiledPolicy],
    exemptions: Sequence[ActiveExemption],
    now: datetime,
    keys: dict[str, int] | None = None,
    seen: Tally | None = None,
) -> EvaluationStats:
    # Built as they are evaluated: each input is dropped before the next is made.
    inputs = iter_inputs(driver, rows, ids, keys=keys, with_der=needs_der(policies))
    evaluated = {row[0] for row in rows}
    return _store(driver, session, inputs, evaluated, policies, exemptions, now, ids, seen)


def _input_select() -> Any:
    return input_select()


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
    driver = Driver(session)
    for chunk in _chunks(ids):
        rows = fetch_ids(driver, chunk)
        live = [row[0] for row in rows]
        known = set(live)
        archived = [cid for cid in chunk if cid not in known]
        if archived:
            _forget(session, PolicyViolation.certificate_id.in_(archived))
            session.execute(delete(CertificateRisk).where(CertificateRisk.certificate_id.in_(archived)))
        stats.merge(_evaluate_rows(driver, session, rows, live, policies, exemptions, now))
    return stats


def evaluate_batch(
    session: Session,
    *,
    after_id: int,
    limit: int = BATCH,
    now: datetime,
    policies: Sequence[CompiledPolicy] | None = None,
    exemptions: Sequence[ActiveExemption] | None = None,
    keys: dict[str, int] | None = None,
    seen: Tally | None = None,
) -> tuple[int | None, EvaluationStats]:
    """Evaluates the next ``limit`` live certificates after ``after_id``.

    Returns the last id evaluated, or None when there were none left. ``policies``,
    ``exemptions`` and the shared public ``keys`` default to the current ones (a caller walking
    every batch in one transaction reads them once); ``seen`` tallies the violations found, and a
    caller passing it recounts ``policy_violation_counts`` at the end (the batch leaves them).
    """
    driver = Driver(session)
    rows = fetch_after(driver, after_id, limit)
    if not rows:
        return None, EvaluationStats()
    if policies is None:
        policies = load_policies(session)
    if exemptions is None:
        exemptions = load_exemptions(session, now)
    last: int = rows[-1][0]
    # Every live certificate of the id range is in the batch: its facts are read by range.
    batch = IdRange(after_id, last)
    stats = _evaluate_rows(driver, session, rows, batch, policies, exemptions, now, keys, seen)
    return last, stats


def release_exemption(session: Session, exemption_id: int, *, now: datetime) -> None:
    """Opens the violations an exemption covers (before it is deleted), keeping the counts exact."""
    counts = _CountDeltas()
    condition = PolicyViolation.exemption_id == exemption_id
    for policy, check, severity, number in session.execute(
        select(PolicyViolation.policy, PolicyViolation.check, PolicyViolation.severity, func.count())
        .where(condition)
        .group_by(PolicyViolation.policy, PolicyViolation.check, PolicyViolation.severity)
    ):
        counts.add(policy, check, severity, exemption_id, -number)
        counts.add(policy, check, severity, None, number)
    session.execute(update(PolicyViolation).where(condition).values(exemption_id=None, updated_at=now))
    counts.apply(session)


def drop_policy(session: Session, name: str) -> None:
    _forget(session, PolicyViolation.policy == name)


def reevaluate_all(session: Session, *, now: datetime, batch: int = BATCH) -> EvaluationStats:
    """Every live certificate, batch by batch in one transaction (for CLI use and tests)."""
    stats = EvaluationStats()
    policies = load_policies(session)
    names = {p.name for p in policies}
    session.execute(delete(PolicyViolation).where(PolicyViolation.policy.not_in(names)))
    exemptions = load_exemptions(session, now)
    keys = shared_keys(Driver(session))
    seen: Tally = {}
    after = 0
    while True:
        last, part = evaluate_batch(
            session,
            after_id=after,
            limit=batch,
            now=now,
            policies=policies,
            exemptions=exemptions,
            keys=keys,
            seen=seen,
        )
        if last is None:
            # Recounted from what is stored: a full pass also repairs counts that anything drifted.
            _recount_after_pass(session, seen)
            return stats
        stats.merge(part)
        after = last
