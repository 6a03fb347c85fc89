from __future__ import annotations

import datetime as dt
import hashlib
import warnings

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import ExtensionOID, NameOID

from sslclm.pki import CertificateInfo, compute_fingerprint, extract_info, parse_certificate

from .conftest import DAY, NOW, Issued, cn, issue


def test_every_field_of_a_certificate_with_all_extensions(full_leaf: Issued, root: Issued) -> None:
    info = extract_info(full_leaf.cert)
    der = full_leaf.der
    spki = full_leaf.cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    root_ski = root.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest

    assert info.fingerprint_sha256 == full_leaf.cert.fingerprint(hashes.SHA256()).hex()
    assert info.fingerprint_sha1 == hashlib.sha1(der).hexdigest()  # noqa: S324
    assert info.serial == "abcdef"
    assert info.subject == "CN=www.example.com,O=Example Ltd"
    assert info.issuer == "CN=Test Root CA,O=Test\\, Org,C=DE"
    assert info.common_name == "www.example.com"
    assert info.not_before == NOW - DAY
    assert info.not_after == NOW + 90 * DAY
    assert info.not_before.tzinfo is not None and info.not_before.utcoffset() == dt.timedelta(0)
    assert (info.key_algorithm, info.key_size, info.key_curve) == ("RSA", 2048, None)
    assert info.signature_algorithm == "ecdsa-with-SHA256"
    assert info.sans == (
        "DNS:www.example.com",
        "DNS:*.example.com",
        "IP:192.0.2.1",
        "IP:2001:db8::1",
        "email:ops@example.com",
        "URI:https://example.com/id",
        "dirName:O=Dir Org",
        "other:1.3.6.1.4.1.311.20.2.3:user@example.com",
        "other:registeredID:1.2.3.4",
    )
    assert info.dns_names == ("www.example.com", "*.example.com")
    assert info.key_usage == ("digital_signature", "key_encipherment")
    assert info.extended_key_usage == (
        "serverAuth",
        "clientAuth",
        "codeSigning",
        "emailProtection",
        "timeStamping",
        "OCSPSigning",
        "1.3.6.1.4.1.99999.1",
    )
    assert info.is_ca is False
    assert info.path_length is None
    assert info.authority_key_id == root_ski.hex()
    assert (
        info.subject_key_id
        == x509.SubjectKeyIdentifier.from_public_key(full_leaf.key.public_key()).digest.hex()
    )
    assert info.crl_distribution_points == ("http://crl.example.com/ca.crl", "ldap://ldap.example.com/cn=ca")
    assert info.ocsp_urls == ("http://ocsp.example.com",)
    assert info.ca_issuer_urls == ("http://ca.example.com/ca.crt",)
    assert info.self_signed is False
    assert info.public_key_sha256 == hashlib.sha256(spki).hexdigest()
    assert info.der == der


def test_ca_certificate_is_self_signed_with_basic_constraints(root: Issued) -> None:
    info = extract_info(root.cert)
    assert info.self_signed is True
    assert info.is_ca is True
    assert info.path_length == 1
    assert info.key_usage == ("key_cert_sign", "crl_sign")
    assert info.subject == info.issuer == "CN=Test Root CA,O=Test\\, Org,C=DE"
    assert info.authority_key_id is None
    assert info.subject_key_id is not None


def test_same_name_but_foreign_signature_is_not_self_signed(root: Issued) -> None:
    # Same subject and issuer name as the root, but signed by another key.
    impostor = issue(
        root.cert.subject, issuer=Issued(key=ec.generate_private_key(ec.SECP256R1()), cert=root.cert)
    )
    info = extract_info(impostor.cert)
    assert info.subject == info.issuer
    assert info.self_signed is False


@pytest.mark.parametrize(
    ("key", "algorithm", "size", "curve", "signature"),
    [
        (rsa.generate_private_key(65537, 3072), "RSA", 3072, None, "sha256WithRSAEncryption"),
        (ec.generate_private_key(ec.SECP256R1()), "EC", 256, "secp256r1", "ecdsa-with-SHA256"),
        (ec.generate_private_key(ec.SECP384R1()), "EC", 384, "secp384r1", "ecdsa-with-SHA256"),
        (ec.generate_private_key(ec.SECP521R1()), "EC", 521, "secp521r1", "ecdsa-with-SHA256"),
        (ec.generate_private_key(ec.SECP256K1()), "EC", 256, "secp256k1", "ecdsa-with-SHA256"),
        (ec.generate_private_key(ec.BrainpoolP256R1()), "EC", 256, "brainpoolP256r1", "ecdsa-with-SHA256"),
        (ed25519.Ed25519PrivateKey.generate(), "Ed25519", 256, None, "ed25519"),
        (ed448.Ed448PrivateKey.generate(), "Ed448", 456, None, "ed448"),
        (dsa.generate_private_key(2048), "DSA", 2048, None, "dsa-with-sha256"),
    ],
    ids=["rsa3072", "p256", "p384", "p521", "k256", "brainpool", "ed25519", "ed448", "dsa"],
)
def test_key_algorithm_size_and_curve(
    key: CertificateIssuerPrivateKeyTypes, algorithm: str, size: int, curve: str | None, signature: str
) -> None:
    issued = issue(cn("key.example"), key=key)
    info = extract_info(issued.cert)
    assert (info.key_algorithm, info.key_size, info.key_curve) == (algorithm, size, curve)
    assert info.signature_algorithm == signature
    assert info.self_signed is True
    assert (
        info.public_key_sha256
        == hashlib.sha256(
            key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).hexdigest()
    )


def test_minimal_certificate_has_empty_optional_fields() -> None:
    issued = issue(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "No CN")]))
    info = extract_info(issued.cert)
    assert info.common_name is None
    assert info.sans == info.key_usage == info.extended_key_usage == ()
    assert info.crl_distribution_points == info.ocsp_urls == info.ca_issuer_urls == ()
    assert info.authority_key_id is None and info.subject_key_id is None
    assert info.is_ca is False and info.path_length is None


def test_last_common_name_wins_and_special_characters_are_escaped() -> None:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "outer"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, 'a+b,"c"; <d>'),
            x509.NameAttribute(NameOID.COMMON_NAME, "inner.example"),
        ]
    )
    info = extract_info(issue(name).cert)
    assert info.common_name == "inner.example"
    assert info.subject == name.rfc4514_string()


_Attr = x509.NameAttribute
_AWKWARD_NAMES = {
    "plain": [_Attr(NameOID.COUNTRY_NAME, "XX"), _Attr(NameOID.COMMON_NAME, "host.example")],
    "every short name": [
        _Attr(NameOID.DOMAIN_COMPONENT, "example"),
        _Attr(NameOID.COUNTRY_NAME, "DE"),
        _Attr(NameOID.STATE_OR_PROVINCE_NAME, "Bayern"),
        _Attr(NameOID.LOCALITY_NAME, "München"),
        _Attr(NameOID.STREET_ADDRESS, "Hauptstraße 1"),
        _Attr(NameOID.ORGANIZATION_NAME, "Org (Test) = 1?"),
        _Attr(NameOID.ORGANIZATIONAL_UNIT_NAME, "Unit/2:3"),
        _Attr(NameOID.USER_ID, "u123"),
        _Attr(NameOID.COMMON_NAME, "outer"),
        _Attr(NameOID.COMMON_NAME, "inner"),
    ],
    "specials": [_Attr(NameOID.ORGANIZATION_NAME, 'a+b,"c"; <d>\\e')],
    "leading hash and spaces": [
        _Attr(NameOID.ORGANIZATION_NAME, "#1"),
        _Attr(NameOID.ORGANIZATIONAL_UNIT_NAME, " lead"),
        _Attr(NameOID.COMMON_NAME, "trail "),
    ],
    "one space": [_Attr(NameOID.COMMON_NAME, " ")],
    "PrintableString": [_Attr(NameOID.COMMON_NAME, "Host 1 (a-b) = c?", _ASN1Type.PrintableString)],
    "IA5String": [
        _Attr(NameOID.DOMAIN_COMPONENT, "com"),
        _Attr(NameOID.COMMON_NAME, "x", _ASN1Type.IA5String),
    ],
    "BMPString": [_Attr(NameOID.COMMON_NAME, "bmp.example", _ASN1Type.BMPString)],
    "other OID": [_Attr(NameOID.EMAIL_ADDRESS, "ops@example.com"), _Attr(NameOID.SERIAL_NUMBER, "42")],
    "value over 127 bytes": [_Attr(NameOID.ORGANIZATION_NAME, "o" * 200), _Attr(NameOID.COMMON_NAME, "c")],
    "long value": [_Attr(NameOID.ORGANIZATIONAL_UNIT_NAME, "u" * 60), _Attr(NameOID.COMMON_NAME, "c" * 64)],
    "multi-valued RDN": [
        x509.RelativeDistinguishedName([_Attr(NameOID.COMMON_NAME, "a"), _Attr(NameOID.USER_ID, "b")])
    ],
    "empty": [],
}


@pytest.mark.parametrize("label", sorted(_AWKWARD_NAMES))
def test_names_read_from_der_match_cryptographys_rfc4514_strings(label: str) -> None:
    name = x509.Name(_AWKWARD_NAMES[label])
    cert = issue(name).cert
    common_names = [a.value for a in name if a.oid == NameOID.COMMON_NAME]
    info = extract_info(cert)
    assert info.subject == name.rfc4514_string()
    assert info.common_name == (common_names[-1] if common_names else None)


def test_key_usage_encipher_and_decipher_only_need_key_agreement() -> None:
    ku = x509.KeyUsage(False, False, False, False, True, False, False, True, False)
    info = extract_info(issue(cn("ka.example"), extensions=[(ku, True)]).cert)
    assert info.key_usage == ("key_agreement", "encipher_only")


def test_malformed_extension_loses_only_its_own_fields(root: Issued) -> None:
    broken_san = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x05\x82\x09abc")
    issued = issue(
        cn("broken.example"),
        issuer=root,
        extensions=[
            (broken_san, False),
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    with pytest.raises(ValueError):
        _ = issued.cert.extensions  # cryptography rejects the whole list
    info = extract_info(issued.cert)
    assert info.sans == ()
    assert info.extended_key_usage == ("serverAuth",)
    assert info.common_name == "broken.example"
    assert info.fingerprint_sha256 == compute_fingerprint(issued.der)


def test_serial_number_is_lowercase_hex_without_padding() -> None:
    info = extract_info(issue(cn("serial.example"), serial=0x00FF_0001).cert)
    assert info.serial == "ff0001"


def test_parse_certificate_and_extract_info_agree(full_leaf: Issued) -> None:
    from_der = parse_certificate(full_leaf.der)
    from_object = extract_info(full_leaf.cert)
    with_der = extract_info(full_leaf.cert, der=full_leaf.der)
    assert from_der == from_object == with_der
    assert isinstance(from_der, CertificateInfo)


def test_repeated_issuer_names_give_identical_strings(root: Issued) -> None:
    first = extract_info(issue(cn("one.example"), issuer=root).cert)
    second = extract_info(issue(cn("two.example"), issuer=root).cert)
    assert first.issuer == second.issuer == root.cert.subject.rfc4514_string()
    assert (first.subject, second.subject) == ("CN=one.example", "CN=two.example")


def test_compute_fingerprint_is_sha256_of_der(leaf: Issued) -> None:
    assert compute_fingerprint(leaf.der) == leaf.cert.fingerprint(hashes.SHA256()).hex()


def test_parse_certificate_rejects_non_der() -> None:
    with pytest.raises(ValueError):
        parse_certificate(b"\x30\x03\x02\x01\x01")


def _resign_with_sha1(issued: Issued) -> bytes:
    """The certificate re-signed with sha1WithRSAEncryption (cryptography no longer signs with SHA-1)."""
    sha256_rsa = bytes.fromhex("06092a864886f70d01010b")
    sha1_rsa = bytes.fromhex("06092a864886f70d010105")
    cert = issued.cert
    tbs = cert.tbs_certificate_bytes.replace(sha256_rsa, sha1_rsa)
    assert isinstance(issued.key, rsa.RSAPrivateKey)
    signature = issued.key.sign(tbs, asym_padding.PKCS1v15(), hashes.SHA1())  # noqa: S303
    der = issued.der.replace(cert.tbs_certificate_bytes, tbs).replace(sha256_rsa, sha1_rsa)
    return der.replace(cert.signature, signature)


def test_sha1_self_signed_root_is_recognised() -> None:
    # Many trust stores still hold SHA-1 roots; cryptography's own check refuses SHA-1 signatures.
    issued = issue(cn("Legacy SHA-1 Root"), key=rsa.generate_private_key(65537, 2048))
    der = _resign_with_sha1(issued)
    info = parse_certificate(der)
    assert info.signature_algorithm == "sha1WithRSAEncryption"
    assert info.self_signed is True
    tampered = bytearray(der)
    tampered[-5] ^= 0xFF  # break the signature
    assert parse_certificate(bytes(tampered)).self_signed is False


def test_certificates_cryptography_warns_about_still_parse_with_warnings_as_errors() -> None:
    # A three-letter country code: cryptography warns when it builds the name (an error in this suite).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "USA", _validate=False),
                x509.NameAttribute(NameOID.COMMON_NAME, "usa.example"),
            ]
        )
        issued = issue(name)
    with pytest.raises(UserWarning):
        _ = x509.load_der_x509_certificate(issued.der).subject
    info = parse_certificate(issued.der)
    assert info.subject == "CN=usa.example,C=USA"
    assert info.common_name == "usa.example"
