"""The local CA's own key material: a root and an issuing CA, created once and kept sealed in state.

Both are created together and stored as one state entry with ``put_if_absent``, so two workers that
start at once agree on a single hierarchy and no half-created CA is ever visible.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sslclm.errors import ConnectorError, IntegrityError, InvalidInputError
from sslclm.pki import (
    SigningKey,
    build_csr,
    certificate_to_pem,
    extract_info,
    generate_private_key,
    load_certificate,
    private_key_to_pkcs8_der,
    public_key_sha256,
    sign_csr,
)
from sslclm.pki.ca_tools import create_root_ca, load_signing_key_der
from sslclm.spi import ConnectorContext

from .config import LocalCAConfig

if TYPE_CHECKING:
    from cryptography import x509

STATE_KEY = "ca"
_FORMAT = 1
_ROOT_KEY_PURPOSE = "local-ca:root-key"
_ISSUING_KEY_PURPOSE = "local-ca:issuing-key"


@dataclass(frozen=True, slots=True)
class Authority:
    """The loaded hierarchy; only the issuing key is unsealed (the root key stays at rest)."""

    root_certificate: x509.Certificate
    root_pem: bytes
    issuing_certificate: x509.Certificate
    issuing_pem: bytes
    issuing_key: SigningKey = field(repr=False)
    key_type: str = ""

    def describe(self) -> dict[str, Any]:
        return {
            "key_type": self.key_type,
            "root_subject": self.root_certificate.subject.rfc4514_string(),
            "root_not_after": self.root_certificate.not_valid_after_utc.isoformat(),
            "root_fingerprint_sha256": extract_info(self.root_certificate).fingerprint_sha256,
            "issuing_subject": self.issuing_certificate.subject.rfc4514_string(),
            "issuing_not_after": self.issuing_certificate.not_valid_after_utc.isoformat(),
            "issuing_fingerprint_sha256": extract_info(self.issuing_certificate).fingerprint_sha256,
        }


def create_record(config: LocalCAConfig, context: ConnectorContext, now: datetime) -> bytes:
    """A fresh root and issuing CA, keys sealed, as the state entry's bytes."""
    try:
        root_key, root = create_root_ca(
            f"{config.name} Root CA",
            key_type=config.key_type,
            valid_days=config.root_validity_days,
            path_length=1,
            now=now,
        )
        issuing_key = generate_private_key(config.key_type)
        csr = build_csr(issuing_key, f"{config.name} Issuing CA")
        issuing = sign_csr(
            root_key,
            root,
            csr,
            valid_days=config.issuing_validity_days,
            extended_key_usage=(),
            is_ca=True,
            path_length=0,
            now=now,
        )
    except InvalidInputError as exc:
        raise ConnectorError(f"cannot create the local CA: {exc.message}", retryable=False) from exc
    record = {
        "format": _FORMAT,
        "key_type": config.key_type,
        "root_certificate": certificate_to_pem(root).decode(),
        "issuing_certificate": certificate_to_pem(issuing).decode(),
        "root_key": _seal(context, private_key_to_pkcs8_der(root_key), _ROOT_KEY_PURPOSE),
        "issuing_key": _seal(context, private_key_to_pkcs8_der(issuing_key), _ISSUING_KEY_PURPOSE),
        "created_at": now.isoformat(),
    }
    return json.dumps(record, sort_keys=True).encode()


def _seal(context: ConnectorContext, plaintext: bytes, purpose: str) -> str:
    return base64.b64encode(context.secrets.seal(plaintext, purpose)).decode()


def load_record(raw: bytes, context: ConnectorContext) -> Authority:
    """Parse the state entry and unseal the issuing key.

    Raises ``ConnectorError`` (not retryable) when the entry is damaged or the key cannot be
    unsealed (e.g. the platform's master key changed): retrying cannot fix either.
    """
    try:
        record = json.loads(raw)
        if record.get("format") != _FORMAT:
            raise ValueError(f"unknown format {record.get('format')!r}")
        root_pem = record["root_certificate"].encode()
        issuing_pem = record["issuing_certificate"].encode()
        sealed = base64.b64decode(record["issuing_key"])
        root = load_certificate(root_pem)
        issuing = load_certificate(issuing_pem)
    except (ValueError, KeyError, TypeError, InvalidInputError) as exc:
        raise ConnectorError(f"the local CA's stored state is damaged: {exc}", retryable=False) from exc
    try:
        key_der = context.secrets.unseal(sealed, _ISSUING_KEY_PURPOSE)
    except IntegrityError as exc:
        raise ConnectorError(
            f"the local CA's key cannot be decrypted ({exc.message}); was the master key changed?",
            retryable=False,
        ) from exc
    try:
        key = load_signing_key_der(key_der)
    except InvalidInputError as exc:
        raise ConnectorError(
            f"the local CA's stored key is unusable: {exc.message}", retryable=False
        ) from exc
    if public_key_sha256(key) != public_key_sha256(issuing):
        raise ConnectorError("the local CA's stored key does not match its certificate", retryable=False)
    return Authority(
        root_certificate=root,
        root_pem=root_pem,
        issuing_certificate=issuing,
        issuing_pem=issuing_pem,
        issuing_key=key,
        key_type=str(record.get("key_type", "")),
    )
