"""Reading and changing single certificates: detail, metadata, archive, chain and key export."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.errors import ConflictError, InvalidInputError, NotFoundError
from sslclm.inventory.models import (
    Certificate,
    CertificateChange,
    CertificateTag,
    Issuer,
    PrivateKey,
    Sighting,
)
from sslclm.inventory.query import status_of
from sslclm.inventory.writer import private_key_aad
from sslclm.pki import certificate_to_pem, load_private_key_der
from sslclm.pki.envelope import Envelope
from sslclm.pki.keys import private_key_to_pem
from sslclm.policies.engine import evaluate_certificates

HEX = re.compile(r"^[0-9a-fA-F:]+$")
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/=-]{0,127}$")
MAX_CHAIN = 10


def get_certificate(session: Session, ref: str | int) -> Certificate:
    """Finds a certificate by id, full SHA-256 fingerprint, or a unique fingerprint prefix (8+ hex)."""
    text = str(ref).strip()
    if text.isdigit() and len(text) < 19:
        cert = session.get(Certificate, int(text))
        if cert is None:
            raise NotFoundError(f"no certificate with id {text}", field="certificate")
        return cert
    if not HEX.match(text) or len(text.replace(":", "")) < 8:
        raise InvalidInputError(
            "refer to a certificate by id or by SHA-256 fingerprint (at least 8 hex digits)",
            field="certificate",
        )
    fingerprint = text.replace(":", "").lower()
    if len(fingerprint) == 64:
        cert = session.execute(
            select(Certificate).where(Certificate.fingerprint_sha256 == fingerprint)
        ).scalar_one_or_none()
    else:
        matches = (
            session.execute(
                select(Certificate).where(Certificate.fingerprint_sha256.startswith(fingerprint)).limit(2)
            )
            .scalars()
            .all()
        )
        if len(matches) > 1:
            raise ConflictError(
                f"fingerprint prefix {fingerprint} matches several certificates", field="certificate"
            )
        cert = matches[0] if matches else None
    if cert is None:
        raise NotFoundError(f"no certificate with fingerprint {fingerprint}", field="certificate")
    return cert


def tags_of(session: Session, cert_id: int) -> list[str]:
    return list(
        session.execute(
            select(CertificateTag.tag)
            .where(CertificateTag.certificate_id == cert_id)
            .order_by(CertificateTag.tag)
        ).scalars()
    )


def certificate_detail(
    session: Session, cert: Certificate, *, now: datetime, expiring_days: int
) -> dict[str, Any]:
    issuer = session.get(Issuer, cert.issuer_id)
    sightings = session.execute(
        select(func.count()).select_from(Sighting).where(Sighting.certificate_id == cert.id)
    ).scalar_one()
    status = status_of(
        not_before=cert.not_before,
        not_after=cert.not_after,
        revoked_at=cert.revoked_at,
        superseded_by_id=cert.superseded_by_id,
        now=now,
        window=timedelta(days=expiring_days),
    )
    return {
        "id": cert.id,
        "fingerprint_sha256": cert.fingerprint_sha256,
        "fingerprint_sha1": cert.fingerprint_sha1,
        "serial": cert.serial,
        "subject": cert.subject,
        "common_name": cert.common_name,
        "issuer": issuer.dn if issuer else None,
        "issuer_id": cert.issuer_id,
        "not_before": cert.not_before,
        "not_after": cert.not_after,
        "days_left": (cert.not_after - now).days,
        "status": status.value,
        "key_algorithm": cert.key_algorithm,
        "key_size": cert.key_size,
        "key_curve": cert.key_curve,
        "signature_algorithm": cert.signature_algorithm,
        "sans": cert.sans,
        "key_usage": cert.key_usage,
        "extended_key_usage": cert.extended_key_usage,
        "is_ca": cert.is_ca,
        "path_length": cert.path_length,
        "authority_key_id": cert.authority_key_id,
        "subject_key_id": cert.subject_key_id,
        "crl_distribution_points": cert.crl_distribution_points,
        "ocsp_urls": cert.ocsp_urls,
        "ca_issuer_urls": cert.ca_issuer_urls,
        "self_signed": cert.self_signed,
        "public_key_sha256": cert.public_key_sha256,
        "has_private_key": cert.has_private_key,
        "source": cert.source,
        "owner": cert.owner,
        "team": cert.team,
        "environment": cert.environment,
        "notes": cert.notes,
        "tags": tags_of(session, cert.id),
        "revoked_at": cert.revoked_at,
        "revocation_reason": cert.revocation_reason,
        "superseded_by_id": cert.superseded_by_id,
        "archived": cert.archived_at is not None,
        "archived_at": cert.archived_at,
        "sightings": sightings,
        "created_at": cert.created_at,
        "updated_at": cert.updated_at,
        "pem": certificate_to_pem(cert.der).decode(),
    }


class MetadataPatch(BaseModel):
    """Inventory metadata a user may change; fields left out are not touched, null clears."""

    model_config = ConfigDict(extra="forbid")

    owner: str | None = Field(default=None, max_length=255)
    team: str | None = Field(default=None, max_length=255)
    environment: str | None = Field(default=None, max_length=64)
    notes: str | None = Field(default=None, max_length=10_000)
    tags: list[str] | None = Field(default=None, max_length=64)

    @field_validator("tags")
    @classmethod
    def _valid_tags(cls, tags: list[str] | None) -> list[str] | None:
        if tags is None:
            return None
        for tag in tags:
            if not TAG.match(tag):
                raise ValueError(f"tag '{tag[:40]}' must be 1-128 letters, digits or _ . : / = -")
        return sorted(set(tags))


def update_metadata(
    session: Session, ctx: AuditContext, cert: Certificate, patch: MetadataPatch, *, now: datetime
) -> dict[str, list[Any]]:
    """Applies ``patch``; records the before/after of every changed field in history and audit."""
    changes: dict[str, list[Any]] = {}
    given = patch.model_dump(exclude_unset=True)
    for name in ("owner", "team", "environment", "notes"):
        if name in given:
            value = given[name] or None
            if getattr(cert, name) != value:
                changes[name] = [getattr(cert, name), value]
                setattr(cert, name, value)
    if "tags" in given:
        before = tags_of(session, cert.id)
        after = given["tags"] or []
        if before != after:
            changes["tags"] = [before, after]
            session.execute(delete(CertificateTag).where(CertificateTag.certificate_id == cert.id))
            session.add_all(CertificateTag(certificate_id=cert.id, tag=tag) for tag in after)
    if changes:
        cert.updated_at = now
        session.add(
            CertificateChange(certificate_id=cert.id, changed_at=now, actor=ctx.actor, changes=changes)
        )
        record(session, ctx, "certificate.update", "certificate", cert.id, {"changes": changes})
        session.flush()
        # Owner, team, environment and tags decide which policy sets and exemptions apply.
        evaluate_certificates(session, [cert.id], now=now)
    return changes


def set_archived(
    session: Session, ctx: AuditContext, cert: Certificate, archived: bool, *, now: datetime
) -> None:
    if (cert.archived_at is not None) == archived:
        return
    before = cert.archived_at
    cert.archived_at = now if archived else None
    cert.updated_at = now
    changes = {"archived": [before is not None, archived]}
    session.add(CertificateChange(certificate_id=cert.id, changed_at=now, actor=ctx.actor, changes=changes))
    record(
        session,
        ctx,
        "certificate.archive" if archived else "certificate.unarchive",
        "certificate",
        cert.id,
        {},
    )
    session.flush()
    # Archiving drops its violations and score; unarchiving brings them back.
    evaluate_certificates(session, [cert.id], now=now)


def history(session: Session, cert_id: int) -> Sequence[CertificateChange]:
    return (
        session.execute(
            select(CertificateChange)
            .where(CertificateChange.certificate_id == cert_id)
            .order_by(CertificateChange.id)
        )
        .scalars()
        .all()
    )


def chain_of(session: Session, cert: Certificate) -> list[Certificate]:
    """The certificate and the issuers the inventory knows, leaf first, matched by key identifiers."""
    chain = [cert]
    seen = {cert.id}
    current = cert
    while len(chain) < MAX_CHAIN and not current.self_signed:
        issuer_dn = session.execute(select(Issuer.dn).where(Issuer.id == current.issuer_id)).scalar_one()
        stmt = select(Certificate).where(Certificate.subject == issuer_dn, Certificate.is_ca.is_(True))
        if current.authority_key_id:
            stmt = stmt.where(Certificate.subject_key_id == current.authority_key_id)
        parent = session.execute(stmt.order_by(Certificate.not_after.desc()).limit(1)).scalar_one_or_none()
        if parent is None or parent.id in seen:
            break
        chain.append(parent)
        seen.add(parent.id)
        current = parent
    return chain


def export_private_key(
    session: Session, ctx: AuditContext, cert: Certificate, envelope: Envelope, *, password: str | None = None
) -> bytes:
    """The certificate's private key as PEM (PKCS#8, encrypted when a password is given); audited."""
    key_row = session.execute(
        select(PrivateKey).where(PrivateKey.public_key_sha256 == cert.public_key_sha256)
    ).scalar_one_or_none()
    if key_row is None:
        raise NotFoundError("the inventory holds no private key for this certificate", field="certificate")
    der = envelope.decrypt(key_row.encrypted_pkcs8, private_key_aad(cert.public_key_sha256))
    pem: bytes = private_key_to_pem(load_private_key_der(der), password=password)
    record(
        session,
        ctx,
        "private-key.export",
        "certificate",
        cert.id,
        {"fingerprint": cert.fingerprint_sha256, "encrypted": password is not None},
    )
    return pem
