"""Build and edit the keystores certificate stores write: PKCS#12 files and Java JKS keystores.

Inputs are PEM (what the deployment workflow hands a store); outputs are keystore bytes ready to be
written atomically. Errors: :class:`~sslclm.errors.InvalidInputError` for unusable PEM or a key that
does not belong to the certificate, :class:`~sslclm.errors.WrongPasswordError` when a password does
not open a keystore, :class:`~sslclm.errors.CertificateFormatError` when the data is no keystore of
the expected kind. Messages never contain key material or passwords.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.utils import CryptographyDeprecationWarning

from sslclm.errors import CertificateFormatError, InvalidInputError, WrongPasswordError
from sslclm.pki.export import certificate_to_pem
from sslclm.pki.formats import import_pyjks
from sslclm.pki.keys import private_key_to_pkcs8_der, spki_der

__all__ = [
    "JavaKeystore",
    "KeyMaterial",
    "KeystoreEntry",
    "build_pkcs12",
    "load_key_material",
    "read_pkcs12",
]

PRIVATE_KEY_ENTRY = "private-key"
TRUSTED_CERTIFICATE_ENTRY = "trusted-certificate"
SECRET_KEY_ENTRY = "secret-key"
# Java's own default for new PKCS#12 files since 8u301, and what openssl 3 writes: MAC with SHA-256.
_MODERN_ROUNDS = 10_000
_KEYSTORE_KEYS = (
    rsa.RSAPrivateKey,
    dsa.DSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)
_JKS_MAGIC = b"\xfe\xed\xfe\xed"
_JCEKS_MAGIC = b"\xce\xce\xce\xce"


@dataclass(frozen=True, slots=True)
class KeyMaterial:
    """A leaf certificate, its chain (issuer first) and the private key, checked to belong together."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    key: pkcs12.PKCS12PrivateKeyTypes

    @property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def chain_der(self) -> tuple[bytes, ...]:
        return tuple(cert.public_bytes(serialization.Encoding.DER) for cert in self.chain)

    def without_chain(self) -> KeyMaterial:
        return KeyMaterial(certificate=self.certificate, chain=(), key=self.key)


@dataclass(frozen=True, slots=True)
class KeystoreEntry:
    """One entry of a keystore: its certificates as PEM (leaf first) and what kind of entry it is."""

    alias: str
    kind: str
    certificates_pem: tuple[bytes, ...]
    modified_at: datetime | None = None

    @property
    def has_private_key(self) -> bool:
        return self.kind == PRIVATE_KEY_ENTRY


def _pem_certificates(data: bytes, field: str) -> list[x509.Certificate]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            return x509.load_pem_x509_certificates(data) if b"-----BEGIN CERTIFICATE" in data else []
    except (ValueError, x509.InvalidVersion):
        raise InvalidInputError(f"{field} holds an unreadable PEM certificate", field=field) from None


def load_key_material(
    certificate_pem: bytes, chain_pem: Sequence[bytes], private_key_pem: bytes | None
) -> KeyMaterial:
    """Parses and checks what an ``add`` was given; InvalidInputError names the field at fault."""
    leaf = _pem_certificates(certificate_pem, "certificate_pem")
    if len(leaf) != 1:
        raise InvalidInputError(
            "certificate_pem must hold exactly one PEM certificate", field="certificate_pem"
        )
    chain = [cert for pem in chain_pem for cert in _pem_certificates(pem, "chain_pem")]
    if not private_key_pem:
        raise InvalidInputError(
            "a keystore entry needs the private key; none was given", field="private_key_pem"
        )
    try:
        key = serialization.load_pem_private_key(private_key_pem, None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidInputError(
            "private_key_pem is not an unencrypted PEM private key", field="private_key_pem"
        ) from None
    if not isinstance(key, _KEYSTORE_KEYS):
        raise InvalidInputError("this key type cannot be stored in a keystore", field="private_key_pem")
    if spki_der(key) != spki_der(leaf[0]):
        raise InvalidInputError("private_key_pem is not the key of the certificate", field="private_key_pem")
    return KeyMaterial(certificate=leaf[0], chain=tuple(chain), key=key)


# --- PKCS#12 ---------------------------------------------------------------------------------------


def build_pkcs12(material: KeyMaterial, *, alias: str, password: str, legacy: bool = False) -> bytes:
    """A PKCS#12 file holding one key entry named ``alias`` (friendly name) with its chain.

    Modern encryption is PBES2 (PBKDF2-SHA256, AES-256-CBC) with an HMAC-SHA256 MAC, as openssl 3
    writes by default. ``legacy`` uses 3DES and a SHA-1 MAC for readers older than Java 8u301 or
    openssl 1.1, which cannot open the modern scheme.
    """
    if not password:
        raise InvalidInputError("a PKCS#12 keystore needs a password", field="password")
    builder = serialization.PrivateFormat.PKCS12.encryption_builder()
    if legacy:
        builder = builder.key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC).hmac_hash(
            hashes.SHA1()  # noqa: S303 - the only MAC old Java and openssl 1.0 readers know
        )
    else:
        builder = (
            builder.kdf_rounds(_MODERN_ROUNDS)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
        )
    return pkcs12.serialize_key_and_certificates(
        alias.encode("utf-8"),
        material.key,
        material.certificate,
        list(material.chain) or None,
        builder.build(password.encode("utf-8")),
    )


def read_pkcs12(data: bytes, password: str) -> KeystoreEntry:
    """The key entry of a PKCS#12 file: its friendly name ('' if none) and certificates, leaf first.

    A file without a key (a trust bundle) gives a trusted-certificate entry.
    """
    if not data:
        raise CertificateFormatError("the PKCS#12 file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            loaded = pkcs12.load_pkcs12(data, password.encode("utf-8"))
    except ValueError as exc:
        if "Invalid password" in str(exc):
            raise WrongPasswordError("wrong password for the PKCS#12 file") from None
        raise CertificateFormatError(f"corrupt PKCS#12 file: {str(exc).splitlines()[0][:200]}") from None
    except UnsupportedAlgorithm as exc:
        raise CertificateFormatError(f"PKCS#12 file uses an unsupported algorithm: {exc}") from None
    certificates: list[x509.Certificate] = []
    name = b""
    if loaded.cert is not None:
        certificates.append(loaded.cert.certificate)
        name = loaded.cert.friendly_name or b""
    certificates += [extra.certificate for extra in loaded.additional_certs]
    kind = PRIVATE_KEY_ENTRY if loaded.key is not None else TRUSTED_CERTIFICATE_ENTRY
    return KeystoreEntry(
        alias=name.decode("utf-8", "replace"),
        kind=kind,
        certificates_pem=tuple(certificate_to_pem(cert) for cert in certificates),
    )


# --- Java keystores (pyjks) ------------------------------------------------------------------------


def _millis(entry: Any) -> datetime | None:
    stamp = getattr(entry, "timestamp", None)
    return datetime.fromtimestamp(stamp / 1000, UTC) if isinstance(stamp, int) and stamp > 0 else None


class JavaKeystore:
    """A JKS keystore (or a JCEKS one, read only: pyjks cannot write JCEKS) loaded for editing.

    Entries other than the one being changed are kept exactly as they were, still encrypted with
    whatever key passwords they had, so editing never needs the other entries' passwords. Aliases
    match case-insensitively, as in Java (keytool stores them in lower case).
    """

    def __init__(self, jks: ModuleType, store: Any) -> None:
        self._jks = jks
        self._store = store

    @classmethod
    def new(cls) -> JavaKeystore:
        jks = import_pyjks()
        return cls(jks, jks.KeyStore.new("jks", []))

    @classmethod
    def load(cls, data: bytes, password: str) -> JavaKeystore:
        jks = import_pyjks()
        if data[:4] not in (_JKS_MAGIC, _JCEKS_MAGIC):
            hint = " (it looks like PKCS#12: use the pkcs12 store)" if data[:1] == b"\x30" else ""
            raise CertificateFormatError(f"not a JKS or JCEKS keystore{hint}")
        try:
            store = jks.KeyStore.loads(data, password, try_decrypt_keys=False)
        except jks.util.KeystoreSignatureException:
            raise WrongPasswordError("wrong password for the Java keystore") from None
        except (jks.util.KeystoreException, ValueError, IndexError, UnicodeDecodeError) as exc:
            raise CertificateFormatError(f"corrupt Java keystore: {str(exc)[:200]}") from None
        except Exception as exc:  # pyjks raises bare struct/asn1 errors on some truncations
            raise CertificateFormatError(f"corrupt Java keystore: {type(exc).__name__}") from None
        return cls(jks, store)

    @property
    def store_type(self) -> str:
        return str(self._store.store_type).upper()

    def _find(self, alias: str) -> str | None:
        wanted = alias.lower()
        return next((name for name in self._store.entries if str(name).lower() == wanted), None)

    def _entry(self, alias: str, item: Any) -> KeystoreEntry:
        if isinstance(item, self._jks.PrivateKeyEntry):
            ders = [bytes(der) for _type, der in item.cert_chain]
            kind = PRIVATE_KEY_ENTRY
        elif isinstance(item, self._jks.TrustedCertEntry):
            ders = [bytes(item.cert)]
            kind = TRUSTED_CERTIFICATE_ENTRY
        else:
            ders, kind = [], SECRET_KEY_ENTRY
        return KeystoreEntry(
            alias=alias,
            kind=kind,
            certificates_pem=tuple(certificate_to_pem(der) for der in ders),
            modified_at=_millis(item),
        )

    def entries(self) -> list[KeystoreEntry]:
        """Every entry, sorted by alias."""
        return [self._entry(name, self._store.entries[name]) for name in sorted(self._store.entries)]

    def get(self, alias: str) -> KeystoreEntry | None:
        found = self._find(alias)
        return None if found is None else self._entry(found, self._store.entries[found])

    def put_private_key(self, alias: str, material: KeyMaterial, *, key_password: str) -> bool:
        """Sets ``alias`` to a private key entry (key, leaf, chain); True if it replaced an entry."""
        self._writable()
        ders = [material.certificate_der, *material.chain_der]
        entry = self._jks.PrivateKeyEntry.new(alias, ders, private_key_to_pkcs8_der(material.key), "pkcs8")
        entry.encrypt(key_password)
        replaced = self.delete(alias)
        self._store.entries[alias] = entry
        return replaced

    def delete(self, alias: str) -> bool:
        self._writable()
        found = self._find(alias)
        if found is None:
            return False
        del self._store.entries[found]
        return True

    def dumps(self, store_password: str) -> bytes:
        self._writable()
        data: bytes = self._store.saves(store_password)
        return data

    def _writable(self) -> None:
        if self.store_type != "JKS":
            raise InvalidInputError(
                f"{self.store_type} keystores can be read but not written (pyjks writes only JKS)",
                field="store_type",
            )
