"""The step-ca gateway's settings and the provisioner key handling, without a server: config
validation, PBES2 JWE decryption (cross-checked with joserfc, an independent JOSE implementation) and
one-time tokens verified by joserfc."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joserfc import jwe, jwt
from joserfc.jwk import ECKey, OctKey
from pydantic import ValidationError

from sslclm.connectors.step_ca import StepCaConfig
from sslclm.connectors.step_ca.tokens import ProvisionerKey, one_time_token, thumbprint
from sslclm.errors import InvalidInputError, WrongPasswordError
from sslclm.pki.jwe import decrypt_password_jwe, encrypt_password_jwe
from tests.support.step_ca import JWE_REGISTRY, new_provisioner

PROVISIONER = new_provisioner("keys@example.test")
ROOT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def config(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ca_url": "https://ca.example.test:9000/",
        "root_pem": ROOT,
        "provisioner": PROVISIONER.name,
        "provisioner_jwk": PROVISIONER.private_jwk,
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def test_a_minimal_config_is_normalized() -> None:
    settings = StepCaConfig(**config(root_fingerprint="AB:" * 31 + "AB"))
    assert settings.ca_url == "https://ca.example.test:9000"
    assert settings.root_fingerprint == "ab" * 32
    assert settings.token_lifetime_seconds == 300
    assert PROVISIONER.key.as_dict(private=True)["d"] not in repr(settings)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"ca_url": "http://ca.example.test"}, "https://"),
        ({"ca_url": "https://ca.example.test/?x=1"}, "query"),
        ({"root_pem": None}, "root_pem or root_fingerprint"),
        ({"root_pem": "relative/root.pem"}, "absolute path"),
        ({"root_fingerprint": "abcd"}, "64 hex digits"),
        ({"provisioner_jwk": None}, "either decrypted"),
        ({"provisioner_password": "pw"}, "either decrypted"),
        ({"provisioner_jwk": None, "provisioner_encrypted_key": "a.b.c.d.e"}, "either decrypted"),
        (
            {"provisioner_jwk": None, "provisioner_password": "pw", "provisioner_encrypted_key": "x"},
            "compact JWE",
        ),
        ({"provisioner_jwk": "{not json"}, "is not JSON"),
        ({"provisioner_jwk": json.dumps(PROVISIONER.public_jwk())}, "is a public key"),
        ({"provisioner_jwk": json.dumps({"kty": "oct", "k": "c2VjcmV0"})}, "must be an EC key"),
        ({"default_validity_hours": 0}, "greater than or equal to 1"),
        ({"token_lifetime_seconds": 5}, "greater than or equal to 30"),
        ({"provisioner": ""}, "at least 1 character"),
        ({"unknown_field": 1}, "Extra inputs"),
    ],
)
def test_bad_settings_are_refused_naming_the_problem(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as caught:
        StepCaConfig(**config(**overrides))
    assert PROVISIONER.key.as_dict(private=True)["d"] not in str(caught.value)


def test_the_password_forms_are_accepted() -> None:
    fetched = StepCaConfig(**config(provisioner_jwk=None, provisioner_password="pw"))
    assert fetched.provisioner_encrypted_key is None
    given = StepCaConfig(
        **config(
            provisioner_jwk=None,
            provisioner_password="pw",
            provisioner_encrypted_key=PROVISIONER.encrypted_key(),
        )
    )
    assert given.provisioner_encrypted_key is not None


def test_a_jwe_from_joserfc_decrypts() -> None:
    token = PROVISIONER.encrypted_key()
    plaintext = decrypt_password_jwe(token, PROVISIONER.password.encode())
    assert json.loads(plaintext) == json.loads(PROVISIONER.private_jwk)


def test_our_jwe_decrypts_with_joserfc_and_with_ourselves() -> None:
    token = encrypt_password_jwe(b'{"hello":"world"}', b"a longer password", iterations=100_000)
    opened = jwe.decrypt_compact(token, OctKey.import_key(b"a longer password"), registry=JWE_REGISTRY)
    assert opened.plaintext == b'{"hello":"world"}'
    assert opened.protected["cty"] == "jwk+json"
    # step's current default count, which joserfc refuses (it caps p2c at 300,000).
    current = encrypt_password_jwe(b"secret", b"a longer password")
    assert decrypt_password_jwe(current, b"a longer password") == b"secret"


def _tamper(token: str, index: int, change: Any) -> str:
    parts = token.split(".")
    parts[index] = change(parts[index])
    return ".".join(parts)


def _header(token: str, **changes: Any) -> str:
    def rewrite(part: str) -> str:
        header = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        header.update(changes)
        return base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()

    return _tamper(token, 0, rewrite)


def _flip_last(part: str) -> str:
    return part[:-1] + ("A" if part[-1] != "A" else "B")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: "a.b.c", "five dot-separated parts"),
        (lambda t: _header(t, alg="dir"), "unsupported JWE alg"),
        (lambda t: _header(t, enc="A128CBC-HS256"), "unsupported JWE enc"),
        (lambda t: _header(t, p2c=50_000_000), "p2c must be"),
        (lambda t: _header(t, p2c=10), "p2c must be"),
        (lambda t: _header(t, p2s=None), "no p2s salt"),
        (lambda t: _header(t, zip="DEF"), "compressed"),
        (lambda t: _tamper(t, 3, _flip_last), "does not verify"),
        (lambda t: _tamper(t, 0, lambda _p: "!!!"), "not base64url"),
    ],
)
def test_malformed_jwes_are_refused(mutate: Any, message: str) -> None:
    token = encrypt_password_jwe(b"secret", b"pw-pw-pw", iterations=1_000)
    with pytest.raises(InvalidInputError, match=message):
        decrypt_password_jwe(mutate(token), b"pw-pw-pw")


def test_a_wrong_password_is_a_wrong_password_error() -> None:
    token = encrypt_password_jwe(b"secret", b"right", iterations=1_000)
    with pytest.raises(WrongPasswordError) as caught:
        decrypt_password_jwe(token, b"wrong", field="provisioner_password")
    assert caught.value.field == "provisioner_password"


def test_the_key_id_defaults_to_the_jwk_kid_then_its_thumbprint() -> None:
    data = json.loads(PROVISIONER.private_jwk)
    assert ProvisionerKey.from_jwk(data, field="f").kid == PROVISIONER.kid
    assert ProvisionerKey.from_jwk(data, kid="explicit", field="f").kid == "explicit"
    without = {k: v for k, v in data.items() if k != "kid"}
    key = ProvisionerKey.from_jwk(without, field="f")
    assert key.kid == thumbprint(key.jwk) == PROVISIONER.key.thumbprint()
    assert key.public_matches(PROVISIONER.public_jwk())
    assert not key.public_matches(new_provisioner("other").public_jwk())


@pytest.mark.parametrize(("curve", "algorithm"), [("P-256", "ES256"), ("P-384", "ES384"), ("P-521", "ES512")])
def test_tokens_verify_with_the_public_key(curve: str, algorithm: str) -> None:
    private = ECKey.generate_key(curve)
    key = ProvisionerKey.from_jwk(private.as_dict(private=True), kid="k1", field="f")
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    token = one_time_token(
        key,
        provisioner="p",
        subject="12345",
        audience="https://ca:9000/1.0/revoke",
        now=now,
        lifetime=timedelta(minutes=2),
    )
    decoded = jwt.decode(token, ECKey.import_key(private.as_dict(private=False)), algorithms=[algorithm])
    assert decoded.header == {"alg": algorithm, "kid": "k1", "typ": "JWT"}
    assert decoded.claims["iat"] == decoded.claims["nbf"] == int(now.timestamp())
    assert decoded.claims["exp"] == int(now.timestamp()) + 120
    assert "sans" not in decoded.claims  # a revocation token names a serial, not names
    assert len(decoded.claims["jti"]) == 64
