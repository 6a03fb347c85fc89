"""Identity certificates of agents: the facts both sides check, and the agent's key and CSR."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from sslclm.errors import CertificateFormatError
from sslclm.pki.ca_tools import csr_to_pem
from sslclm.pki.internal_ca import build_csr
from sslclm.pki.keys import SigningKey, generate_private_key, private_key_to_pem
from sslclm.pki.parse import compute_fingerprint


@dataclass(frozen=True, slots=True)
class IdentityFacts:
    serial: str  # lowercase hex, no leading zeros
    fingerprint: str  # SHA-256 of the DER, lowercase hex
    not_after: datetime
    common_name: str | None


def certificate_facts(cert: x509.Certificate) -> IdentityFacts:
    der = cert.public_bytes(serialization.Encoding.DER)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return IdentityFacts(
        serial=format(cert.serial_number, "x"),
        fingerprint=compute_fingerprint(der),
        not_after=cert.not_valid_after_utc,
        common_name=str(names[0].value) if names else None,
    )


def identity_facts(data: bytes) -> IdentityFacts:
    """Facts of one certificate given as PEM or DER."""
    try:
        cert = (
            x509.load_pem_x509_certificate(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_certificate(data)
        )
    except ValueError:
        raise CertificateFormatError("not a readable certificate") from None
    return certificate_facts(cert)


def pem_to_der(pem: str) -> bytes:
    """The DER of the first certificate in ``pem``."""
    try:
        return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    except ValueError:
        raise CertificateFormatError("not a PEM certificate") from None


def new_identity_request(name: str, key_type: str = "EC-P256") -> tuple[bytes, str]:
    """A fresh key (PEM, unencrypted: the caller stores it 0600) and a CSR for it naming ``name``."""
    key: SigningKey = generate_private_key(key_type)
    return private_key_to_pem(key), csr_to_pem(build_csr(key, name)).decode()


def csr_for_pem_key(key_pem: bytes, common_name: str | None) -> str:
    """A CSR for an existing key (identity renewal keeps the key the agent already holds)."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    return csr_to_pem(build_csr(key, common_name)).decode()  # type: ignore[arg-type]
