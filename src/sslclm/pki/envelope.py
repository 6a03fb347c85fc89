"""AES-GCM envelope encryption for secrets at rest (private keys, connector secrets).

Each value gets its own random data key; the data key is wrapped with the platform's
key-encryption key (KEK). Layout, all concatenated::

    b"E1" | kek_id (8) | wrap_nonce (12) | wrapped_dek (32 + 16) | nonce (12) | ciphertext+tag

The associated data binds a ciphertext to its purpose (e.g. ``b"private-key:<fingerprint>"``) so a
value copied into another row does not decrypt.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sslclm.errors import IntegrityError

_MAGIC = b"E1"
_KEK_ID_LEN = 8
_NONCE = 12
_WRAPPED = 32 + 16


def generate_kek() -> bytes:
    return AESGCM.generate_key(bit_length=256)


class Envelope:
    """Encrypts and decrypts values under one key-encryption key."""

    def __init__(self, kek: bytes) -> None:
        if len(kek) != 32:
            raise IntegrityError("the key-encryption key must be 32 bytes")
        self._kek = AESGCM(kek)
        self.kek_id = hashlib.sha256(b"sslclm-kek-id" + kek).digest()[:_KEK_ID_LEN]

    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes:
        dek = AESGCM.generate_key(bit_length=256)
        wrap_nonce = os.urandom(_NONCE)
        wrapped = self._kek.encrypt(wrap_nonce, dek, self.kek_id + associated_data)
        nonce = os.urandom(_NONCE)
        ciphertext = AESGCM(dek).encrypt(nonce, plaintext, associated_data)
        return _MAGIC + self.kek_id + wrap_nonce + wrapped + nonce + ciphertext

    def decrypt(self, blob: bytes, associated_data: bytes) -> bytes:
        header = len(_MAGIC) + _KEK_ID_LEN
        if not blob.startswith(_MAGIC) or len(blob) < header + _NONCE + _WRAPPED + _NONCE + 16:
            raise IntegrityError("encrypted value is malformed")
        kek_id = blob[len(_MAGIC) : header]
        if kek_id != self.kek_id:
            raise IntegrityError("encrypted value was sealed with a different master key")
        pos = header
        wrap_nonce = blob[pos : pos + _NONCE]
        pos += _NONCE
        wrapped = blob[pos : pos + _WRAPPED]
        pos += _WRAPPED
        nonce = blob[pos : pos + _NONCE]
        pos += _NONCE
        try:
            dek = self._kek.decrypt(wrap_nonce, wrapped, self.kek_id + associated_data)
            return AESGCM(dek).decrypt(nonce, blob[pos:], associated_data)
        except InvalidTag as exc:
            raise IntegrityError("encrypted value failed authentication") from exc
