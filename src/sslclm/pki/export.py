"""Write certificates and keys out: PEM, PKCS#12 and Java KeyStore, for downloads and certificate stores."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from sslclm.errors import InvalidInputError
from sslclm.pki.keys import PrivateKey, private_key_to_pkcs8_der

__all__ = ["certificate_to_pem", "chain_to_pem", "to_jks", "to_pkcs12"]

CertificateLike = bytes | x509.Certificate
_PKCS12_KEYS = (
    rsa.RSAPrivateKey,
    dsa.DSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


def _der(cert: CertificateLike) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER) if isinstance(cert, x509.Certificate) else cert


def certificate_to_pem(der: CertificateLike) -> bytes:
    """One certificate as PEM (64-column base64, trailing newline). Accepts DER or a certificate."""
    body = base64.encodebytes(_der(der))  # 76 columns; re-wrap to the 64 RFC 7468 asks for
    flat = body.replace(b"\n", b"")
    lines = b"\n".join(flat[i : i + 64] for i in range(0, len(flat), 64))
    return b"-----BEGIN CERTIFICATE-----\n" + lines + b"\n-----END CERTIFICATE-----\n"


def chain_to_pem(ders: Iterable[CertificateLike]) -> bytes:
    """Several certificates as one PEM bundle, in the order given (leaf first for a chain)."""
    return b"".join(certificate_to_pem(der) for der in ders)


def _load(cert: CertificateLike) -> x509.Certificate:
    if isinstance(cert, x509.Certificate):
        return cert
    try:
        return x509.load_der_x509_certificate(cert)
    except (ValueError, x509.InvalidVersion):
        raise InvalidInputError("not a DER certificate", field="certificate") from None


def to_pkcs12(
    key: PrivateKey | None,
    certificate: CertificateLike | None,
    chain: Sequence[CertificateLike] = (),
    *,
    password: str | bytes | None,
    friendly_name: str | None = None,
) -> bytes:
    """A PKCS#12 (PFX) file: key, its certificate and the chain, encrypted with AES-256 if ``password``."""
    if key is not None and not isinstance(key, _PKCS12_KEYS):
        raise InvalidInputError("this key type cannot be stored in PKCS#12", field="key")
    secret = password.encode("utf-8") if isinstance(password, str) else password
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(secret) if secret else serialization.NoEncryption()
    )
    return pkcs12.serialize_key_and_certificates(
        friendly_name.encode("utf-8") if friendly_name else None,
        key,
        _load(certificate) if certificate is not None else None,
        [_load(c) for c in chain] or None,
        encryption,
    )


def to_jks(
    *,
    password: str,
    key_entries: Mapping[str, tuple[PrivateKey, Sequence[CertificateLike]]] | None = None,
    trusted_certificates: Mapping[str, CertificateLike] | None = None,
) -> bytes:
    """A Java KeyStore (JKS): private key entries (key + chain, leaf first) and trusted certificates.

    Private keys are protected with the store password, as keytool does by default.
    """
    import jks  # pyjks and its dependencies are only needed here; keep them off the import path

    if not password:
        raise InvalidInputError("a JKS keystore needs a password", field="password")
    entries: list[object] = []
    for alias, (key, chain) in (key_entries or {}).items():
        entries.append(
            jks.PrivateKeyEntry.new(alias, [_der(c) for c in chain], private_key_to_pkcs8_der(key), "pkcs8")
        )
    for alias, cert in (trusted_certificates or {}).items():
        entries.append(jks.TrustedCertEntry.new(alias, _der(cert)))
    try:
        store = jks.KeyStore.new("jks", entries)
    except jks.util.DuplicateAliasException:
        raise InvalidInputError("an alias is used twice in the keystore", field="alias") from None
    data: bytes = store.saves(password)
    return data
