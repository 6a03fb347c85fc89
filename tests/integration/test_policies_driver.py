"""The evaluator's driver-level reads and writes give what the SQLAlchemy path gives, on both backends.

Rows go in through SQLAlchemy Core (so they are stored exactly as the rest of the platform stores
them); the inputs read back through the DBAPI cursor must equal those SQLAlchemy decodes, and a full
pass, its repetition and per-certificate re-evaluation must agree on every stored verdict.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from sslclm.audit.service import AuditContext
from sslclm.core.db import session_scope
from sslclm.core.platform import Platform
from sslclm.discovery.models import Endpoint
from sslclm.inventory.models import Certificate, CertificateTag, Issuer
from sslclm.policies import service as policy_service
from sslclm.policies.driver import Driver, IdRange
from sslclm.policies.engine import (
    evaluate_certificates,
    evaluate_inputs,
    load_exemptions,
    load_policies,
    rebuild_counts,
    reevaluate_all,
)
from sslclm.policies.inputs import fetch_after, fetch_ids, input_select, iter_inputs, load_inputs
from sslclm.policies.models import CertificateRisk, PolicyExemption, PolicyViolation, PolicyViolationCount

NOW = datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
POLICY = """\
name: everything
scope: {kind: all}
checks:
  - check: key-algorithm
  - check: signature-algorithm
  - check: max-validity
  - check: expiry
  - check: not-yet-valid
  - check: self-signed
  - check: wildcard
    params: {max_names: 1}
  - check: allowed-issuers
    params: {allowed: ["CN=Good CA"]}
  - check: domains
    params: {forbidden: ["*.internal.example"]}
  - check: eku
    params: {required: [serverAuth]}
  - check: revoked
  - check: key-reuse
  - check: blast-radius
    params: {max_endpoints: 2}
  - check: tls-version
  - check: endpoint-trust
  - check: quantum-vulnerable
"""


def _certificate(n: int, issuer_id: int, **changes: Any) -> dict[str, Any]:
    fingerprint = hashlib.sha256(str(n).encode()).hexdigest()
    row: dict[str, Any] = {
        "fingerprint_sha256": fingerprint,
        "fingerprint_sha1": fingerprint[:40],
        "serial": format(n, "x"),
        "subject": f"CN=host{n}.example.com",
        "common_name": f"host{n}.example.com",
        "issuer_id": issuer_id,
        "not_before": NOW - timedelta(days=10, microseconds=n),
        "not_after": NOW + timedelta(days=80, seconds=n),
        "key_algorithm": "EC",
        "key_size": 256,
        "key_curve": "secp256r1",
        "signature_algorithm": "ecdsa-with-SHA256",
        "sans": [f"DNS:host{n}.example.com"],
        "key_usage": ["digitalSignature"],
        "extended_key_usage": ["serverAuth"],
        "is_ca": False,
        "crl_distribution_points": [],
        "ocsp_urls": [],
        "ca_issuer_urls": [],
        "self_signed": False,
        "public_key_sha256": hashlib.sha256(f"key{n}".encode()).hexdigest(),
        "der": b"\x30\x00",
        "search_text": f"host{n}",
        "source": "import",
        "owner": f"owner-{n % 3}",
        "team": None,
        "environment": "prod" if n % 2 else None,
        "has_private_key": False,
        "created_at": NOW,
        "updated_at": NOW,
    }
    row.update(changes)
    return row


def _seed(platform: Platform) -> list[int]:
    """A small inventory that exercises every column and auxiliary fact the inputs carry."""
    with session_scope(platform.sessions) as session:
        session.execute(
            insert(Issuer),
            [
                {"dn_hash": hashlib.sha256(dn.encode()).hexdigest(), "dn": dn, "common_name": dn[3:]}
                for dn in ("CN=Good CA", "CN=Other CA")
            ],
        )
        good, other = session.execute(select(Issuer.id).order_by(Issuer.id)).scalars()
        shared = hashlib.sha256(b"shared").hexdigest()
        rows = [
            _certificate(1, good),
            _certificate(2, other, not_after=NOW - timedelta(days=3), sans=[]),  # expired, no names
            _certificate(3, good, key_algorithm="RSA", key_size=1024, key_curve=None),
            _certificate(4, good, signature_algorithm="sha1WithRSAEncryption", extended_key_usage=[]),
            _certificate(5, good, not_after=NOW + timedelta(days=5), public_key_sha256=shared),
            _certificate(6, good, public_key_sha256=shared, revoked_at=NOW - timedelta(days=1)),
            _certificate(7, good, self_signed=True, sans=["DNS:*.a.example", "DNS:*.b.example"]),
            _certificate(8, good, sans=["DNS:db.internal.example", "IP:10.0.0.1"], team="payments"),
            _certificate(9, good, not_before=NOW + timedelta(days=2), not_after=NOW + timedelta(days=900)),
            _certificate(10, good, archived_at=NOW - timedelta(days=1)),
            _certificate(11, good, is_ca=True, extended_key_usage=[], self_signed=True),
        ]
        session.execute(insert(Certificate), rows)
        ids = list(session.execute(select(Certificate.id).order_by(Certificate.id)).scalars())
        session.execute(
            insert(CertificateTag),
            [{"certificate_id": ids[0], "tag": "web"}, {"certificate_id": ids[0], "tag": "edge"}],
        )
        endpoint = {"port": 443, "sni": "", "protocol": "tls", "chain": [], "first_seen_at": NOW}
        served = [
            (ids[5], "ok", "TLSv1.3", True, True),
            (ids[5], "ok", "TLSv1.1", False, None),
            (ids[5], "ok", "TLSv1.2", True, False),
            (ids[0], "ok", "TLSv1.2", None, True),
            (ids[0], "error", "TLSv1", False, False),  # a failed scan does not count
        ]
        session.execute(
            insert(Endpoint),
            [
                {
                    **endpoint,
                    "host": f"10.0.0.{n}",
                    "certificate_id": cid,
                    "last_status": status,
                    "tls_version": version,
                    "trusted": trusted,
                    "hostname_match": match,
                }
                for n, (cid, status, version, trusted, match) in enumerate(served)
            ],
        )
        policy_service.put_policy(session, AuditContext(actor="test"), POLICY, now=NOW)
    return ids


def _verdicts(platform: Platform) -> tuple[set[tuple[Any, ...]], set[tuple[Any, ...]], set[tuple[Any, ...]]]:
    with platform.sessions() as session:
        violations = set(
            tuple(row)
            for row in session.execute(
                select(
                    PolicyViolation.certificate_id,
                    PolicyViolation.policy,
                    PolicyViolation.check,
                    PolicyViolation.severity,
                    PolicyViolation.severity_rank,
                    PolicyViolation.reason,
                    PolicyViolation.exemption_id,
                )
            )
        )
        risks = set(
            tuple(row)
            for row in session.execute(
                select(
                    CertificateRisk.certificate_id,
                    CertificateRisk.score,
                    CertificateRisk.violations,
                    CertificateRisk.max_severity_rank,
                )
            )
        )
        counts = {tuple(row) for row in session.execute(select(PolicyViolationCount.__table__))}
    return violations, risks, counts


def test_driver_reads_the_same_inputs_as_sqlalchemy(platform: Platform) -> None:
    ids = _seed(platform)
    with platform.sessions() as session:
        decoded = session.execute(
            input_select().where(Certificate.archived_at.is_(None)).order_by(Certificate.id)
        ).all()
        expected = load_inputs(session, decoded)
        driver = Driver(session)
        by_range = fetch_after(driver, 0, 100)
        assert list(iter_inputs(driver, by_range, IdRange(0, by_range[-1][0]))) == expected
        assert sorted(
            iter_inputs(driver, fetch_ids(driver, ids), ids), key=lambda i: i.certificate_id or 0
        ) == (expected)
    assert ids[9] not in {item.certificate_id for item in expected}  # archived
    first, fifth, sixth = expected[0], expected[4], expected[5]
    assert first.tags == frozenset({"web", "edge"})
    assert (first.endpoints, first.min_tls_version, first.untrusted_endpoints) == (1, "TLSv1.2", 0)
    assert (sixth.endpoints, sixth.min_tls_version) == (3, "TLSv1.1")
    assert (sixth.untrusted_endpoints, sixth.hostname_mismatches, sixth.revoked) == (1, 1, True)
    assert fifth.key_shared_with == sixth.key_shared_with == 1
    assert first.not_before == NOW - timedelta(days=10, microseconds=1)
    assert first.not_before.tzinfo is not None and first.sans == ("DNS:host1.example.com",)


def test_full_passes_and_incremental_evaluation_agree(platform: Platform) -> None:
    ids = _seed(platform)
    with session_scope(platform.sessions) as session:
        first = reevaluate_all(session, now=NOW)
    assert first.added == first.violations > 0 and first.new_critical
    stored = _verdicts(platform)
    checks = {(cid, check) for cid, _, check, *_ in stored[0]}
    assert {(ids[2], "key-algorithm"), (ids[3], "eku"), (ids[4], "key-reuse")} <= checks
    assert {(ids[5], "blast-radius"), (ids[6], "wildcard"), (ids[7], "domains")} <= checks
    assert {(ids[8], "not-yet-valid"), (ids[1], "allowed-issuers")} <= checks
    assert not any(cid == ids[9] for cid, *_ in stored[0])

    with session_scope(platform.sessions) as session:
        again = reevaluate_all(session, now=NOW)
    assert (again.added, again.changed, again.removed, again.violations) == (0, 0, 0, first.violations)
    assert _verdicts(platform) == stored

    # From nothing stored, certificate by certificate: the same violations, scores and counts.
    with session_scope(platform.sessions) as session:
        for table in (PolicyViolation, CertificateRisk, PolicyViolationCount):
            session.execute(delete(table))
        evaluate_certificates(session, ids, now=NOW)
    assert _verdicts(platform) == stored


# Names a check twice: for a certificate failing both, the later verdict stands.
TWICE = """\
name: twice
scope: {kind: all}
checks:
  - check: expiry
    params: {warning_days: 2000, critical_days: 1}
  - check: expiry
"""


def test_stored_verdicts_are_those_of_the_pure_evaluation(platform: Platform) -> None:
    ids = _seed(platform)
    with session_scope(platform.sessions) as session:
        policy_service.put_policy(session, AuditContext(actor="test"), TWICE, now=NOW)
        session.add(
            PolicyExemption(
                certificate_id=ids[2],
                policy="everything",
                check="key-algorithm",
                justification="legacy appliance",
                approver="security",
                expires_at=NOW + timedelta(days=30),
                created_by="test",
                created_at=NOW,
            )
        )
        reevaluate_all(session, now=NOW)
    with platform.sessions() as session:
        rows = session.execute(input_select().where(Certificate.archived_at.is_(None))).all()
        expected = evaluate_inputs(
            load_inputs(session, rows), load_policies(session), load_exemptions(session, NOW), NOW
        )
    stored = {
        (cid, policy, check): (severity, reason, exemption)
        for cid, policy, check, severity, _, reason, exemption in _verdicts(platform)[0]
    }
    assert stored == {key: (v.severity.value, v.reason, e) for key, (v, e) in expected.items()}
    assert stored[(ids[4], "twice", "expiry")][:2] == ("high", "expires 2026-06-06, within 7 days")
    assert "within 2000 days" in stored[(ids[0], "twice", "expiry")][1]  # only the first fails
    assert stored[(ids[2], "everything", "key-algorithm")][2] is not None  # exempted


def test_a_full_pass_recounts_like_rebuild_counts(platform: Platform) -> None:
    ids = _seed(platform)
    with session_scope(platform.sessions) as session:
        reevaluate_all(session, now=NOW)
        # Archived behind the evaluator's back, so its violations stay; and a count drifts.
        session.execute(update(Certificate).where(Certificate.id == ids[2]).values(archived_at=NOW))
        session.execute(update(PolicyViolationCount).values(violations=PolicyViolationCount.violations + 5))
    with session_scope(platform.sessions) as session:
        reevaluate_all(session, now=NOW)
    after_pass = _verdicts(platform)
    assert any(cid == ids[2] for cid, *_ in after_pass[0])
    with session_scope(platform.sessions) as session:
        rebuild_counts(session)
    assert _verdicts(platform) == after_pass


def test_changes_pending_in_the_session_are_evaluated(platform: Platform) -> None:
    ids = _seed(platform)
    with session_scope(platform.sessions) as session:
        reevaluate_all(session, now=NOW)
    with session_scope(platform.sessions) as session:
        certificate = session.get(Certificate, ids[0])
        assert certificate is not None
        certificate.extended_key_usage = ["clientAuth"]  # not flushed yet
        stats = evaluate_certificates(session, [ids[0]], now=NOW)
    assert stats.added == 1
    with platform.sessions() as session:
        found = session.execute(
            select(func.count()).where(
                PolicyViolation.certificate_id == ids[0], PolicyViolation.check == "eku"
            )
        ).scalar_one()
    assert found == 1
