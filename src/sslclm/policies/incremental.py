"""Keeping violations current without re-reading the inventory.

Three triggers feed :func:`sslclm.policies.engine.evaluate_certificates` with just the certificates
whose verdict may have changed:

- a batch of certificates was written (import, discovery, CA sync, store read-back): the new ones,
  plus the older holder of a public key that the batch makes shared (key reuse);
- a scan batch changed what endpoints serve: the certificates served now and those served before;
- time passed: certificates whose ``not_after`` crossed an expiry window (or the risk formula's
  steps), whose ``not_before`` passed while flagged not yet valid, and those an exemption that has
  just expired was covering. They are found by ranges on indexed columns, never by a scan;
- an exemption granted or withdrawn: the certificates with a violation it covers
  (:func:`covered`, walked in violation id order, by the request or by a job when they are many).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, select, true
from sqlalchemy.orm import Session

from sslclm.inventory.models import Certificate
from sslclm.policies.checks import ExpiryParams
from sslclm.policies.driver import Driver
from sslclm.policies.engine import CompiledPolicy, EvaluationStats, evaluate_certificates, load_policies
from sslclm.policies.inputs import key_counts_with
from sslclm.policies.models import PolicyClock, PolicyExemption, PolicyViolation
from sslclm.policies.revocation import register_distribution_points

# Steps of the risk formula's expiry term (see sslclm.policies.risk).
RISK_STEPS = (timedelta(0), timedelta(days=7), timedelta(days=30))
TIME_CLOCK = "time"
# When a policy set last changed: a full walk that began before it starts over (see tasks).
POLICIES_CLOCK = "policies-changed"
_WRITTEN_SQL = "SELECT public_key_sha256, crl_distribution_points FROM certificates WHERE "


def certificates_written(
    session: Session, new_ids: Sequence[int], *, now: datetime, also: Iterable[int] = ()
) -> EvaluationStats:
    """Evaluates a written batch: ``new_ids``, the certificates in ``also``, and key-reuse peers.

    Also registers the CRL distribution points the new certificates name, for the revocation check.
    """
    wanted = set(new_ids) | set(also)
    keys: set[str] = set()
    new_keys: list[str] = []
    urls: set[str] = set()
    driver = Driver(session)
    for condition, params in driver.filters("id", new_ids):
        for pub, points in driver.fetch(_WRITTEN_SQL + condition, params):
            keys.add(pub)
            new_keys.append(pub)
            urls.update(driver.json(points) or ())
    new = set(new_ids)
    new_per_key: dict[str, int] = {}
    for pub in new_keys:
        new_per_key[pub] = new_per_key.get(pub, 0) + 1
    # Counted far enough to tell "one holder besides this batch's" from more.
    cap = max(new_per_key.values(), default=0) + 2
    for pub, count in key_counts_with(driver, keys, cap=cap).items():
        if count - new_per_key.get(pub, 0) == 1:
            # The one older holder's key was its own until this batch: its verdict changes.
            wanted.update(
                cid
                for cid in session.execute(
                    select(Certificate.id).where(Certificate.public_key_sha256 == pub)
                ).scalars()
                if cid not in new
            )
    if urls:
        register_distribution_points(session, sorted(urls), now=now)
    return evaluate_certificates(session, wanted, now=now)


def time_thresholds(policies: Sequence[CompiledPolicy]) -> set[timedelta]:
    """Distances before ``not_after`` at which some verdict or score changes."""
    found = set(RISK_STEPS)
    for policy in policies:
        for entry in policy.checks:
            if entry.name == "expiry" and isinstance(entry.params, ExpiryParams):
                found.add(timedelta(days=entry.params.warning_days))
                found.add(timedelta(days=entry.params.critical_days))
    return found


def ids_changed_by_time(session: Session, since: datetime, until: datetime) -> set[int]:
    """Certificates whose time-dependent verdicts may differ between ``since`` and ``until``."""
    ids: set[int] = set()
    live = Certificate.archived_at.is_(None)
    for threshold in time_thresholds(load_policies(session)):
        # "within T of expiry" flips when not_after - T passes: not_after in [since + T, until + T).
        ids.update(
            session.execute(
                select(Certificate.id).where(
                    Certificate.not_after >= since + threshold,
                    Certificate.not_after < until + threshold,
                    live,
                )
            ).scalars()
        )
    ids.update(
        session.execute(
            select(PolicyViolation.certificate_id)
            .join(Certificate, Certificate.id == PolicyViolation.certificate_id)
            .where(PolicyViolation.check == "not-yet-valid", Certificate.not_before <= until)
        ).scalars()
    )
    expired = select(PolicyExemption.id).where(
        PolicyExemption.expires_at > since, PolicyExemption.expires_at <= until
    )
    ids.update(
        session.execute(
            select(PolicyViolation.certificate_id).where(PolicyViolation.exemption_id.in_(expired))
        ).scalars()
    )
    return ids


def clock(session: Session, name: str = TIME_CLOCK) -> datetime | None:
    row = session.get(PolicyClock, name)
    return row.evaluated_until if row is not None else None


def set_clock(session: Session, until: datetime, name: str = TIME_CLOCK) -> None:
    row = session.get(PolicyClock, name)
    if row is None:
        session.add(PolicyClock(name=name, evaluated_until=until))
    else:
        row.evaluated_until = until
    session.flush()


def evaluate_elapsed(session: Session, *, since: datetime, now: datetime) -> EvaluationStats:
    """Brings time-dependent verdicts from ``since`` to ``now`` and moves the clock to ``now``."""
    stats = evaluate_certificates(session, ids_changed_by_time(session, since, now), now=now)
    set_clock(session, now)
    return stats


def covered_condition(certificate_id: int | None, policy: str | None, check: str | None) -> Any:
    """The stored violations an exemption on these (None: any) would cover."""
    terms = [
        column == value
        for column, value in (
            (PolicyViolation.certificate_id, certificate_id),
            (PolicyViolation.policy, policy),
            (PolicyViolation.check, check),
        )
        if value is not None
    ]
    return and_(true(), *terms)


def covered(session: Session, condition: Any, *, after_id: int, limit: int) -> list[tuple[int, int]]:
    """``(violation id, certificate id)`` of the next ``limit`` violations after the violation
    ``after_id`` that match ``condition``, in id order.

    Keyset by violation id, so each call reads ``limit`` entries of the (policy, id), (check, id)
    or (certificate, policy, check) index, however many match in all. Re-evaluating a certificate
    rewrites only violations that changed, so a walk ends.
    """
    return [
        (vid, cid)
        for vid, cid in session.execute(
            select(PolicyViolation.id, PolicyViolation.certificate_id)
            .where(condition, PolicyViolation.id > after_id)
            .order_by(PolicyViolation.id)
            .limit(limit)
        )
    ]
