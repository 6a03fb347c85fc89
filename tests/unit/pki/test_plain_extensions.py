"""Extensions read from DER give exactly what cryptography's objects give, and odd ones go to cryptography."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import partial

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, ExtensionOID

from sslclm.pki import _der, extract_info, parse
from sslclm.pki._plain_extensions import read_plain_extensions
from sslclm.pki.info import CertificateInfo

from .conftest import Issued, cn, full_extensions, issue, new_key

Extensions = list[tuple[x509.ExtensionType, bool]]


def _raw(oid: x509.ObjectIdentifier, value: bytes) -> tuple[x509.ExtensionType, bool]:
    return x509.UnrecognizedExtension(oid, value), False


def _uri(url: str) -> x509.UniformResourceIdentifier:
    return x509.UniformResourceIdentifier(url)


PLAIN: dict[str, Extensions] = {
    "none": [],
    "a web server's": [
        (x509.SubjectAlternativeName([x509.DNSName("a.example"), x509.DNSName("*.b.example")]), False),
        (x509.KeyUsage(True, False, True, False, False, False, False, False, False), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.AuthorityKeyIdentifier(b"\x01" * 20, None, None), False),
        (x509.SubjectKeyIdentifier(b"\x02" * 20), False),
        (
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([_uri("http://crl.example/a.crl")], None, None, None)]
            ),
            False,
        ),
        (
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(AuthorityInformationAccessOID.OCSP, _uri("http://ocsp.example")),
                    x509.AccessDescription(
                        AuthorityInformationAccessOID.CA_ISSUERS, _uri("http://ca.example/c")
                    ),
                ]
            ),
            False,
        ),
    ],
    "IP, e-mail and URI names": [
        (
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
                    x509.IPAddress(ipaddress.ip_address("2001:db8::7")),
                    x509.RFC822Name("ops@example.com"),
                    x509.UniformResourceIdentifier("spiffe://example/ns/a"),
                ]
            ),
            False,
        )
    ],
    "a CA's": [
        (x509.BasicConstraints(ca=True, path_length=0), True),
        (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
    ],
    "a CA without a path length": [(x509.BasicConstraints(ca=True, path_length=None), True)],
    "key agreement, encipher only": [
        (x509.KeyUsage(False, False, False, False, True, False, False, True, False), True)
    ],
    "key agreement, decipher only": [
        (x509.KeyUsage(False, False, False, False, True, False, False, False, True), True)
    ],
    "an AKI without a key identifier": [_raw(ExtensionOID.AUTHORITY_KEY_IDENTIFIER, b"\x30\x00")],
    "two CRL URLs in two points": [
        (
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint([_uri("http://crl.example/1")], None, None, None),
                    x509.DistributionPoint([_uri("ldap://crl.example/2")], None, None, None),
                ]
            ),
            False,
        )
    ],
    "an AIA method we do not record": [
        (
            x509.AuthorityInformationAccess(
                [
                    x509.AccessDescription(
                        x509.ObjectIdentifier("1.3.6.1.5.5.7.48.5"), _uri("http://repo.example")
                    )
                ]
            ),
            False,
        )
    ],
    "a 200-byte DNS name list": [
        (x509.SubjectAlternativeName([x509.DNSName(f"host{i:03}.example.com") for i in range(40)]), False)
    ],
}

ODD: dict[str, Extensions] = {
    "an unknown EKU": [(x509.ExtendedKeyUsage([x509.ObjectIdentifier("1.3.6.1.4.1.99999.1")]), False)],
    "a SAN with a non-ASCII DNS name": [
        _raw(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x05\x82\x03\xc3\xa9x")
    ],
    "an empty SAN": [_raw(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x00")],
    "a SAN cut short": [_raw(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x05\x82\x09abc")],
    "an IP address of 5 bytes": [
        _raw(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x07\x87\x05\x01\x02\x03\x04\x05")
    ],
    "encipher only without key agreement": [_raw(ExtensionOID.KEY_USAGE, b"\x03\x02\x00\x01")],
    "a key usage with padding bits set": [_raw(ExtensionOID.KEY_USAGE, b"\x03\x02\x05\xa1")],
    "cA FALSE spelled out": [_raw(ExtensionOID.BASIC_CONSTRAINTS, b"\x30\x03\x01\x01\x00")],
    "a path length without cA": [_raw(ExtensionOID.BASIC_CONSTRAINTS, b"\x30\x03\x02\x01\x01")],
    "a path length of 300": [_raw(ExtensionOID.BASIC_CONSTRAINTS, b"\x30\x07\x01\x01\xff\x02\x02\x01\x2c")],
    "an AKI naming its issuer": [
        (
            x509.AuthorityKeyIdentifier(b"\x03" * 20, [x509.DirectoryName(cn("Issuer"))], 7),
            False,
        )
    ],
    "a CRL point naming a directory": [
        (
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.DirectoryName(cn("crl"))], None, None, None)]
            ),
            False,
        )
    ],
    "a CRL point with reasons": [
        (
            x509.CRLDistributionPoints(
                [
                    x509.DistributionPoint(
                        [_uri("http://crl.example/r")],
                        None,
                        frozenset({x509.ReasonFlags.key_compromise}),
                        None,
                    )
                ]
            ),
            False,
        )
    ],
    "an AIA location that is a directory name": [
        (
            x509.AuthorityInformationAccess(
                [x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.DirectoryName(cn("ocsp")))]
            ),
            False,
        )
    ],
}


@pytest.fixture(scope="module")
def issuer() -> Issued:
    return issue(
        cn("Plain Extensions CA"), extensions=[(x509.BasicConstraints(ca=True, path_length=None), True)]
    )


def _through_cryptography(monkeypatch: pytest.MonkeyPatch, cert: x509.Certificate) -> CertificateInfo:
    def not_plain(der: bytes, extensions: tuple[int, int] | None) -> None:
        raise _der.DerError("read through cryptography for the comparison")

    with monkeypatch.context() as patch:
        patch.setattr(parse, "read_plain_extensions", not_plain)
        return extract_info(cert)


def _read_plain(cert: x509.Certificate) -> None:
    der = cert.public_bytes(Encoding.DER)
    read_plain_extensions(der, _der.certificate_layout(der).extensions)


def _leaf(issuer: Issued, extensions: Extensions) -> x509.Certificate:
    return issue(cn("leaf.example"), issuer=issuer, extensions=extensions).cert


def _with_other_name_kinds(issuer: Issued) -> x509.Certificate:
    # The SAN of full_extensions: directory, other and registered-ID names beside the plain ones.
    san = [
        ext for ext in full_extensions(issuer, new_key()) if isinstance(ext[0], x509.SubjectAlternativeName)
    ]
    return _leaf(issuer, san)


def _with_duplicate_extension(issuer: Issued) -> x509.Certificate:
    # cryptography's builder refuses a duplicate: rename another extension to SKI in the DER.
    ski = x509.SubjectKeyIdentifier(b"\x09" * 4)
    placeholder = x509.UnrecognizedExtension(x509.ObjectIdentifier("2.5.29.99"), b"\x04\x04\x09\x09\x09\x09")
    der = _leaf(issuer, [(ski, False), (placeholder, False)]).public_bytes(Encoding.DER)
    # Both extensions have the same length; renaming 2.5.29.99 to 2.5.29.14 (SKI) makes a duplicate.
    spliced = der.replace(b"\x06\x03\x55\x1d\x63", b"\x06\x03\x55\x1d\x0e")
    assert spliced != der
    return x509.load_der_x509_certificate(spliced)


ODD_CERTIFICATES: dict[str, Callable[[Issued], x509.Certificate]] = {
    **{name: partial(_leaf, extensions=extensions) for name, extensions in ODD.items()},
    "other name kinds": _with_other_name_kinds,
    "an extension twice": _with_duplicate_extension,
}


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_extensions_read_from_der_match_cryptographys(
    name: str, issuer: Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert = _leaf(issuer, PLAIN[name])
    _read_plain(cert)  # plain: no DerError
    assert extract_info(cert) == _through_cryptography(monkeypatch, cert)


@pytest.mark.parametrize("name", sorted(ODD_CERTIFICATES))
def test_odd_extensions_go_through_cryptography(
    name: str, issuer: Issued, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert = ODD_CERTIFICATES[name](issuer)
    with pytest.raises((_der.DerError, IndexError)):
        _read_plain(cert)
    assert extract_info(cert) == _through_cryptography(monkeypatch, cert)
