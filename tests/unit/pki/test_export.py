from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sslclm.errors import InvalidInputError
from sslclm.pki import (
    certificate_to_pem,
    chain_to_pem,
    load_bundle,
    match_private_keys,
    public_key_sha256,
    to_jks,
    to_pkcs12,
)

from .conftest import Issued


def test_certificate_to_pem_matches_cryptography(leaf: Issued) -> None:
    assert certificate_to_pem(leaf.der) == leaf.pem
    assert certificate_to_pem(leaf.cert) == leaf.pem
    assert all(len(line) <= 64 for line in certificate_to_pem(leaf.der).splitlines())


def test_chain_to_pem_keeps_order(leaf: Issued, root: Issued) -> None:
    pem = chain_to_pem([leaf.der, root.der])
    assert pem == leaf.pem + root.pem
    assert x509.load_pem_x509_certificates(pem) == [leaf.cert, root.cert]
    assert chain_to_pem([]) == b""


@pytest.mark.parametrize("password", ["export-pw", None])
def test_to_pkcs12_round_trip(leaf: Issued, root: Issued, password: str | None) -> None:
    data = to_pkcs12(leaf.key, leaf.der, [root.cert], password=password, friendly_name="server")
    bundle = load_bundle(data, password=password)
    assert bundle.format == "PKCS12"
    assert bundle.certificates == [leaf.cert, root.cert]
    assert match_private_keys(bundle.certificates, bundle.private_keys) == {0: bundle.private_keys[0]}


def test_to_jks_round_trip(leaf: Issued, root: Issued) -> None:
    data = to_jks(
        password="changeit",
        key_entries={"server": (leaf.key, [leaf.der, root.der])},
        trusted_certificates={"root": root.cert},
    )
    bundle = load_bundle(data, password="changeit")
    assert bundle.format == "JKS"
    assert bundle.certificates == [leaf.cert, root.cert]
    assert public_key_sha256(bundle.private_keys[0]) == public_key_sha256(leaf.key)


def test_to_jks_needs_a_password(leaf: Issued) -> None:
    with pytest.raises(InvalidInputError):
        to_jks(password="", trusted_certificates={"a": leaf.der})


def test_exported_pem_parses_back(leaf: Issued) -> None:
    cert = x509.load_pem_x509_certificate(certificate_to_pem(leaf.der))
    assert cert.public_bytes(serialization.Encoding.DER) == leaf.der
