from __future__ import annotations

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.verification import PolicyBuilder, Store

from sslclm.errors import InvalidInputError
from sslclm.pki import (
    SigningKey,
    build_csr,
    create_ca,
    extract_info,
    generate_private_key,
    issue_server_certificate,
    public_key_sha256,
    sign_csr,
)

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca() -> tuple[SigningKey, x509.Certificate]:
    return create_ca("SSL-CLM Internal CA", now=NOW)


def test_create_ca(ca: tuple[SigningKey, x509.Certificate]) -> None:
    key, cert = ca
    info = extract_info(cert)
    assert info.subject == info.issuer == "CN=SSL-CLM Internal CA"
    assert info.self_signed and info.is_ca and info.path_length == 0
    assert info.key_usage == ("key_cert_sign", "crl_sign")
    assert info.subject_key_id is not None and info.authority_key_id == info.subject_key_id
    assert (info.key_algorithm, info.key_curve) == ("EC", "secp256r1")
    assert info.not_after - NOW == dt.timedelta(days=3650)
    assert info.not_before <= NOW
    assert public_key_sha256(key) == info.public_key_sha256
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert bc.critical and ku.critical


@pytest.mark.parametrize(
    ("key_type", "algorithm"), [("RSA-2048", "RSA"), ("EC-P384", "EC"), ("Ed25519", "Ed25519")]
)
def test_create_ca_with_other_key_types(key_type: str, algorithm: str) -> None:
    _, cert = create_ca("Other CA", key_type=key_type, valid_days=30)
    info = extract_info(cert)
    assert info.key_algorithm == algorithm and info.self_signed


@pytest.mark.parametrize(("name", "days"), [("", 10), ("x" * 65, 10), ("ok", 0)])
def test_create_ca_rejects_bad_parameters(name: str, days: int) -> None:
    with pytest.raises(InvalidInputError):
        create_ca(name, valid_days=days)


def test_issue_server_certificate_validates_for_its_names(ca: tuple[SigningKey, x509.Certificate]) -> None:
    ca_key, ca_cert = ca
    key, cert = issue_server_certificate(
        ca_key, ca_cert, hostnames=["sslclm.example", "localhost"], ip_addresses=["127.0.0.1", "::1"], now=NOW
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    info = extract_info(cert)
    assert info.sans == ("DNS:sslclm.example", "DNS:localhost", "IP:127.0.0.1", "IP:::1")
    assert info.common_name == "sslclm.example"
    assert info.extended_key_usage == ("serverAuth",)
    assert info.key_usage == ("digital_signature",)
    assert info.authority_key_id == extract_info(ca_cert).subject_key_id
    assert info.not_after - NOW == dt.timedelta(days=90)
    assert public_key_sha256(key) == info.public_key_sha256
    at = NOW + dt.timedelta(days=1)
    store = Store([ca_cert])
    for subject in (x509.DNSName("sslclm.example"), x509.IPAddress(ipaddress.ip_address("::1"))):
        chain = PolicyBuilder().store(store).time(at).build_server_verifier(subject).verify(cert, [])
        assert chain[-1] == ca_cert


def test_issue_server_certificate_needs_a_name(ca: tuple[SigningKey, x509.Certificate]) -> None:
    with pytest.raises(InvalidInputError):
        issue_server_certificate(ca[0], ca[1], hostnames=[], ip_addresses=[])
    with pytest.raises(InvalidInputError) as caught:
        issue_server_certificate(ca[0], ca[1], hostnames=["ok.example"], ip_addresses=["not-an-ip"])
    assert caught.value.field == "ip_addresses"


def test_build_csr() -> None:
    key = generate_private_key("RSA-2048")
    csr = build_csr(key, "app.example", ["app.example", "www.app.example"], ["192.0.2.7"])
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=app.example"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["app.example", "www.app.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.7"]
    assert csr.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_sign_csr_copies_requested_names_for_a_general_ca(ca: tuple[SigningKey, x509.Certificate]) -> None:
    ca_key, ca_cert = ca
    key = generate_private_key("Ed25519")
    csr = build_csr(key, "client.example", ["client.example"], [])
    cert = sign_csr(
        ca_key,
        ca_cert,
        csr,
        valid_days=7,
        extended_key_usage=("clientAuth", "1.3.6.1.4.1.99999.7"),
        crl_urls=["http://ca.example/crl"],
        ocsp_urls=["http://ca.example/ocsp"],
        ca_issuer_urls=["http://ca.example/ca.crt"],
        serial_number=4242,
        now=NOW,
    )
    info = extract_info(cert)
    assert info.serial == format(4242, "x")
    assert info.sans == ("DNS:client.example",)
    assert info.extended_key_usage == ("clientAuth", "1.3.6.1.4.1.99999.7")
    assert info.key_algorithm == "Ed25519"
    assert info.crl_distribution_points == ("http://ca.example/crl",)
    assert info.ocsp_urls == ("http://ca.example/ocsp",)
    assert info.ca_issuer_urls == ("http://ca.example/ca.crt",)
    assert info.not_after - NOW == dt.timedelta(days=7)
    cert.verify_directly_issued_by(ca_cert)


def test_sign_csr_rsa_key_gets_key_encipherment(ca: tuple[SigningKey, x509.Certificate]) -> None:
    key = generate_private_key("RSA-2048")
    cert = sign_csr(ca[0], ca[1], build_csr(key, "rsa.example", ["rsa.example"]), valid_days=30, now=NOW)
    assert isinstance(cert.public_key(), rsa.RSAPublicKey)
    assert extract_info(cert).key_usage == ("digital_signature", "key_encipherment")


def test_sign_csr_validity_never_outlasts_the_ca() -> None:
    ca_key, ca_cert = create_ca("Short CA", valid_days=10, now=NOW)
    key = generate_private_key()
    cert = sign_csr(ca_key, ca_cert, build_csr(key, "x.example", ["x.example"]), valid_days=365, now=NOW)
    assert cert.not_valid_after_utc == ca_cert.not_valid_after_utc


def test_sign_csr_without_subject_makes_the_san_critical(ca: tuple[SigningKey, x509.Certificate]) -> None:
    key = generate_private_key()
    cert = sign_csr(ca[0], ca[1], build_csr(key, None, ["nocn.example"]), valid_days=30, now=NOW)
    assert cert.subject == x509.Name([])
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


def test_sign_csr_refuses_a_csr_whose_signature_does_not_verify(
    ca: tuple[SigningKey, x509.Certificate],
) -> None:
    key = generate_private_key()
    der = bytearray(
        build_csr(key, "tampered.example", ["tampered.example"]).public_bytes(serialization.Encoding.DER)
    )
    index = der.find(b"tampered")
    der[index] = ord("T")  # change the signed content, keep the signature
    tampered = x509.load_der_x509_csr(bytes(der))
    with pytest.raises(InvalidInputError) as caught:
        sign_csr(ca[0], ca[1], tampered, valid_days=30)
    assert str(caught.value) == "CSR signature does not verify"
    assert caught.value.field == "csr"


def test_sign_csr_refuses_a_ca_key_that_does_not_match(ca: tuple[SigningKey, x509.Certificate]) -> None:
    csr = build_csr(generate_private_key(), "x.example", ["x.example"])
    with pytest.raises(InvalidInputError, match="CA key does not belong"):
        sign_csr(generate_private_key(), ca[1], csr, valid_days=30)


@pytest.mark.parametrize("days", [0, -1])
def test_sign_csr_refuses_non_positive_validity(ca: tuple[SigningKey, x509.Certificate], days: int) -> None:
    csr = build_csr(generate_private_key(), "x.example", ["x.example"])
    with pytest.raises(InvalidInputError):
        sign_csr(ca[0], ca[1], csr, valid_days=days)


def test_sign_csr_can_issue_a_subordinate_ca() -> None:
    root_key, root_cert = create_ca("Root", now=NOW)
    sub_key = generate_private_key()
    cert = sign_csr(
        root_key,
        root_cert,
        build_csr(sub_key, "Agent CA"),
        valid_days=365,
        is_ca=True,
        path_length=0,
        extended_key_usage=(),
        now=NOW,
    )
    info = extract_info(cert)
    assert info.is_ca and info.path_length == 0 and info.key_usage == ("key_cert_sign", "crl_sign")
    assert info.extended_key_usage == ()
    assert isinstance(sub_key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey)
