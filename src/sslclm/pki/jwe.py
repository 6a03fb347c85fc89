"""Password-based JWE (RFC 7516 compact form, RFC 7518 PBES2 key wrapping, AES-GCM content).

This is how Smallstep keeps a JWK provisioner's private key (the ``encryptedKey`` of a provisioner in
``ca.json``, served by ``GET /provisioners``) and how ``step crypto jwk create`` writes key files. Only
what those produce is accepted: ``alg`` PBES2-HS256+A128KW / HS384+A192KW / HS512+A256KW and ``enc``
A128GCM / A192GCM / A256GCM. The iteration count is capped so a hostile token cannot make us spend
minutes in PBKDF2; step uses 100,000 (older releases) or 600,000.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from sslclm.errors import InvalidInputError, WrongPasswordError

MAX_ITERATIONS = 2_000_000
MIN_ITERATIONS = 1_000
_KEY_WRAP: dict[str, tuple[hashes.HashAlgorithm, int]] = {
    "PBES2-HS256+A128KW": (hashes.SHA256(), 16),
    "PBES2-HS384+A192KW": (hashes.SHA384(), 24),
    "PBES2-HS512+A256KW": (hashes.SHA512(), 32),
}
_CONTENT_KEY_SIZES = {"A128GCM": 16, "A192GCM": 24, "A256GCM": 32}


def _b64decode(part: str, what: str, field: str) -> bytes:
    try:
        return base64.b64decode(part + "=" * (-len(part) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInputError(f"the JWE's {what} is not base64url", field=field) from None


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _wrapping_key(header: dict[str, Any], password: bytes, field: str) -> bytes:
    algorithm, size = _KEY_WRAP[header["alg"]]
    count = header.get("p2c")
    salt_input = header.get("p2s")
    if not isinstance(count, int) or isinstance(count, bool) or not MIN_ITERATIONS <= count <= MAX_ITERATIONS:
        raise InvalidInputError(
            f"the JWE's p2c must be an iteration count from {MIN_ITERATIONS} to {MAX_ITERATIONS}", field=field
        )
    if not isinstance(salt_input, str) or not salt_input:
        raise InvalidInputError("the JWE has no p2s salt", field=field)
    # RFC 7518 4.8.1.1: the salt is the algorithm name, a zero byte, then the p2s value.
    salt = header["alg"].encode("ascii") + b"\x00" + _b64decode(salt_input, "p2s", field)
    return PBKDF2HMAC(algorithm=algorithm, length=size, salt=salt, iterations=count).derive(password)


def decrypt_password_jwe(token: str, password: bytes, *, field: str = "jwe") -> bytes:
    """The plaintext of a compact PBES2 JWE.

    Raises ``WrongPasswordError`` when the password does not open it and ``InvalidInputError``
    (naming ``field``) when it is not such a JWE.
    """
    parts = token.strip().split(".")
    if len(parts) != 5:
        raise InvalidInputError("not a compact JWE (five dot-separated parts)", field=field)
    protected, encrypted_key, iv, ciphertext, tag = parts
    try:
        header = json.loads(_b64decode(protected, "header", field))
    except ValueError:
        raise InvalidInputError("the JWE header is not JSON", field=field) from None
    if not isinstance(header, dict):
        raise InvalidInputError("the JWE header is not a JSON object", field=field)
    if header.get("alg") not in _KEY_WRAP:
        raise InvalidInputError(
            f"unsupported JWE alg {header.get('alg')!r}; expected one of {sorted(_KEY_WRAP)}", field=field
        )
    if header.get("enc") not in _CONTENT_KEY_SIZES:
        raise InvalidInputError(
            f"unsupported JWE enc {header.get('enc')!r}; expected one of {sorted(_CONTENT_KEY_SIZES)}",
            field=field,
        )
    if header.get("zip") is not None or header.get("crit") is not None:
        raise InvalidInputError("compressed JWEs and critical JWE headers are not supported", field=field)
    kek = _wrapping_key(header, password, field)
    try:
        content_key = aes_key_unwrap(kek, _b64decode(encrypted_key, "encrypted key", field))
    except (InvalidUnwrap, ValueError):
        # The key wrap's integrity check is what fails first with a wrong password.
        raise WrongPasswordError("the password does not decrypt this JWE", field=field) from None
    if len(content_key) != _CONTENT_KEY_SIZES[header["enc"]]:
        raise InvalidInputError("the JWE's content key has the wrong size for its enc", field=field)
    try:
        return AESGCM(content_key).decrypt(
            _b64decode(iv, "initialization vector", field),
            _b64decode(ciphertext, "ciphertext", field) + _b64decode(tag, "tag", field),
            protected.encode("ascii"),
        )
    except (InvalidTag, ValueError):
        raise InvalidInputError("the JWE's ciphertext does not verify", field=field) from None


def encrypt_password_jwe(
    plaintext: bytes,
    password: bytes,
    *,
    iterations: int = 600_000,
    content_type: str | None = "jwk+json",
) -> str:
    """A compact PBES2-HS256+A128KW / A256GCM JWE of ``plaintext``, as ``step crypto jwk create``
    writes a private key (600,000 iterations, its current default).
    """
    header: dict[str, Any] = {
        "alg": "PBES2-HS256+A128KW",
        "enc": "A256GCM",
        "p2c": iterations,
        "p2s": _b64encode(os.urandom(16)),
    }
    if content_type:
        header["cty"] = content_type
    protected = _b64encode(json.dumps(header, separators=(",", ":")).encode())
    content_key = AESGCM.generate_key(bit_length=256)
    wrapped = aes_key_wrap(_wrapping_key(header, password, "jwe"), content_key)
    iv = os.urandom(12)
    sealed = AESGCM(content_key).encrypt(iv, plaintext, protected.encode("ascii"))
    ciphertext, tag = sealed[:-16], sealed[-16:]
    return ".".join([protected, _b64encode(wrapped), _b64encode(iv), _b64encode(ciphertext), _b64encode(tag)])
