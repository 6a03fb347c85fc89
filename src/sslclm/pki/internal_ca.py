"""The platform's internal CA: a small self-signed CA for the server's own HTTPS certificate (and, through
:func:`sign_csr`, anything else the platform signs locally, such as a local-CA gateway's certificates).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from sslclm.errors import InvalidInputError
from sslclm.pki.keys import PublicKey, SigningKey, generate_private_key

__all__ = ["build_csr", "create_ca", "issue_server_certificate", "sign_csr"]

# Backdating absorbs clock skew between the platform and its clients.
_BACKDATE = dt.timedelta(minutes=5)

_EKU_BY_NAME: dict[str, x509.ObjectIdentifier] = {
    "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
    "codeSigning": ExtendedKeyUsageOID.CODE_SIGNING,
    "emailProtection": ExtendedKeyUsageOID.EMAIL_PROTECTION,
    "timeStamping": ExtendedKeyUsageOID.TIME_STAMPING,
    "OCSPSigning": ExtendedKeyUsageOID.OCSP_SIGNING,
}

_CertKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


def _now(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise InvalidInputError("the issuance time must be timezone-aware", field="now")
    return now


def _hash_for(key: SigningKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None:
    """SHA-256, or SHA-384/512 to match a larger EC curve; EdDSA (and ML-DSA) sign without one."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size > 256:
            return hashes.SHA512() if key.curve.key_size > 384 else hashes.SHA384()
        return hashes.SHA256()
    if isinstance(key, rsa.RSAPrivateKey | dsa.DSAPrivateKey):
        return hashes.SHA256()
    return None


def _key_usage(*, ca: bool, key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=key_encipherment and not ca,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _spki(public_key: PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _general_names(dns_names: Sequence[str], ip_addresses: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for name in dns_names:
        if not name or any(c.isspace() for c in name):
            raise InvalidInputError(f"{name!r} is not a DNS name", field="hostnames")
        try:
            names.append(x509.DNSName(name))
        except ValueError:  # cryptography wants A-labels (punycode) for internationalised names
            raise InvalidInputError(f"{name!r} is not an ASCII DNS name", field="hostnames") from None
    for address in ip_addresses:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(address)))
        except ValueError:
            raise InvalidInputError(f"{address!r} is not an IP address", field="ip_addresses") from None
    return names


def create_ca(
    common_name: str,
    *,
    key_type: str = "EC-P256",
    valid_days: int = 3650,
    now: dt.datetime | None = None,
) -> tuple[SigningKey, x509.Certificate]:
    """A new self-signed CA and its key: CA:TRUE with pathlen 0 (it issues only end-entity
    certificates), key usage keyCertSign and cRLSign, subject and authority key identifiers.
    """
    if not common_name or len(common_name) > 64:
        raise InvalidInputError("the CA common name must be 1 to 64 characters", field="common_name")
    if valid_days <= 0:
        raise InvalidInputError("valid_days must be positive", field="valid_days")
    start = _now(now)
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
        .not_valid_after(start + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True, key_encipherment=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, _hash_for(key))
    )
    return key, cert


def build_csr(
    key: SigningKey,
    common_name: str | None,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> x509.CertificateSigningRequest:
    """A CSR for ``key`` with subject CN (if given) and a SAN of the DNS names and IP addresses."""
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)] if common_name else []
    if common_name is not None and len(common_name) > 64:
        raise InvalidInputError("the common name must be at most 64 characters", field="common_name")
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    names = _general_names(dns_names, ip_addresses)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, _hash_for(key))


def sign_csr(
    ca_key: SigningKey,
    ca_cert: x509.Certificate,
    csr: x509.CertificateSigningRequest,
    *,
    valid_days: int,
    extended_key_usage: Sequence[str] = ("serverAuth",),
    is_ca: bool = False,
    path_length: int | None = None,
    subject: x509.Name | None = None,
    crl_urls: Sequence[str] = (),
    ocsp_urls: Sequence[str] = (),
    ca_issuer_urls: Sequence[str] = (),
    serial_number: int | None = None,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """Issue a certificate for the CSR's key, signed by the CA.

    The subject (unless ``subject`` overrides it) and the requested subjectAltName are copied
    from the CSR; no other requested extension is honoured. Validity starts a few minutes in the
    past and never outlasts the CA. ``extended_key_usage`` takes names (serverAuth, clientAuth,
    codeSigning, emailProtection, timeStamping, OCSPSigning) or dotted OIDs; empty means no EKU.

    Raises:
        InvalidInputError: the CSR signature does not verify, the CSR key cannot be certified,
            the CA key does not belong to the CA certificate, or a parameter is out of range.
    """
    try:
        valid_signature = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid_signature = False
    if not valid_signature:
        raise InvalidInputError("CSR signature does not verify", field="csr")
    if valid_days <= 0:
        raise InvalidInputError("valid_days must be positive", field="valid_days")
    if _spki(ca_key.public_key()) != _spki(ca_cert.public_key()):
        raise InvalidInputError("the CA key does not belong to the CA certificate", field="ca_key")
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInputError("the CSR's public key is not supported", field="csr") from None
    if not isinstance(public_key, _CertKey):
        raise InvalidInputError("the CSR's key type cannot be certified", field="csr")

    start = _now(now)
    not_after = min(start + dt.timedelta(days=valid_days), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(csr.subject if subject is None else subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(serial_number if serial_number is not None else x509.random_serial_number())
        .not_valid_before(max(start - _BACKDATE, ca_cert.not_valid_before_utc))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=path_length if is_ca else None), True)
        .add_extension(
            _key_usage(ca=is_ca, key_encipherment=isinstance(public_key, rsa.RSAPublicKey)), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_id(ca_cert), critical=False)
    )
    if extended_key_usage:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([_eku_oid(name) for name in extended_key_usage]), critical=False
        )
    try:
        requested = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        requested = None
    except ValueError:
        raise InvalidInputError("the CSR's subjectAltName is malformed", field="csr") from None
    if requested is not None and len(requested):
        # With an empty subject the SAN carries the identity and must be critical (RFC 5280 4.2.1.6).
        builder = builder.add_extension(
            requested, critical=not len(csr.subject if subject is None else subject)
        )
    if crl_urls:
        points = [
            x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)
            for url in crl_urls
        ]
        builder = builder.add_extension(x509.CRLDistributionPoints(points), critical=False)
    access = [
        x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(url))
        for url in ocsp_urls
    ] + [
        x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(url))
        for url in ca_issuer_urls
    ]
    if access:
        builder = builder.add_extension(x509.AuthorityInformationAccess(access), critical=False)
    return builder.sign(ca_key, _hash_for(ca_key))


def issue_server_certificate(
    ca_key: SigningKey,
    ca_cert: x509.Certificate,
    *,
    hostnames: Sequence[str],
    ip_addresses: Sequence[str] = (),
    valid_days: int = 90,
    now: dt.datetime | None = None,
) -> tuple[SigningKey, x509.Certificate]:
    """A fresh EC P-256 key and a TLS server certificate for it (SAN DNS + IP, EKU serverAuth)."""
    if not hostnames and not ip_addresses:
        raise InvalidInputError(
            "a server certificate needs at least one hostname or IP address", field="hostnames"
        )
    key = generate_private_key("EC-P256")
    first = (hostnames or ip_addresses)[0]
    csr = build_csr(key, first if len(first) <= 64 else None, hostnames, ip_addresses)
    cert = sign_csr(ca_key, ca_cert, csr, valid_days=valid_days, extended_key_usage=("serverAuth",), now=now)
    return key, cert


def _eku_oid(name: str) -> x509.ObjectIdentifier:
    oid = _EKU_BY_NAME.get(name)
    if oid is not None:
        return oid
    try:
        return x509.ObjectIdentifier(name)
    except ValueError:
        raise InvalidInputError(f"unknown extended key usage {name!r}", field="extended_key_usage") from None


def _authority_key_id(ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except (x509.ExtensionNotFound, ValueError):
        public_key = ca_cert.public_key()
        if not isinstance(public_key, _CertKey):
            raise InvalidInputError(
                "the CA certificate's key type is not supported", field="ca_cert"
            ) from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
