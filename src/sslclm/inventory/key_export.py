"""A certificate with its private key, for download: PEM bundle, PKCS#12 or Java KeyStore.

Only for certificates whose key the platform holds (it generated it, or it was imported). Every export
is audited with who, which certificate and which format; the password never leaves this module except
inside the encrypted file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from sslclm.audit.service import AuditContext, record
from sslclm.errors import InvalidInputError, NotFoundError
from sslclm.inventory.models import Certificate, PrivateKey
from sslclm.inventory.service import chain_of
from sslclm.inventory.writer import private_key_aad
from sslclm.pki import chain_to_pem, load_private_key_der, to_jks, to_pkcs12
from sslclm.pki.envelope import Envelope
from sslclm.pki.keys import PrivateKey as KeyObject
from sslclm.pki.keys import private_key_to_pem

MIN_PASSWORD_LENGTH = 10
MIN_DISTINCT_CHARACTERS = 4
MAX_PASSWORD_LENGTH = 256
_UNSAFE_NAME = re.compile(r"[^a-z0-9._-]+")


class KeyExportFormat(StrEnum):
    PEM = "pem"  # certificate, chain and key; the key encrypted when a password is given
    PKCS12 = "pkcs12"
    JKS = "jks"


_PASSWORD_REQUIRED = {KeyExportFormat.PKCS12, KeyExportFormat.JKS}
_MEDIA = {
    KeyExportFormat.PEM: ("application/x-pem-file", "pem"),
    KeyExportFormat.PKCS12: ("application/x-pkcs12", "p12"),
    KeyExportFormat.JKS: ("application/x-java-keystore", "jks"),
}


@dataclass(frozen=True, slots=True)
class KeyExport:
    content: bytes = field(repr=False)
    media_type: str
    filename: str


def check_export_password(export_format: KeyExportFormat, password: str | None) -> None:
    """Refuses a missing password where the format needs one, and any weak password."""
    if not password:
        if export_format in _PASSWORD_REQUIRED:
            raise InvalidInputError(
                f"a {export_format.value} export needs a password to protect the key", field="password"
            )
        return
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidInputError(
            f"the password is longer than {MAX_PASSWORD_LENGTH} characters", field="password"
        )
    if len(password) < MIN_PASSWORD_LENGTH or len(set(password)) < MIN_DISTINCT_CHARACTERS:
        raise InvalidInputError(
            f"the password is too weak: use at least {MIN_PASSWORD_LENGTH} characters, "
            f"{MIN_DISTINCT_CHARACTERS} of them different",
            field="password",
        )


def default_alias(cert: Certificate) -> str:
    """The keystore alias and file name: the common name made safe, else the fingerprint's start."""
    name = _UNSAFE_NAME.sub("_", (cert.common_name or "").lower()).strip("._-")
    return name[:64] or cert.fingerprint_sha256[:16]


def _held_key(session: Session, cert: Certificate, envelope: Envelope) -> KeyObject:
    row = session.execute(
        select(PrivateKey).where(PrivateKey.public_key_sha256 == cert.public_key_sha256)
    ).scalar_one_or_none()
    if row is None:
        raise NotFoundError("the platform holds no private key for this certificate", field="certificate")
    return load_private_key_der(
        envelope.decrypt(row.encrypted_pkcs8, private_key_aad(cert.public_key_sha256))
    )


def export_with_key(
    session: Session,
    ctx: AuditContext,
    cert: Certificate,
    envelope: Envelope,
    *,
    export_format: KeyExportFormat,
    password: str | None = None,
    alias: str | None = None,
) -> KeyExport:
    """The certificate, the chain the inventory knows and the private key in ``export_format``; audited.

    Raises InvalidInputError for a missing or weak password (before the key is decrypted) and
    NotFoundError when the platform does not hold the key.
    """
    check_export_password(export_format, password)
    name = default_alias(cert) if alias is None else alias.strip().lower()
    if not name or _UNSAFE_NAME.search(name):
        raise InvalidInputError("the alias may hold only letters, digits and . _ -", field="alias")
    key = _held_key(session, cert, envelope)
    chain = [c.der for c in chain_of(session, cert)]
    if export_format is KeyExportFormat.PKCS12:
        content = to_pkcs12(key, chain[0], chain[1:], password=password, friendly_name=name)
    elif export_format is KeyExportFormat.JKS:
        assert password is not None  # checked above
        content = to_jks(password=password, key_entries={name: (key, chain)})
    else:
        content = chain_to_pem(chain) + private_key_to_pem(key, password=password or None)
    record(
        session,
        ctx,
        "certificate.export-key",
        "certificate",
        cert.id,
        {
            "fingerprint": cert.fingerprint_sha256,
            "format": export_format.value,
            "encrypted": bool(password),
            "alias": name,
        },
    )
    media_type, extension = _MEDIA[export_format]
    return KeyExport(content, media_type, f"{name}.{extension}")
