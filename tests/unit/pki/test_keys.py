from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from sslclm.errors import InvalidInputError
from sslclm.pki import (
    KEY_TYPES,
    extract_info,
    generate_private_key,
    load_private_key_der,
    match_private_keys,
    private_key_to_pem,
    private_key_to_pkcs8_der,
    public_key_sha256,
)

from .conftest import Issued, cn, issue, new_key


@pytest.mark.parametrize(
    ("key_type", "cls", "size"),
    [
        ("EC-P256", ec.EllipticCurvePrivateKey, 256),
        ("EC-P384", ec.EllipticCurvePrivateKey, 384),
        ("RSA-2048", rsa.RSAPrivateKey, 2048),
        ("RSA-3072", rsa.RSAPrivateKey, 3072),
        ("RSA-4096", rsa.RSAPrivateKey, 4096),
        ("Ed25519", ed25519.Ed25519PrivateKey, None),
    ],
)
def test_generate_every_key_type(key_type: str, cls: type, size: int | None) -> None:
    key = generate_private_key(key_type)
    assert isinstance(key, cls)
    if size is not None:
        assert key.key_size == size  # type: ignore[union-attr]
    assert key_type in KEY_TYPES


def test_generate_defaults_to_p256_and_ignores_case() -> None:
    default = generate_private_key()
    assert isinstance(default, ec.EllipticCurvePrivateKey) and default.curve.name == "secp256r1"
    assert isinstance(generate_private_key("ed25519"), ed25519.Ed25519PrivateKey)


@pytest.mark.parametrize("key_type", ["RSA-1024", "EC-P521", "DSA", ""])
def test_generate_rejects_unknown_key_types(key_type: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        generate_private_key(key_type)
    assert caught.value.field == "key_type"
    assert "EC-P256" in str(caught.value)


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
def test_pkcs8_der_round_trip(kind: str) -> None:
    key = new_key(kind)
    der = private_key_to_pkcs8_der(key)
    loaded = load_private_key_der(der)
    assert private_key_to_pkcs8_der(loaded) == der
    assert public_key_sha256(loaded) == public_key_sha256(key)


def test_load_private_key_der_rejects_garbage_without_echoing_it() -> None:
    with pytest.raises(InvalidInputError) as caught:
        load_private_key_der(b"\x30\x03\x02\x01\x00secret-bytes")
    assert "secret" not in str(caught.value)


def test_private_key_to_pem_plain_and_encrypted() -> None:
    key = new_key()
    plain = private_key_to_pem(key)
    assert plain.startswith(b"-----BEGIN PRIVATE KEY-----")
    encrypted = private_key_to_pem(key, password="pw-123")
    assert encrypted.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    loaded = serialization.load_pem_private_key(encrypted, b"pw-123")
    assert public_key_sha256(loaded) == public_key_sha256(key)
    with pytest.raises(InvalidInputError):
        private_key_to_pem(key, password="")


def test_public_key_sha256_matches_the_certificate_info(leaf: Issued) -> None:
    expected = extract_info(leaf.cert).public_key_sha256
    assert public_key_sha256(leaf.key) == expected
    assert public_key_sha256(leaf.key.public_key()) == expected
    assert public_key_sha256(leaf.cert) == expected


def test_match_private_keys_pairs_by_public_key(leaf: Issued, root: Issued) -> None:
    other = issue(cn("other.example"), key=new_key("rsa"))
    stray_key = new_key()
    certs = [root.cert, leaf.cert, other.cert]
    matched = match_private_keys(certs, [stray_key, other.key, leaf.key])
    assert matched == {1: leaf.key, 2: other.key}
    assert match_private_keys(certs, []) == {}
    assert match_private_keys([], [leaf.key]) == {}


def test_match_private_keys_with_reloaded_keys(leaf: Issued) -> None:
    reloaded = load_private_key_der(private_key_to_pkcs8_der(leaf.key))
    assert match_private_keys([leaf.cert], [reloaded]) == {0: reloaded}
