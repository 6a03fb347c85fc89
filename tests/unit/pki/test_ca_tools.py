"""CA helpers: CSR checks, name normalisation, the intermediate-capable root, CRLs, path validation.
Inputs are built with cryptography directly, not with the functions under test."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sslclm.errors import InvalidInputError
from sslclm.pki import SigningKey, sign_csr
from sslclm.pki.ca_tools import (
    RevokedEntry,
    build_crl,
    create_root_ca,
    csr_names,
    load_csr,
    normalize_names,
    read_crl,
    subject_name,
    verify_server_path,
)

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def _csr(names: list[x509.GeneralName]) -> x509.CertificateSigningRequest:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256())


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["WWW.Example.COM."], {"www.example.com"}),
        (["*.example.com", "example.com"], {"*.example.com", "example.com"}),
        (["192.0.2.1", "2001:DB8::0:1"], {"192.0.2.1", "2001:db8::1"}),
        (["xn--bcher-kva.example"], {"xn--bcher-kva.example"}),
        ([], set()),
    ],
)
def test_normalize_names(names: list[str], expected: set[str]) -> None:
    assert normalize_names(names) == expected


@pytest.mark.parametrize(
    "bad", ["bad name", "a..b", "-a.example", "a.*.example", "under_score.example", "x" * 64]
)
def test_normalize_names_refuses_non_names(bad: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        normalize_names([bad])
    assert caught.value.field == "names"


def test_csr_names_reads_dns_and_ip_only() -> None:
    import ipaddress

    csr = _csr(
        [
            x509.DNSName("A.example"),
            x509.IPAddress(ipaddress.ip_address("192.0.2.7")),
            x509.RFC822Name("ops@example.com"),
        ]
    )
    assert csr_names(csr) == {"a.example", "192.0.2.7"}
    assert csr_names(_csr([])) == frozenset()


def test_load_csr_accepts_pem_and_der_and_checks_the_signature() -> None:
    csr = _csr([x509.DNSName("a.example")])
    pem = csr.public_bytes(serialization.Encoding.PEM)
    der = csr.public_bytes(serialization.Encoding.DER)
    assert load_csr(pem).subject == csr.subject
    assert load_csr(der).subject == csr.subject
    tampered = der[:-1] + bytes([der[-1] ^ 1])
    with pytest.raises(InvalidInputError, match="CSR signature does not verify"):
        load_csr(tampered)
    with pytest.raises(InvalidInputError, match="not a valid PEM or DER"):
        load_csr(b"\x30\x03\x02\x01\x00")


def test_subject_name() -> None:
    assert subject_name(None) == x509.Name([])
    assert subject_name("svc").rfc4514_string() == "CN=svc"
    with pytest.raises(InvalidInputError):
        subject_name("x" * 65)


def _hierarchy() -> tuple[SigningKey, x509.Certificate, SigningKey, x509.Certificate]:
    root_key, root = create_root_ca("Test Root", now=NOW)
    issuing_key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject_name("Test Issuing"))
        .sign(issuing_key, hashes.SHA256())
    )
    issuing = sign_csr(
        root_key, root, csr, valid_days=365, extended_key_usage=(), is_ca=True, path_length=0, now=NOW
    )
    return root_key, root, issuing_key, issuing


def test_root_allows_one_intermediate_and_paths_validate() -> None:
    _, root, issuing_key, issuing = _hierarchy()
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
    leaf_csr = _csr([x509.DNSName("svc.example")])
    leaf = sign_csr(
        issuing_key, issuing, leaf_csr, valid_days=30, subject=subject_name("svc.example"), now=NOW
    )
    pem = serialization.Encoding.PEM
    path = verify_server_path(
        leaf.public_bytes(pem),
        intermediates_pem=[issuing.public_bytes(pem)],
        roots_pem=[root.public_bytes(pem)],
        name="svc.example",
        at=NOW + dt.timedelta(days=1),
    )
    assert len(path) == 3
    with pytest.raises(InvalidInputError, match="does not validate") as caught:
        verify_server_path(
            leaf.public_bytes(pem),
            intermediates_pem=[issuing.public_bytes(pem)],
            roots_pem=[root.public_bytes(pem)],
            name="svc.example",
            at=NOW + dt.timedelta(days=31),
        )
    assert caught.value.field == "chain"


def test_crl_round_trip() -> None:
    _, root, issuing_key, issuing = _hierarchy()
    der = build_crl(
        [RevokedEntry(5, NOW, 1), RevokedEntry(9, NOW, 0), RevokedEntry(12, NOW, 4)],
        issuer_certificate=issuing,
        issuer_key=issuing_key,
        this_update=NOW,
        next_update=NOW + dt.timedelta(days=1),
        crl_number=42,
    )
    issuing_pem = issuing.public_bytes(serialization.Encoding.PEM)
    facts = read_crl(der, issuing_pem)
    assert facts.signature_valid and facts.crl_number == 42
    assert facts.revoked == {5: 1, 9: 0, 12: 4}
    assert facts.this_update == NOW and facts.next_update == NOW + dt.timedelta(days=1)
    assert not read_crl(der, root.public_bytes(serialization.Encoding.PEM)).signature_valid
    with pytest.raises(InvalidInputError) as caught:
        read_crl(b"not a crl", issuing_pem)
    assert caught.value.field == "crl"
