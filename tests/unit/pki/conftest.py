"""Real certificates, keys and keystores for the pki tests, built with cryptography and pyjks directly
(not with the code under test), and written to files under ``tmp_path``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.hazmat.primitives.ciphers import Cipher, modes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
UPN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3")


@dataclass(frozen=True)
class Issued:
    key: CertificateIssuerPrivateKeyTypes
    cert: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self, fmt: str = "pkcs8", password: bytes | None = None) -> bytes:
        formats = {
            "pkcs8": serialization.PrivateFormat.PKCS8,
            "traditional": serialization.PrivateFormat.TraditionalOpenSSL,
        }
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        )
        return self.key.private_bytes(serialization.Encoding.PEM, formats[fmt], encryption)

    @property
    def pkcs8_der(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def new_key(kind: str = "ec") -> CertificateIssuerPrivateKeyTypes:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec384":
        return ec.generate_private_key(ec.SECP384R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else hashes.SHA256()


def issue(
    subject: x509.Name,
    *,
    issuer: Issued | None = None,
    key: CertificateIssuerPrivateKeyTypes | None = None,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    serial: int | None = None,
) -> Issued:
    """A certificate for ``key`` (new EC key by default), self-signed unless ``issuer`` is given."""
    key = key or new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(NOW - DAY)
        .not_valid_after(NOW + 90 * DAY)
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical)
    signer = issuer.key if issuer else key
    return Issued(key, builder.sign(signer, _hash(signer)))


def cn(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


@pytest.fixture(scope="session")
def root() -> Issued:
    key = new_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return issue(
        x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test, Org"),
                x509.NameAttribute(NameOID.COMMON_NAME, "Test Root CA"),
            ]
        ),
        key=key,
        extensions=[
            (x509.BasicConstraints(ca=True, path_length=1), True),
            (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
            (ski, False),
        ],
    )


def full_extensions(
    issuer: Issued, key: CertificateIssuerPrivateKeyTypes
) -> list[tuple[x509.ExtensionType, bool]]:
    """Every extension the parser reads, with every kind of subjectAltName."""
    return [
        (
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("www.example.com"),
                    x509.DNSName("*.example.com"),
                    x509.IPAddress(ipaddress.ip_address("192.0.2.1")),
                    x509.IPAddress(ipaddress.ip_address("2001:db8::1")),
                    x509.RFC822Name("ops@example.com"),
                    x509.UniformResourceIdentifier("https://example.com/id"),
                    x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Dir Org")])),
                    x509.OtherName(UPN_OID, b"\x0c\x10user@example.com"),
                    x509.RegisteredID(x509.ObjectIdentifier("1.2.3.4")),
                ]
            ),
            False,
        ),
        (x509.KeyUsage(True, False, True, False, False, False, False, False, False), True),
        (
            x509.ExtendedKeyUsage(
                [
                    ExtendedKeyUsageOID.SERVER_AUTH,
                    ExtendedKeyUsageOID.CLIENT_AUTH,
                    ExtendedKeyUsageOID.CODE_SIGNING,
                    ExtendedKeyUsageOID.EMAIL_PROTECTION,
                    ExtendedKeyUsageOID.TIME_STAMPING,
                    ExtendedKeyUsageOID.OCSP_SIGNING,
                    x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"),
                ]
            ),
            False,
        ),
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), False),
        (x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False),
        (
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        [x509.UniformResourceIdentifier("http://crl.example.com/ca.crl")], None, None, None
                    ),
                    x509.DistributionPoint(
                        [
                            x509.UniformResourceIdentifier("ldap://ldap.example.com/cn=ca"),
                            x509.DNSName("not-a-url.example.com"),
                        ],
                        None,
                        None,
                        None,
                    ),
                ]
            ),
            False,
        ),
        (
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.OCSP,
                        x509.UniformResourceIdentifier("http://ocsp.example.com"),
                    ),
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS,
                        x509.UniformResourceIdentifier("http://ca.example.com/ca.crt"),
                    ),
                ]
            ),
            False,
        ),
    ]


@pytest.fixture(scope="session")
def full_leaf(root: Issued) -> Issued:
    key = new_key("rsa")
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Ltd"),
            x509.NameAttribute(NameOID.COMMON_NAME, "www.example.com"),
        ]
    )
    return issue(subject, issuer=root, key=key, extensions=full_extensions(root, key), serial=0x0ABCDEF)


@pytest.fixture(scope="session")
def leaf(root: Issued) -> Issued:
    key = new_key()
    return issue(
        cn("leaf.example.com"),
        issuer=root,
        key=key,
        extensions=[(x509.SubjectAlternativeName([x509.DNSName("leaf.example.com")]), False)],
    )


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, bytes], Path]:
    """Write bytes to a real file under tmp_path; return its path."""

    def _write(name: str, data: bytes) -> Path:
        path = tmp_path / name
        path.write_bytes(data)
        return path

    return _write


# --- JCEKS -----------------------------------------------------------------------------------------
# pyjks reads JCEKS but cannot write it, so the tests build one the way the JDK's JceKeyStore does.


def _tlv(tag: int, value: bytes) -> bytes:
    n = len(value)
    if n < 0x80:
        return bytes((tag, n)) + value
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(raw))) + raw + value


def _jce_pbe_encrypt(plaintext: bytes, password: str, salt: bytes, iterations: int) -> bytes:
    """Sun's PBEWithMD5AndTripleDES (com.sun.crypto.provider.PBES1Core)."""
    halves = [salt[:4], salt[4:]]
    if halves[0] == halves[1]:
        raise ValueError("use a salt with distinct halves")
    derived = b""
    for half in halves:
        block = half
        for _ in range(iterations):
            block = hashlib.md5(block + password.encode("ascii")).digest()  # noqa: S324 - the JDK's algorithm
        derived += block
    key, iv = derived[:24], derived[24:]
    padder = padding.PKCS7(64).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(TripleDES(key), modes.CBC(iv)).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


def _java_utf(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack(">H", len(raw)) + raw


def build_jceks(
    password: str,
    *,
    key_entries: Sequence[tuple[str, bytes, Sequence[bytes]]] = (),
    trusted: Sequence[tuple[str, bytes]] = (),
    key_password: str | None = None,
) -> bytes:
    """A JCEKS keystore: (alias, PKCS#8 DER, chain DERs) key entries and (alias, DER) trusted certs."""
    out = b"\xce\xce\xce\xce" + struct.pack(">II", 2, len(key_entries) + len(trusted))
    stamp = struct.pack(">Q", int(time.time() * 1000))
    for alias, pkcs8, chain in key_entries:
        salt = os.urandom(8)
        while salt[:4] == salt[4:]:
            salt = os.urandom(8)
        encrypted = _jce_pbe_encrypt(pkcs8, key_password or password, salt, 200)
        algorithm = _tlv(
            0x30,
            _tlv(0x06, bytes.fromhex("2b060104012a021301"))  # 1.3.6.1.4.1.42.2.19.1
            + _tlv(0x30, _tlv(0x04, salt) + _tlv(0x02, (200).to_bytes(2, "big"))),
        )
        protected = _tlv(0x30, algorithm + _tlv(0x04, encrypted))
        out += struct.pack(">I", 1) + _java_utf(alias) + stamp
        out += struct.pack(">I", len(protected)) + protected + struct.pack(">I", len(chain))
        for der in chain:
            out += _java_utf("X.509") + struct.pack(">I", len(der)) + der
    for alias, der in trusted:
        out += (
            struct.pack(">I", 2)
            + _java_utf(alias)
            + stamp
            + _java_utf("X.509")
            + struct.pack(">I", len(der))
            + der
        )
    digest = hashlib.sha1(password.encode("utf-16be") + b"Mighty Aphrodite" + out).digest()  # noqa: S324
    return out + digest
