"""Private keys: generate, serialise, load, and pair with the certificates they belong to."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
    PublicKeyTypes,
)

from sslclm.errors import InvalidInputError

__all__ = [
    "KEY_TYPES",
    "PrivateKey",
    "PublicKey",
    "SigningKey",
    "generate_private_key",
    "load_private_key_der",
    "match_private_keys",
    "private_key_to_pem",
    "private_key_to_pkcs8_der",
    "public_key_sha256",
    "spki_der",
]

#: Any private key cryptography can load (what a keystore may hold).
PrivateKey: TypeAlias = PrivateKeyTypes
#: Any public key.
PublicKey: TypeAlias = PublicKeyTypes
#: A private key that can sign certificates and CSRs (RSA, EC, Ed25519, Ed448, DSA).
SigningKey: TypeAlias = CertificateIssuerPrivateKeyTypes

#: The key types the platform generates, by their stable names.
KEY_TYPES: tuple[str, ...] = ("EC-P256", "EC-P384", "RSA-2048", "RSA-3072", "RSA-4096", "Ed25519")

_EC_CURVES: dict[str, ec.EllipticCurve] = {"EC-P256": ec.SECP256R1(), "EC-P384": ec.SECP384R1()}
_RSA_SIZES: dict[str, int] = {"RSA-2048": 2048, "RSA-3072": 3072, "RSA-4096": 4096}


def generate_private_key(key_type: str = "EC-P256") -> SigningKey:
    """A fresh private key of one of :data:`KEY_TYPES` (matched case-insensitively).

    Raises InvalidInputError naming ``key_type`` for anything else.
    """
    wanted = {name.upper(): name for name in KEY_TYPES}.get(key_type.upper())
    if wanted in _EC_CURVES:
        return ec.generate_private_key(_EC_CURVES[wanted])
    if wanted in _RSA_SIZES:
        return rsa.generate_private_key(public_exponent=65537, key_size=_RSA_SIZES[wanted])
    if wanted == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise InvalidInputError(
        f"unsupported key type {key_type!r}; use one of {', '.join(KEY_TYPES)}",
        field="key_type",
        key_type=key_type,
    )


def spki_der(key: PrivateKey | PublicKey | x509.Certificate) -> bytes:
    """The SubjectPublicKeyInfo DER of a private key's public half, a public key, or a certificate."""
    if isinstance(key, x509.Certificate):
        public: PublicKeyTypes = key.public_key()
    elif hasattr(key, "public_key"):
        public = key.public_key()
    else:
        public = key
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_sha256(key: PrivateKey | PublicKey | x509.Certificate) -> str:
    """SHA-256 of the SubjectPublicKeyInfo DER as lowercase hex.

    Equal to :attr:`CertificateInfo.public_key_sha256` of every certificate for this key, so it is
    how the inventory pairs stored keys with certificates.
    """
    return hashlib.sha256(spki_der(key)).hexdigest()


def match_private_keys(
    certificates: Sequence[x509.Certificate], keys: Sequence[PrivateKey]
) -> dict[int, PrivateKey]:
    """Pair certificates with the private keys among ``keys`` that they certify.

    Returns ``{index in certificates: key}`` for every certificate whose public key is one of the
    keys' public keys; certificates without a matching key are absent. A certificate whose public
    key cryptography cannot load simply has no match.
    """
    by_spki: dict[bytes, PrivateKey] = {}
    for key in keys:
        try:
            by_spki.setdefault(spki_der(key), key)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
    if not by_spki:
        return {}
    matched: dict[int, PrivateKey] = {}
    for index, cert in enumerate(certificates):
        try:
            spki = spki_der(cert)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
        found = by_spki.get(spki)
        if found is not None:
            matched[index] = found
    return matched


def private_key_to_pkcs8_der(key: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 DER (the platform encrypts it at rest with its own envelope)."""
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def private_key_to_pem(key: PrivateKey, *, password: str | bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted with the best available scheme (AES-256-CBC, PBKDF2) if ``password``."""
    if password is None:
        encryption: serialization.KeySerializationEncryption = serialization.NoEncryption()
    else:
        secret = password.encode("utf-8") if isinstance(password, str) else password
        if not secret:
            raise InvalidInputError("the export password must not be empty", field="password")
        encryption = serialization.BestAvailableEncryption(secret)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def load_private_key_der(der: bytes, *, password: str | bytes | None = None) -> PrivateKey:
    """Load a DER private key (PKCS#8, PKCS#1 RSA or SEC1 EC; encrypted PKCS#8 with ``password``).

    Raises InvalidInputError if the bytes are not such a key (the message never includes them).
    """
    secret = password.encode("utf-8") if isinstance(password, str) else password
    try:
        key: PrivateKey = serialization.load_der_private_key(der, secret)
        return key
    except TypeError as exc:  # encrypted without a password, or a password for a plain key
        raise InvalidInputError(f"cannot load DER private key: {exc}", field="key") from None
    except (ValueError, UnsupportedAlgorithm):
        reason = "wrong password or " if secret is not None else ""
        raise InvalidInputError(
            f"cannot load DER private key: {reason}not a supported private key", field="key"
        ) from None
