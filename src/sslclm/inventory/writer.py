"""Turning parsed files into inventory rows: batched upserts that work on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from sslclm.core.platform import Platform
from sslclm.inventory.bulk import ids_by_fingerprint, insert_certificates, stored_datetime, upsert_sightings
from sslclm.inventory.models import Certificate, Issuer, PrivateKey
from sslclm.inventory.parsing import (
    ROW_ISSUER,
    CertificateRow,
    ParsedFile,
    certificate_row,
    parse_file_bytes,
    search_text,
)
from sslclm.policies.incremental import certificates_written

# Parsing lives in sslclm.inventory.parsing (parser processes import only it); callers import
# these names from here too.
__all__ = [
    "ROW_ISSUER",
    "CertificateRow",
    "InventoryWriter",
    "ParsedFile",
    "WriteResult",
    "certificate_row",
    "common_name_of",
    "issuer_hash",
    "parse_file_bytes",
    "private_key_aad",
    "search_text",
]

# Keeps IN (...) lists well under every backend's bound-parameter limit.
IN_CHUNK = 900


def _rows_of(parsed: ParsedFile) -> Iterable[CertificateRow]:
    yield from parsed.rows
    for info in parsed.certificates:
        yield certificate_row(info)


def issuer_hash(dn: str) -> str:
    return hashlib.sha256(dn.encode()).hexdigest()


def _insert(session: Session, table: Any) -> Any:
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def _chunked(items: Sequence[Any], size: int = IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True, slots=True)
class WriteResult:
    inserted: int
    updated: int
    keys_stored: int
    certificate_ids: dict[str, int]  # fingerprint -> id, for the caller's follow-up rows
    new_ids: tuple[int, ...] = ()  # the certificates this write inserted


class InventoryWriter:
    """Upserts certificates, issuers, sightings and keys; keeps a per-import issuer cache."""

    def __init__(
        self, platform: Platform, *, source: str, sighting_kind: str, evaluate_policies: bool = True
    ) -> None:
        self.platform = platform
        self.source = source
        self.sighting_kind = sighting_kind
        # False when the caller evaluates the batch itself, after writing facts the checks read.
        self.evaluate_policies = evaluate_policies
        self._issuer_ids: dict[str, int] = {}

    def _issuer_ids_for(self, session: Session, issuer_dns: Iterable[str]) -> dict[str, int]:
        wanted = {dn for dn in issuer_dns if dn not in self._issuer_ids}
        if wanted:
            hashes = {issuer_hash(dn): dn for dn in wanted}
            rows = [{"dn_hash": h, "dn": dn, "common_name": common_name_of(dn)} for h, dn in hashes.items()]
            session.execute(_insert(session, Issuer.__table__).on_conflict_do_nothing(), rows)
            for chunk in _chunked(list(hashes)):
                for issuer_id, dn_hash in session.execute(
                    select(Issuer.id, Issuer.dn_hash).where(Issuer.dn_hash.in_(chunk))
                ):
                    self._issuer_ids[hashes[dn_hash]] = issuer_id
        return self._issuer_ids

    def write(
        self, session: Session, files: Sequence[ParsedFile], *, now: datetime | None = None
    ) -> WriteResult:
        now = now or self.platform.clock()
        by_fp: dict[str, CertificateRow] = {}
        locations: list[tuple[str, str]] = []
        for parsed in files:
            for row in _rows_of(parsed):
                fingerprint = row[0]
                if fingerprint not in by_fp:
                    by_fp[fingerprint] = row
                locations.append((fingerprint, parsed.path))
        issuers = self._issuer_ids_for(session, {row[ROW_ISSUER] for row in by_fp.values()})

        ids = ids_by_fingerprint(session, list(by_fp))
        existing = list(ids.values())
        stamp = stored_datetime(now)
        # The issuer's id in place of its DN, then source, has_private_key, created_at, updated_at.
        tail = (self.source, False, stamp, stamp)
        new_rows = [
            (*row[:ROW_ISSUER], issuers[row[ROW_ISSUER]], *row[ROW_ISSUER + 1 :], *tail)
            for fingerprint, row in by_fp.items()
            if fingerprint not in ids
        ]
        if new_rows:
            ids.update(insert_certificates(session, new_rows))
            if session.execute(select(PrivateKey.id).limit(1)).first() is not None:
                # A key imported earlier (say, alone in a .key file) may belong to a new certificate.
                created_ids = [ids[row[0]] for row in new_rows]
                known_keys = select(PrivateKey.public_key_sha256).scalar_subquery()
                for chunk in _chunked(created_ids):
                    session.execute(
                        update(Certificate)
                        .where(Certificate.id.in_(chunk), Certificate.public_key_sha256.in_(known_keys))
                        .values(has_private_key=True)
                    )
        for chunk in _chunked(existing):
            session.execute(update(Certificate).where(Certificate.id.in_(chunk)).values(updated_at=now))

        new_ids = tuple(ids[row[0]] for row in new_rows)
        self._record_sightings(session, locations, ids, stamp, new_ids)
        keys_stored = self._store_keys(session, files, now)
        if self.evaluate_policies and new_ids:
            # Facts of certificates already stored do not change on a re-import: only new ones.
            certificates_written(session, new_ids, now=now)
        return WriteResult(len(new_rows), len(existing), keys_stored, ids, new_ids)

    def _record_sightings(
        self,
        session: Session,
        locations: list[tuple[str, str]],
        ids: dict[str, int],
        stamp: str,
        new_ids: Sequence[int],
    ) -> None:
        # One row per (certificate, location): ON CONFLICT may not touch the same row twice.
        rows = {
            (ids[fp], path): (ids[fp], self.sighting_kind, path, self.source, "{}", stamp, stamp)
            for fp, path in locations
        }
        upsert_sightings(session, list(rows.values()), set(new_ids))

    def _store_keys(self, session: Session, files: Sequence[ParsedFile], now: datetime) -> int:
        keys = {pub: der for parsed in files for pub, der in parsed.keys}
        if not keys:
            return 0
        envelope = self.platform.envelope
        rows = [
            {
                "public_key_sha256": pub,
                "encrypted_pkcs8": envelope.encrypt(der, private_key_aad(pub)),
                "created_at": now,
            }
            for pub, der in keys.items()
        ]
        session.execute(_insert(session, PrivateKey.__table__).on_conflict_do_nothing(), rows)
        for chunk in _chunked(list(keys)):
            session.execute(
                update(Certificate)
                .where(Certificate.public_key_sha256.in_(chunk))
                .values(has_private_key=True)
            )
        return len(keys)


def private_key_aad(public_key_sha256: str) -> bytes:
    """Binds a sealed private key to its public key, so a swapped ciphertext does not open."""
    return f"private-key:{public_key_sha256}".encode()


def common_name_of(dn: str) -> str | None:
    """The CN of an RFC 4514 distinguished name, if it has one."""
    for part in dn.split(","):
        name, _, value = part.partition("=")
        if name.strip().upper() == "CN":
            return value.strip()
    return None
