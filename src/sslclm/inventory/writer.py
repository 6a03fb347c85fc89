"""Turning parsed files into inventory rows: batched upserts that work on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from sslclm.core.platform import Platform
from sslclm.errors import SslClmError
from sslclm.inventory.models import Certificate, Issuer, PrivateKey, Sighting
from sslclm.pki import (
    CertificateInfo,
    load_bundle,
    match_private_keys,
    private_key_to_pkcs8_der,
    public_key_sha256,
)

# Keeps IN (...) lists well under every backend's bound-parameter limit.
IN_CHUNK = 900


@dataclass(slots=True)
class ParsedFile:
    """One file's certificates and the private keys that match them; or why it was rejected."""

    path: str
    certificates: list[CertificateInfo] = field(default_factory=list)
    keys: list[tuple[str, bytes]] = field(default_factory=list)  # (public key SHA-256, PKCS#8 DER)
    error: str | None = None
    format: str | None = None


def parse_file_bytes(path: str, data: bytes, password: str | None) -> ParsedFile:
    try:
        bundle = load_bundle(data, password=password, filename=path)
        infos = bundle.infos()
        matched = match_private_keys(bundle.certificates, bundle.private_keys) if bundle.private_keys else {}
        keys = []
        for key in {id(k): k for k in matched.values()}.values():
            keys.append((public_key_sha256(key), private_key_to_pkcs8_der(key)))
    except SslClmError as exc:
        # The reason is reported beside the path; pki's messages may already start with it.
        return ParsedFile(path, error=exc.message.removeprefix(f"{path}: "))
    except (ValueError, TypeError) as exc:
        return ParsedFile(path, error=f"unparseable: {type(exc).__name__}: {str(exc)[:200]}")
    if not infos:
        return ParsedFile(path, error="no certificate found in the file")
    return ParsedFile(path, infos, keys, format=bundle.format)


def search_text(info: CertificateInfo) -> str:
    parts = [info.common_name or "", info.subject, info.issuer, info.serial, info.fingerprint_sha256]
    parts.extend(san.split(":", 1)[-1] for san in info.sans)
    return "\n".join(parts).lower()


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


class InventoryWriter:
    """Upserts certificates, issuers, sightings and keys; keeps a per-import issuer cache."""

    def __init__(self, platform: Platform, *, source: str, sighting_kind: str) -> None:
        self.platform = platform
        self.source = source
        self.sighting_kind = sighting_kind
        self._issuer_ids: dict[str, int] = {}

    def _issuer_ids_for(self, session: Session, infos: Iterable[CertificateInfo]) -> dict[str, int]:
        wanted: dict[str, CertificateInfo] = {}
        for info in infos:
            if info.issuer not in self._issuer_ids:
                wanted.setdefault(info.issuer, info)
        if wanted:
            hashes = {issuer_hash(dn): dn for dn in wanted}
            rows = [{"dn_hash": h, "dn": dn, "common_name": _cn_of(dn)} for h, dn in hashes.items()]
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
        by_fp: dict[str, CertificateInfo] = {}
        locations: list[tuple[str, str]] = []
        for parsed in files:
            for info in parsed.certificates:
                by_fp.setdefault(info.fingerprint_sha256, info)
                locations.append((info.fingerprint_sha256, parsed.path))
        issuers = self._issuer_ids_for(session, by_fp.values())

        fingerprints = list(by_fp)
        ids = _ids_by_fingerprint(session, fingerprints)
        existing = list(ids.values())
        new_rows = [
            _certificate_row(info, issuers[info.issuer], self.source, now)
            for fp, info in by_fp.items()
            if fp not in ids
        ]
        if new_rows:
            session.execute(_insert(session, Certificate.__table__).on_conflict_do_nothing(), new_rows)
            ids.update(_ids_by_fingerprint(session, [row["fingerprint_sha256"] for row in new_rows]))
            if session.execute(select(PrivateKey.id).limit(1)).first() is not None:
                # A key imported earlier (say, alone in a .key file) may belong to a new certificate.
                new_ids = [ids[row["fingerprint_sha256"]] for row in new_rows]
                known_keys = select(PrivateKey.public_key_sha256).scalar_subquery()
                for chunk in _chunked(new_ids):
                    session.execute(
                        update(Certificate)
                        .where(Certificate.id.in_(chunk), Certificate.public_key_sha256.in_(known_keys))
                        .values(has_private_key=True)
                    )
        for chunk in _chunked(existing):
            session.execute(update(Certificate).where(Certificate.id.in_(chunk)).values(updated_at=now))

        self._record_sightings(session, locations, ids, now)
        keys_stored = self._store_keys(session, files, now)
        return WriteResult(len(new_rows), len(existing), keys_stored, ids)

    def _record_sightings(
        self, session: Session, locations: list[tuple[str, str]], ids: dict[str, int], now: datetime
    ) -> None:
        rows = {
            (ids[fp], path): {
                "certificate_id": ids[fp],
                "kind": self.sighting_kind,
                "location": path,
                "source": self.source,
                "details": {},
                "first_seen": now,
                "last_seen": now,
            }
            for fp, path in locations
        }
        if not rows:
            return
        stmt = _insert(session, Sighting.__table__)
        stmt = stmt.on_conflict_do_update(
            index_elements=["certificate_id", "kind", "location"],
            set_={"last_seen": stmt.excluded.last_seen, "source": stmt.excluded.source},
        )
        session.execute(stmt, list(rows.values()))

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


def _ids_by_fingerprint(session: Session, fingerprints: Sequence[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for chunk in _chunked(fingerprints):
        stmt = select(Certificate.fingerprint_sha256, Certificate.id).where(
            Certificate.fingerprint_sha256.in_(chunk)
        )
        for fingerprint, cert_id in session.execute(stmt):
            ids[fingerprint] = cert_id
    return ids


def private_key_aad(public_key_sha256: str) -> bytes:
    """Binds a sealed private key to its public key, so a swapped ciphertext does not open."""
    return f"private-key:{public_key_sha256}".encode()


def _cn_of(dn: str) -> str | None:
    for part in dn.split(","):
        name, _, value = part.partition("=")
        if name.strip().upper() == "CN":
            return value.strip()
    return None


def certificate_values(info: CertificateInfo, issuer_id: int, source: str, now: datetime) -> dict[str, Any]:
    """The ``certificates`` row for ``info``, for a writer that inserts one certificate itself."""
    return _certificate_row(info, issuer_id, source, now)


def _certificate_row(info: CertificateInfo, issuer_id: int, source: str, now: datetime) -> dict[str, Any]:
    return {
        "fingerprint_sha256": info.fingerprint_sha256,
        "fingerprint_sha1": info.fingerprint_sha1,
        "serial": info.serial,
        "subject": info.subject,
        "common_name": info.common_name,
        "issuer_id": issuer_id,
        "not_before": info.not_before,
        "not_after": info.not_after,
        "key_algorithm": info.key_algorithm,
        "key_size": info.key_size,
        "key_curve": info.key_curve,
        "signature_algorithm": info.signature_algorithm,
        "sans": list(info.sans),
        "key_usage": list(info.key_usage),
        "extended_key_usage": list(info.extended_key_usage),
        "is_ca": info.is_ca,
        "path_length": info.path_length,
        "authority_key_id": info.authority_key_id,
        "subject_key_id": info.subject_key_id,
        "crl_distribution_points": list(info.crl_distribution_points),
        "ocsp_urls": list(info.ocsp_urls),
        "ca_issuer_urls": list(info.ca_issuer_urls),
        "self_signed": info.self_signed,
        "public_key_sha256": info.public_key_sha256,
        "der": info.der,
        "search_text": search_text(info),
        "source": source,
        "has_private_key": False,
        "created_at": now,
        "updated_at": now,
    }
