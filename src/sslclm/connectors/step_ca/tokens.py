"""The JWK provisioner's key and the one-time tokens (OTTs) it signs.

A step-ca JWK provisioner authorizes each request with a short-lived JWT signed by its private key:
header ``alg`` (ES256 for the P-256 keys step creates) and ``kid`` (the provisioner's key id); claims
``iss`` (provisioner name), ``sub`` (the certificate's common name, or the serial to revoke), ``aud``
(the endpoint it is good for, e.g. ``https://ca:9000/1.0/sign``), ``sans`` (the names to certify),
``iat``/``nbf``/``exp`` and a random ``jti`` that step-ca records so a token is used once.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from josepy.errors import DeserializationError
from josepy.jwa import ES256, ES384, ES512, JWASignature
from josepy.jwk import JWK, JWKEC
from josepy.jws import JWS

from sslclm.errors import ConnectorError, InvalidInputError
from sslclm.pki.jwe import decrypt_password_jwe

_ALGORITHMS: dict[str, JWASignature] = {"P-256": ES256, "P-384": ES384, "P-521": ES512}


def check_private_jwk(text: str) -> dict[str, Any]:
    """The JWK as a dict if it is an EC private key step can use; ``ValueError`` saying why not."""
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("is not JSON (expected the provisioner's private JWK)") from None
    if not isinstance(data, dict):
        raise ValueError("must be a JSON object (a JWK)")
    if data.get("kty") != "EC" or data.get("crv") not in _ALGORITHMS:
        raise ValueError(f"must be an EC key on one of {sorted(_ALGORITHMS)} (kty EC)")
    if not data.get("d"):
        raise ValueError("is a public key; the provisioner's private key (with 'd') is needed")
    return data


@dataclass(frozen=True, slots=True)
class ProvisionerKey:
    """The provisioner's signing key, its algorithm and the key id step-ca knows it by."""

    jwk: JWKEC
    algorithm: JWASignature
    kid: str

    @classmethod
    def from_jwk(cls, data: Mapping[str, Any], *, kid: str | None = None, field: str) -> ProvisionerKey:
        try:
            text = json.dumps(dict(data))
            check_private_jwk(text)
            jwk = JWK.from_json(dict(data))
        except (ValueError, DeserializationError, TypeError) as exc:
            raise InvalidInputError(f"the provisioner key {exc}", field=field) from None
        if not isinstance(jwk, JWKEC):
            raise InvalidInputError("the provisioner key is not an EC key", field=field)
        key_id = kid or str(data.get("kid") or "") or thumbprint(jwk)
        return cls(jwk=jwk, algorithm=_ALGORITHMS[str(data["crv"])], kid=key_id)

    @classmethod
    def from_encrypted(cls, jwe: str, password: bytes, *, kid: str | None = None) -> ProvisionerKey:
        plaintext = decrypt_password_jwe(jwe, password, field="provisioner_password")
        try:
            data = json.loads(plaintext)
        except ValueError:
            raise InvalidInputError(
                "the decrypted provisioner key is not a JWK", field="provisioner_encrypted_key"
            ) from None
        if not isinstance(data, dict):
            raise InvalidInputError(
                "the decrypted provisioner key is not a JWK", field="provisioner_encrypted_key"
            )
        return cls.from_jwk(data, kid=kid, field="provisioner_encrypted_key")

    def public_matches(self, public: Mapping[str, Any]) -> bool:
        """Whether ``public`` (a JWK as step-ca lists it) is this key's public half."""
        mine = self.jwk.public_key().fields_to_partial_json()
        return all(public.get(name) == mine.get(name) for name in ("crv", "x", "y"))

    def sign(self, claims: Mapping[str, Any]) -> str:
        jws = JWS.sign(
            json.dumps(dict(claims), separators=(",", ":")).encode(),
            key=self.jwk,
            alg=self.algorithm,
            include_jwk=False,
            kid=self.kid,
            typ="application/JWT",  # josepy writes the media type without "application/": "JWT"
            protect=frozenset({"alg", "kid", "typ"}),
        )
        compact: bytes = jws.to_compact()
        return compact.decode("ascii")


def thumbprint(jwk: JWK) -> str:
    """The RFC 7638 SHA-256 thumbprint, base64url: the kid ``step crypto jwk create`` assigns."""
    return base64.urlsafe_b64encode(jwk.thumbprint()).rstrip(b"=").decode("ascii")


def one_time_token(
    key: ProvisionerKey,
    *,
    provisioner: str,
    subject: str,
    audience: str,
    now: datetime,
    lifetime: timedelta,
    sans: Sequence[str] | None = None,
) -> str:
    """A fresh token; every call has a new ``jti``, since step-ca accepts each token once."""
    if not subject:
        raise ConnectorError("a step-ca token needs a subject", retryable=False)
    issued = int(now.timestamp())
    claims: dict[str, Any] = {
        "iss": provisioner,
        "sub": subject,
        "aud": audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(lifetime.total_seconds()),
        "jti": secrets.token_hex(32),
    }
    if sans is not None:
        claims["sans"] = list(sans)
    return key.sign(claims)
