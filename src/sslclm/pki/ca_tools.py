"""Certificate-authority operations a CA gateway needs beside :mod:`sslclm.pki.internal_ca`: a root that
can sign intermediates, checking CSRs and their names, building and reading CRLs, RFC 5280 path validation.

Everything raises :class:`~sslclm.errors.InvalidInputError` naming the field for bad input; a caller
that acts as a CA maps that to its own rejection error.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from sslclm.errors import InvalidInputError
from sslclm.pki.formats import load_certificate
from sslclm.pki.keys import SigningKey, generate_private_key, load_private_key_der

# A DNS name as a CA may certify: LDH labels, optionally one leading wildcard label.
_DNS_NAME = re.compile(
    r"^(\*\.)?(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
)
_MAX_CN = 64  # RFC 5280 ub-common-name
# Backdating absorbs clock skew between the CA and relying parties.
_BACKDATE = timedelta(minutes=5)


def signature_hash(key: SigningKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    """The hash to sign with: matched to the curve size for EC, none for EdDSA, otherwise SHA-256."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size > 384:
            return hashes.SHA512()
        return hashes.SHA384() if key.curve.key_size > 256 else hashes.SHA256()
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """Load a PEM or DER CSR and verify its self-signature.

    Raises ``InvalidInputError`` (field ``csr``) with "CSR signature does not verify" when the
    signature is wrong, or a parse message when it is not a CSR at all.
    """
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise InvalidInputError(
            "the CSR is not a valid PEM or DER certificate signing request", field="csr"
        ) from exc
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm, InvalidSignature):
        valid = False
    if not valid:
        raise InvalidInputError("CSR signature does not verify", field="csr")
    return csr


def normalize_names(names: Sequence[str]) -> frozenset[str]:
    """DNS names lowercased without a trailing dot, IP addresses in canonical form.

    Raises ``InvalidInputError`` (field ``names``) for anything that is neither.
    """
    normalized: set[str] = set()
    for raw in names:
        name = raw.strip().rstrip(".").lower()
        try:
            normalized.add(str(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        if len(name) > 253 or not _DNS_NAME.match(name):
            raise InvalidInputError(f"{raw!r} is not a DNS name or IP address", field="names")
        normalized.add(name)
    return frozenset(normalized)


def csr_names(csr: x509.CertificateSigningRequest) -> frozenset[str]:
    """The DNS names and IP addresses a CSR's subjectAltName asks for, normalised like
    :func:`normalize_names`; other name types are ignored. Raises ``InvalidInputError`` if the
    extension is malformed.
    """
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    except ValueError:
        raise InvalidInputError("the CSR's subjectAltName is malformed", field="csr") from None
    found = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    found += san.get_values_for_type(x509.DNSName)
    return normalize_names(found)


def create_root_ca(
    common_name: str,
    *,
    key_type: str = "EC-P256",
    valid_days: int = 3650,
    path_length: int | None = 1,
    now: datetime | None = None,
) -> tuple[SigningKey, x509.Certificate]:
    """A self-signed root that may sign ``path_length`` levels of intermediate CAs below it.

    :func:`sslclm.pki.internal_ca.create_ca` makes a root that signs end-entity certificates only;
    a two-level hierarchy (root kept aside, intermediate issuing) needs this one, then
    :func:`~sslclm.pki.internal_ca.sign_csr` with ``is_ca=True`` for the intermediate.
    """
    if not common_name or len(common_name) > _MAX_CN:
        raise InvalidInputError("the CA common name must be 1 to 64 characters", field="common_name")
    if valid_days <= 0:
        raise InvalidInputError("valid_days must be positive", field="valid_days")
    start = now or datetime.now(UTC)
    key = generate_private_key(key_type)
    public_key = key.public_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - _BACKDATE)
        .not_valid_after(start + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, signature_hash(key))
    )
    return key, cert


def subject_name(common_name: str | None) -> x509.Name:
    """A subject of just the common name (empty without one); ``InvalidInputError`` if unusable."""
    if common_name is None:
        return x509.Name([])
    if not 0 < len(common_name) <= _MAX_CN:
        raise InvalidInputError("the common name must be 1 to 64 characters", field="common_name")
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def random_serial() -> int:
    """A positive random serial number of at most 159 bits (RFC 5280 4.1.2.2; CA/B BR 7.1)."""
    return x509.random_serial_number()


def csr_to_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(Encoding.PEM)


def load_signing_key_der(der: bytes) -> SigningKey:
    """A DER private key that can sign certificates; ``InvalidInputError`` (field ``key``) otherwise."""
    key = load_private_key_der(der)
    if not isinstance(key, get_args(SigningKey)):
        raise InvalidInputError("the key cannot sign certificates", field="key")
    return cast(SigningKey, key)


def certificate_serial(certificate_pem: bytes) -> tuple[int, str]:
    """The serial number and the issuer (RFC 4514) of a PEM or DER certificate."""
    cert = load_certificate(certificate_pem)
    return cert.serial_number, cert.issuer.rfc4514_string()


@dataclass(frozen=True, slots=True)
class RevokedEntry:
    serial: int
    revoked_at: datetime
    reason_code: int = 0  # RFC 5280 CRLReason


_REASON_FLAGS: dict[int, x509.ReasonFlags] = {
    1: x509.ReasonFlags.key_compromise,
    2: x509.ReasonFlags.ca_compromise,
    3: x509.ReasonFlags.affiliation_changed,
    4: x509.ReasonFlags.superseded,
    5: x509.ReasonFlags.cessation_of_operation,
    6: x509.ReasonFlags.certificate_hold,
    8: x509.ReasonFlags.remove_from_crl,
    9: x509.ReasonFlags.privilege_withdrawn,
    10: x509.ReasonFlags.aa_compromise,
}


def build_crl(
    entries: Iterable[RevokedEntry],
    *,
    issuer_certificate: x509.Certificate,
    issuer_key: SigningKey,
    this_update: datetime,
    next_update: datetime,
    crl_number: int,
) -> bytes:
    """A DER CRL listing ``entries``, signed by the issuer.

    ``crl_number`` must grow with every CRL the issuer publishes (RFC 5280 5.2.3).
    """
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_certificate.subject)
        .last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    for entry in entries:
        revoked = (
            x509.RevokedCertificateBuilder().serial_number(entry.serial).revocation_date(entry.revoked_at)
        )
        # RFC 5280 5.3.1: the reason code extension is absent rather than "unspecified".
        flag = _REASON_FLAGS.get(entry.reason_code)
        if flag is not None:
            revoked = revoked.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(revoked.build())
    return builder.sign(issuer_key, signature_hash(issuer_key)).public_bytes(Encoding.DER)


@dataclass(frozen=True, slots=True)
class CrlFacts:
    issuer: str
    this_update: datetime
    next_update: datetime | None
    crl_number: int | None
    revoked: dict[int, int]  # serial -> reason code (0 when the entry has none)
    signature_valid: bool


def read_crl(crl: bytes, issuer_certificate_pem: bytes) -> CrlFacts:
    """Parse a PEM or DER CRL and check its signature against the issuer's certificate."""
    try:
        loaded = (
            x509.load_pem_x509_crl(crl)
            if crl.lstrip().startswith(b"-----BEGIN")
            else x509.load_der_x509_crl(crl)
        )
        issuer = x509.load_pem_x509_certificate(issuer_certificate_pem)
    except ValueError as exc:
        raise InvalidInputError("not a CRL and its issuer certificate", field="crl") from exc
    try:
        number: int | None = loaded.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    revoked: dict[int, int] = {}
    codes = {flag: code for code, flag in _REASON_FLAGS.items()}
    for entry in loaded:
        try:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
            revoked[entry.serial_number] = codes.get(reason, 0)
        except x509.ExtensionNotFound:
            revoked[entry.serial_number] = 0
    public_key = issuer.public_key()
    valid = (
        isinstance(
            public_key,
            rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey,
        )
        and loaded.is_signature_valid(public_key)
        and loaded.issuer == issuer.subject
    )
    return CrlFacts(
        issuer=loaded.issuer.rfc4514_string(),
        this_update=loaded.last_update_utc,
        next_update=loaded.next_update_utc,
        crl_number=number,
        revoked=revoked,
        signature_valid=valid,
    )


def verify_server_path(
    leaf_pem: bytes,
    *,
    intermediates_pem: Sequence[bytes],
    roots_pem: Sequence[bytes],
    name: str,
    at: datetime,
) -> list[bytes]:
    """RFC 5280 path validation of a TLS server certificate for ``name`` (DNS name or IP address).

    Returns the validated chain as DER, leaf first. Raises ``InvalidInputError`` (field ``chain``)
    with the validator's reason when no valid path to one of ``roots_pem`` exists.
    """
    try:
        leaf = x509.load_pem_x509_certificate(leaf_pem)
        intermediates = [x509.load_pem_x509_certificate(pem) for pem in intermediates_pem]
        roots = [x509.load_pem_x509_certificate(pem) for pem in roots_pem]
    except ValueError as exc:
        raise InvalidInputError(
            "the chain contains something that is not a PEM certificate", field="chain"
        ) from exc
    if not roots:
        raise InvalidInputError("no trust anchor to validate against", field="chain")
    try:
        subject: x509.DNSName | x509.IPAddress = x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        subject = x509.DNSName(name)
    verifier = PolicyBuilder().store(Store(roots)).time(at).build_server_verifier(subject)
    try:
        path = verifier.verify(leaf, intermediates)
    except VerificationError as exc:
        raise InvalidInputError(f"the certificate does not validate: {exc}", field="chain") from exc
    return [cert.public_bytes(Encoding.DER) for cert in path]
