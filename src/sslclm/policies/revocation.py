"""Revocation from CRLs: fetched from the certificates' distribution points, cached, verified, applied.

Writing certificates registers the HTTP(S) distribution points they name. The periodic
``policies.refresh-crls`` task fetches each list when it is due (its nextUpdate; a back-off after a
failure), checks its signature against the issuer's certificate when the inventory holds it
(refusing a list that does not verify), keeps it, and marks the certificates it lists as revoked
(inventory status "revoked"), which the ``revoked`` check then reports. A list fetched earlier is
applied again, without fetching, when certificates naming it arrive later.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.errors import InvalidInputError
from sslclm.inventory.models import Certificate, Issuer
from sslclm.pki.crl import CrlContent, load_crl
from sslclm.policies.models import RevocationList

log = logging.getLogger(__name__)

MAX_CRL_BYTES = 32 * 1024 * 1024
FETCH_TIMEOUT = 15.0
RETRY_AFTER_FAILURE = timedelta(hours=1)
REFRESH_WITHOUT_NEXT_UPDATE = timedelta(hours=24)
SERIAL_CHUNK = 900
MAX_URL = 2048
CRL_ACTOR = AuditContext(actor="system:crl")

Fetcher = Callable[[str], bytes]


class CrlFetchError(InvalidInputError):
    """The CRL could not be fetched."""

    code = "crl-fetch-failed"


def fetch_crl(url: str) -> bytes:
    """GETs a CRL, refusing bodies over ``MAX_CRL_BYTES``."""
    try:
        with httpx.stream("GET", url, timeout=FETCH_TIMEOUT, follow_redirects=True) as response:
            if response.status_code != 200:
                raise CrlFetchError(f"{url}: HTTP {response.status_code}", field="url")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_CRL_BYTES:
                    raise CrlFetchError(f"{url}: larger than {MAX_CRL_BYTES} bytes", field="url")
            return bytes(body)
    except httpx.HTTPError as exc:
        raise CrlFetchError(f"{url}: {type(exc).__name__}: {str(exc)[:200]}", field="url") from exc


def _insert(session: Session, table: object) -> object:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)  # type: ignore[arg-type]


def register_distribution_points(session: Session, urls: Sequence[str], *, now: datetime) -> None:
    """Makes the HTTP(S) URLs known (due at once); a list already fetched is applied again."""
    wanted = [u for u in urls if u.lower().startswith(("http://", "https://")) and len(u) <= MAX_URL]
    if not wanted:
        return
    rows = [{"url": u, "due_at": now, "entries": 0, "recheck": False, "failures": 0} for u in wanted]
    stmt = _insert(session, RevocationList.__table__).on_conflict_do_nothing()  # type: ignore[attr-defined]
    session.execute(stmt, rows)
    session.execute(
        update(RevocationList)
        .where(
            RevocationList.url.in_(wanted),
            RevocationList.fetched_at.is_not(None),
            RevocationList.recheck.is_(False),
        )
        .values(recheck=True)
    )


@dataclass(slots=True)
class RefreshStats:
    fetched: int = 0
    failed: int = 0
    reapplied: int = 0
    revoked: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "fetched": self.fetched,
            "failed": self.failed,
            "reapplied": self.reapplied,
            "revoked": self.revoked,
        }


def _issuer_certificates(session: Session, issuer: str) -> list[bytes]:
    return list(
        session.execute(
            select(Certificate.der)
            .where(Certificate.subject == issuer, Certificate.is_ca.is_(True))
            .limit(20)
        ).scalars()
    )


def _read(session: Session, der: bytes) -> CrlContent:
    content = load_crl(der)
    candidates = _issuer_certificates(session, content.issuer)
    return load_crl(der, candidates) if candidates else content


def apply_crl(session: Session, content: CrlContent, url: str, *, now: datetime) -> list[int]:
    """Marks the inventory's certificates from this CRL's issuer that it lists; returns their ids."""
    if not content.revoked:
        return []
    issuer_id = session.execute(
        select(Issuer.id).where(Issuer.dn_hash == hashlib.sha256(content.issuer.encode()).hexdigest())
    ).scalar_one_or_none()
    if issuer_id is None:
        return []
    serials = list(content.revoked)
    marked: list[int] = []
    for start in range(0, len(serials), SERIAL_CHUNK):
        found = session.execute(
            select(Certificate.id, Certificate.serial).where(
                Certificate.issuer_id == issuer_id,
                Certificate.serial.in_(serials[start : start + SERIAL_CHUNK]),
                Certificate.revoked_at.is_(None),
            )
        ).all()
        for cid, serial in found:
            session.execute(
                update(Certificate)
                .where(Certificate.id == cid)
                .values(revoked_at=content.revoked[serial], revocation_reason="crl", updated_at=now)
            )
            marked.append(cid)
    if marked:
        record(
            session,
            CRL_ACTOR,
            "certificate.revoked-by-crl",
            "crl",
            url[:255],
            {"issuer": content.issuer, "certificates": marked[:1000], "count": len(marked)},
            occurred_at=now,
        )
    return marked


def _refresh_one(
    session: Session, row: RevocationList, fetch: Fetcher, now: datetime
) -> tuple[str, list[int]]:
    if row.due_at > now and row.der is not None:
        row.recheck = False
        return "reapplied", apply_crl(session, _read(session, row.der), row.url, now=now)
    try:
        der = fetch(row.url)
        content = _read(session, der)
        if content.signature_valid is False:
            raise InvalidInputError(f"{row.url}: not signed by the issuer certificate in the inventory")
    except InvalidInputError as exc:
        row.failures += 1
        row.error = exc.message[:2000]
        row.due_at = now + RETRY_AFTER_FAILURE
        log.warning("CRL %s: %s", row.url, exc.message)
        return "failed", []
    row.issuer = content.issuer
    row.this_update = content.this_update
    row.next_update = content.next_update
    row.crl_number = str(content.crl_number) if content.crl_number is not None else None
    row.entries = len(content.revoked)
    row.signature_valid = content.signature_valid
    row.der = der
    row.fetched_at = now
    row.failures = 0
    row.error = None
    row.recheck = False
    # Honour nextUpdate; a list already past it (a stale publisher) is retried after the back-off.
    next_update = content.next_update or now + REFRESH_WITHOUT_NEXT_UPDATE
    row.due_at = next_update if next_update > now else now + RETRY_AFTER_FAILURE
    return "fetched", apply_crl(session, content, row.url, now=now)


def refresh_due(
    session: Session, *, now: datetime, limit: int = 100, fetch: Fetcher = fetch_crl
) -> tuple[RefreshStats, list[int]]:
    """Fetches (or re-applies) up to ``limit`` due lists; returns counts and the certificates revoked."""
    stats = RefreshStats()
    revoked: list[int] = []
    rows = session.execute(
        select(RevocationList)
        .where(or_(RevocationList.due_at <= now, RevocationList.recheck.is_(True)))
        .order_by(RevocationList.due_at, RevocationList.id)
        .limit(limit)
    ).scalars()
    for row in list(rows):
        outcome, marked = _refresh_one(session, row, fetch, now)
        if outcome == "fetched":
            stats.fetched += 1
        elif outcome == "failed":
            stats.failed += 1
        else:
            stats.reapplied += 1
        revoked.extend(marked)
    stats.revoked = len(revoked)
    session.flush()
    return stats, revoked
