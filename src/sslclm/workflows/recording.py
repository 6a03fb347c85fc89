"""What the issuance steps read and write, in as few statements as one certificate needs.

Renewal is the platform's busiest path (a fleet renews thousands of certificates an hour), so a step
loads its managed certificate, profile and CA connection in one query, and records an issued
certificate with a handful of inserts instead of the general import writer (which is built for
batches of files: issuer caches, key matching, re-sightings).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any, cast

from sqlalchemy import Select, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection as SAConnection
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, PlannedEvent, record
from sslclm.core.platform import Platform
from sslclm.errors import InvalidInputError, NotFoundError
from sslclm.inventory.bulk import insert_certificates, stored_datetime
from sslclm.inventory.models import Certificate, Issuer, PrivateKey, Sighting
from sslclm.inventory.writer import (
    ROW_ISSUER,
    InventoryWriter,
    ParsedFile,
    certificate_row,
    common_name_of,
    issuer_hash,
    private_key_aad,
)
from sslclm.pki import (
    CertificateInfo,
    SigningKey,
    compute_fingerprint,
    extract_info,
    load_certificate,
    load_private_key_der,
    parse_certificate,
    private_key_to_pkcs8_der,
    public_key_sha256,
)
from sslclm.workflows import pg_batch
from sslclm.workflows.models import Connection, Issuance, ManagedCertificate, Profile
from sslclm.workflows.planner import RenewalPolicy, renewal_time


@dataclass(frozen=True, slots=True)
class Target:
    """A managed certificate with its profile and CA connection, as one issuance needs them."""

    managed_id: int
    name: str
    common_name: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    key_policy: str
    status: str
    current_certificate_id: int | None
    owner: str | None
    team: str | None
    renewal_mode: str | None
    renewal_value: float | None
    profile_id: int
    profile_name: str
    allowed_names: tuple[str, ...]
    approval_required: bool
    key_type: str
    validity_days: int
    purpose: str
    options: dict[str, Any]
    profile_renewal_mode: str
    profile_renewal_value: float
    connection_id: int
    connection_name: str
    connection_type: str
    connection_updated_at: datetime
    tags: tuple[str, ...]

    @property
    def policy(self) -> RenewalPolicy:
        if self.renewal_mode:
            return RenewalPolicy(self.renewal_mode, self.renewal_value or 1 / 3)
        return RenewalPolicy(self.profile_renewal_mode, self.profile_renewal_value)

    @property
    def source(self) -> str:
        return f"ca:{self.connection_name}"[:64]


@cache
def _target_query() -> Select[*tuple[Any, ...]]:
    # Built once: its compiled form then stays in SQLAlchemy's cache for every step of every job.
    return _target_select().where(ManagedCertificate.id == bindparam("managed_id"))


@cache
def _targets_query() -> Select[*tuple[Any, ...]]:
    return _target_select().where(ManagedCertificate.id.in_(bindparam("managed_ids", expanding=True)))


def _target_select() -> Select[*tuple[Any, ...]]:
    return (
        select(
            ManagedCertificate.id,
            ManagedCertificate.name,
            ManagedCertificate.common_name,
            ManagedCertificate.dns_names,
            ManagedCertificate.ip_addresses,
            ManagedCertificate.key_policy,
            ManagedCertificate.status,
            ManagedCertificate.current_certificate_id,
            ManagedCertificate.owner,
            ManagedCertificate.team,
            ManagedCertificate.renewal_mode,
            ManagedCertificate.renewal_value,
            Profile.id,
            Profile.name,
            Profile.allowed_names,
            Profile.approval_required,
            Profile.key_type,
            Profile.validity_days,
            Profile.purpose,
            Profile.options,
            Profile.renewal_mode,
            Profile.renewal_value,
            Connection.id,
            Connection.name,
            Connection.type_key,
            Connection.updated_at,
            ManagedCertificate.tags,
        )
        .join(Profile, Profile.id == ManagedCertificate.profile_id)
        .join(Connection, Connection.id == Profile.ca_connection_id)
    )


def _connection(session: Session) -> SAConnection:
    # Core statements go straight to the session's connection (same transaction): the ORM's DML
    # handling costs more than the statement itself on this path.
    return session.connection()


def _target(row: Sequence[Any]) -> Target:
    values = list(row)
    for index in (3, 4, 14, 26):  # JSON lists
        values[index] = tuple(values[index] or ())
    values[19] = dict(values[19] or {})
    return Target(*values)


def load_target(session: Session, managed_id: int) -> Target:
    row = _connection(session).execute(_target_query(), {"managed_id": managed_id}).first()
    if row is None:
        raise NotFoundError(
            f"managed certificate {managed_id} (or its profile or CA connection) no longer exists"
        )
    return _target(row)


def load_targets(session: Session, managed_ids: Sequence[int]) -> dict[int, Target]:
    """The targets of many managed certificates in one query; the deleted ones are left out."""
    if not managed_ids:
        return {}
    rows = _connection(session).execute(_targets_query(), {"managed_ids": list(managed_ids)})
    return {target.managed_id: target for target in map(_target, rows)}


def _upsert(dialect: str, table: Any) -> Any:
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


@dataclass(frozen=True)
class _Statements:
    """Every statement of the path, built once per dialect so their compiled forms stay cached."""

    insert_key: Any
    select_key: Any
    current_key: Any
    select_issuer: Any
    insert_issuer: Any
    known_fingerprints: Any
    claim_certificate: Any
    upsert_sighting: Any
    supersede: Any
    insert_issuance: Any
    update_managed: Any


@cache
def _statements(dialect: str) -> _Statements:
    sighting = _upsert(dialect, Sighting.__table__)
    return _Statements(
        insert_key=_upsert(dialect, PrivateKey.__table__).on_conflict_do_nothing(
            index_elements=["public_key_sha256"]
        ),
        select_key=select(PrivateKey.encrypted_pkcs8).where(
            PrivateKey.public_key_sha256 == bindparam("fingerprint")
        ),
        current_key=select(Certificate.public_key_sha256, Certificate.has_private_key).where(
            Certificate.id == bindparam("certificate_id")
        ),
        select_issuer=select(Issuer.id).where(Issuer.dn_hash == bindparam("digest")),
        insert_issuer=_upsert(dialect, Issuer.__table__).on_conflict_do_nothing(index_elements=["dn_hash"]),
        known_fingerprints=select(Certificate.fingerprint_sha256).where(
            Certificate.fingerprint_sha256.in_(bindparam("fingerprints", expanding=True))
        ),
        claim_certificate=update(Certificate)
        .where(Certificate.id == bindparam("b_id"))
        .values(
            has_private_key=True,
            owner=bindparam("b_owner"),
            team=bindparam("b_team"),
            updated_at=bindparam("b_now"),
        ),
        upsert_sighting=sighting.on_conflict_do_update(
            index_elements=["certificate_id", "kind", "location"],
            set_={"last_seen": sighting.excluded.last_seen},
        ),
        supersede=update(Certificate)
        .where(Certificate.id == bindparam("b_previous"))
        .values(superseded_by_id=bindparam("b_new"), updated_at=bindparam("b_now")),
        insert_issuance=_upsert(dialect, Issuance.__table__).on_conflict_do_nothing(
            index_elements=["job_id", "managed_certificate_id"]
        ),
        update_managed=update(ManagedCertificate)
        .where(ManagedCertificate.id == bindparam("b_id"))
        .values(
            current_certificate_id=bindparam("b_certificate"),
            status="active",
            status_message=None,
            # An ARI window belongs to the certificate it was asked for; the new one gets its own at
            # the next ARI refresh, and until then the planner falls back to a share of the lifetime.
            ari_window_start=None,
            ari_window_end=None,
            renew_at=bindparam("b_renew_at"),
            updated_at=bindparam("b_now"),
        ),
    )


def _sql(session: Session) -> tuple[SAConnection, _Statements]:
    connection = _connection(session)
    return connection, _statements(connection.dialect.name)


def store_key(session: Session, platform: Platform, key: SigningKey, now: datetime) -> str:
    """Seals and stores ``key``; returns its public key's SHA-256 (the name the job carries)."""
    fingerprint = public_key_sha256(key)
    sealed = platform.envelope.encrypt(private_key_to_pkcs8_der(key), private_key_aad(fingerprint))
    connection, sql = _sql(session)
    connection.execute(
        sql.insert_key, {"public_key_sha256": fingerprint, "encrypted_pkcs8": sealed, "created_at": now}
    )
    return fingerprint


def store_sealed_keys(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Stores keys sealed by the caller (``public_key_sha256``, ``encrypted_pkcs8``, ``created_at``)."""
    if pg_batch.is_postgresql(session):
        pg_batch.insert_keys(session, rows)
        return
    connection, sql = _sql(session)
    connection.execute(sql.insert_key, list(rows))


def load_key(session: Session, platform: Platform, fingerprint: str) -> SigningKey:
    """The stored key named by its public key's SHA-256, unsealed."""
    connection, sql = _sql(session)
    sealed = connection.execute(sql.select_key, {"fingerprint": fingerprint}).scalar_one_or_none()
    if sealed is None:
        raise NotFoundError(f"the key {fingerprint[:16]}… of this request is gone")
    # Only signing keys are ever stored by the issuance steps (they made them).
    return cast(
        SigningKey, load_private_key_der(platform.envelope.decrypt(sealed, private_key_aad(fingerprint)))
    )


def current_key_fingerprint(session: Session, certificate_id: int) -> str | None:
    """The current certificate's key fingerprint, when the platform holds that key (for key reuse)."""
    connection, sql = _sql(session)
    row = connection.execute(sql.current_key, {"certificate_id": certificate_id}).first()
    return str(row[0]) if row is not None and row[1] else None


def _issuer_id(session: Session, info: CertificateInfo) -> int:
    connection, sql = _sql(session)
    digest = issuer_hash(info.issuer)
    found = connection.execute(sql.select_issuer, {"digest": digest}).scalar_one_or_none()
    if found is None:
        connection.execute(
            sql.insert_issuer,
            {"dn_hash": digest, "dn": info.issuer, "common_name": common_name_of(info.issuer)},
        )
        found = connection.execute(sql.select_issuer, {"digest": digest}).scalar_one()
    return int(found)


# (database URL, fingerprint) of issuing CA certificates known to be in that database's inventory:
# every issuance carries the same chain, so after the first only a set lookup remains.
_known_chain: set[tuple[str, str]] = set()


def _pem_der(pem: str) -> bytes:
    """The DER inside one PEM certificate block (plain base64; the certificate is parsed only if new)."""
    body = pem.split("-----BEGIN CERTIFICATE-----", 1)[-1].split("-----END CERTIFICATE-----", 1)[0]
    return base64.b64decode("".join(body.split()))


def _ensure_chain(
    session: Session, platform: Platform, target: Target, chain_pem: list[str], now: datetime
) -> None:
    """Puts the issuing CAs in the inventory the first time they are seen; later issuances skip them."""
    if not chain_pem:
        return
    ders = {compute_fingerprint(der): der for der in (_pem_der(pem) for pem in chain_pem)}
    connection, sql = _sql(session)
    database = connection.engine.url.render_as_string()
    if all((database, fingerprint) in _known_chain for fingerprint in ders):
        return
    known = set(connection.execute(sql.known_fingerprints, {"fingerprints": list(ders)}).scalars())
    missing = [
        extract_info(load_certificate(der)) for fingerprint, der in ders.items() if fingerprint not in known
    ]
    if missing:
        writer = InventoryWriter(platform, source=target.source, sighting_kind="issuance")
        writer.write(session, [ParsedFile(f"ca/{target.connection_name}", missing)], now=now)
        return  # remembered once that transaction has committed and a later issuance finds them
    if len(_known_chain) > 10_000:
        _known_chain.clear()
    _known_chain.update((database, fingerprint) for fingerprint in known)


def _parsed(certificate_pem: str) -> CertificateInfo:
    """Parsed once from its DER (``extract_info`` of a loaded certificate would load it twice);
    anything unusual goes through the general loader, which names what is wrong with it."""
    if certificate_pem.count("-----BEGIN") == 1:
        try:
            return parse_certificate(_pem_der(certificate_pem))
        except ValueError:  # binascii.Error is one too
            pass
    return extract_info(load_certificate(certificate_pem.encode()))


def leaf_info(certificate_pem: str, *, public_key: str, target: Target) -> CertificateInfo:
    """The issued certificate's facts, checked against what was asked for."""
    info = _parsed(certificate_pem)
    if info.public_key_sha256 != public_key:
        raise InvalidInputError("the CA returned a certificate for a different key")
    missing = [name for name in target.dns_names if f"DNS:{name}" not in info.sans]
    if missing:
        raise InvalidInputError(f"the CA left out requested names: {', '.join(missing)}")
    return info


def record_certificate(
    session: Session,
    platform: Platform,
    target: Target,
    *,
    certificate_pem: str,
    chain_pem: list[str],
    public_key: str,
    job_id: int,
    reason: str,
    actor: AuditContext,
    now: datetime,
) -> dict[str, Any]:
    """Stores the issued certificate, links it to its managed certificate and plans its renewal.

    All in the caller's transaction: the certificate, its sighting, the lineage row, the managed
    certificate's new state and the audit event commit together or not at all. The same rows as a
    batch of one (:func:`record_batch`), with the audit event appended here.
    """
    issued = Issued(
        target=target, certificate_pem=certificate_pem, chain_pem=tuple(chain_pem), public_key=public_key
    )
    (outcome,) = record_batch(
        session,
        platform,
        [issued],
        job_id=job_id,
        reason=reason,
        actor=actor,
        now=now,
    )
    # Last: on PostgreSQL the audit append holds the log's lock until this transaction commits.
    (event,) = issued_events([outcome], reason)
    record(session, actor, event.action, event.target_type, event.target_id, event.summary, occurred_at=now)
    del outcome["managed_id"]
    return outcome


@dataclass(frozen=True, slots=True)
class Issued:
    """One certificate of a batch, as the CA returned it, with the key it certifies."""

    target: Target
    certificate_pem: str
    chain_pem: tuple[str, ...]
    public_key: str


def record_batch(
    session: Session,
    platform: Platform,
    issued: Sequence[Issued],
    *,
    job_id: int,
    reason: str,
    actor: AuditContext,
    now: datetime,
) -> list[dict[str, Any]]:
    """``record_certificate`` for many certificates at once: one statement per table on SQLite
    (``executemany``), one round trip for all of them on PostgreSQL (:mod:`.pg_batch`).

    The same rows as recording them one by one, in the caller's transaction, so a batch of renewals
    costs a handful of statements instead of a handful per certificate. The audit events
    (:func:`issued_events`) are the caller's to append, last, once its other writes are done: on
    PostgreSQL the append holds the log's lock until the commit.
    """
    if not issued:
        return []
    infos = [
        leaf_info(item.certificate_pem, public_key=item.public_key, target=item.target) for item in issued
    ]
    first = issued[0]
    _ensure_chain(session, platform, first.target, list(first.chain_pem), now)
    connection, sql = _sql(session)
    issuer_ids: dict[str, int] = {}
    stamp = stored_datetime(now)
    rows = []
    for item, info in zip(issued, infos, strict=True):
        if info.issuer not in issuer_ids:
            issuer_ids[info.issuer] = _issuer_id(session, info)
        row = certificate_row(info)
        rows.append(
            (
                *row[:ROW_ISSUER],
                issuer_ids[info.issuer],
                *row[ROW_ISSUER + 1 :],
                item.target.source,
                True,
                stamp,
                stamp,
            )
        )
    # Through the driver (COPY on PostgreSQL): one statement for the batch, whatever its size.
    by_fingerprint = insert_certificates(session, rows)
    ids = [by_fingerprint[info.fingerprint_sha256] for info in infos]
    outcomes: list[dict[str, Any]] = []
    for item, info, certificate_id in zip(issued, infos, ids, strict=True):
        renew_at = renewal_time(
            not_before=info.not_before,
            not_after=info.not_after,
            policy=item.target.policy,
            seed=f"{item.target.managed_id}:{info.fingerprint_sha256}",
        )
        outcomes.append(
            {
                "managed_id": item.target.managed_id,
                "certificate_id": certificate_id,
                "fingerprint_sha256": info.fingerprint_sha256,
                "serial": info.serial,
                "not_after": info.not_after.isoformat(),
                "renew_at": renew_at,
            }
        )
    if pg_batch.is_postgresql(session):
        pg_batch.record_rows(
            session,
            [
                pg_batch.RecordedRow(
                    certificate_id=o["certificate_id"],
                    managed_id=item.target.managed_id,
                    previous_id=item.target.current_certificate_id,
                    owner=item.target.owner,
                    team=item.target.team,
                    location=f"managed/{item.target.name}",
                    source=item.target.source,
                    connection_id=item.target.connection_id,
                    renew_at=o["renew_at"],
                )
                for item, o in zip(issued, outcomes, strict=True)
            ],
            job_id=job_id,
            reason=reason,
            now=now,
        )
    else:
        _record_rows(connection, sql, issued, outcomes, job_id=job_id, reason=reason, now=now)
    for outcome in outcomes:
        outcome["renew_at"] = outcome["renew_at"].isoformat()
    return outcomes


def _record_rows(
    connection: SAConnection,
    sql: _Statements,
    issued: Sequence[Issued],
    outcomes: Sequence[dict[str, Any]],
    *,
    job_id: int,
    reason: str,
    now: datetime,
) -> None:
    """:func:`pg_batch.record_rows` on SQLite, whose driver runs ``executemany`` in C."""
    pairs = [(item, int(o["certificate_id"])) for item, o in zip(issued, outcomes, strict=True)]
    # Owner and team, and the key held, also on a certificate discovered before it was recorded.
    connection.execute(
        sql.claim_certificate,
        [
            {"b_id": certificate_id, "b_owner": item.target.owner, "b_team": item.target.team, "b_now": now}
            for item, certificate_id in pairs
        ],
    )
    connection.execute(
        sql.upsert_sighting,
        [
            {
                "certificate_id": certificate_id,
                "kind": "issuance",
                "location": f"managed/{item.target.name}",
                "source": item.target.source,
                "details": {},
                "first_seen": now,
                "last_seen": now,
            }
            for item, certificate_id in pairs
        ],
    )
    superseded = [
        {"b_previous": item.target.current_certificate_id, "b_new": certificate_id, "b_now": now}
        for item, certificate_id in pairs
        if item.target.current_certificate_id not in (None, certificate_id)
    ]
    if superseded:
        connection.execute(sql.supersede, superseded)
    connection.execute(
        sql.insert_issuance,
        [
            {
                "managed_certificate_id": item.target.managed_id,
                "certificate_id": certificate_id,
                "job_id": job_id,
                "reason": reason,
                "ca_connection_id": item.target.connection_id,
                "issued_at": now,
            }
            for item, certificate_id in pairs
        ],
    )
    connection.execute(
        sql.update_managed,
        [
            {
                "b_id": o["managed_id"],
                "b_certificate": o["certificate_id"],
                "b_renew_at": o["renew_at"],
                "b_now": now,
            }
            for o in outcomes
        ],
    )


def issued_events(outcomes: Sequence[dict[str, Any]], reason: str) -> list[PlannedEvent]:
    """The ``certificate.issued`` audit events of a recorded batch (see :func:`record_batch`)."""
    return [
        PlannedEvent(
            "certificate.issued",
            "managed_certificate",
            o["managed_id"],
            {"certificate_id": o["certificate_id"], "fingerprint": o["fingerprint_sha256"], "reason": reason},
        )
        for o in outcomes
    ]
