"""The platform's key-encryption key: from SSLCLM_MASTER_KEY or a 0600 file in the data directory."""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from sslclm.core.config import Settings
from sslclm.errors import ConfigurationError
from sslclm.pki.envelope import Envelope, generate_kek

MASTER_KEY_FILE = "master.key"


def _decode(text: str, origin: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigurationError(f"{origin} is not valid base64") from exc
    if len(key) != 32:
        raise ConfigurationError(f"{origin} must decode to 32 bytes, got {len(key)}")
    return key


def load_or_create_master_key(settings: Settings) -> bytes:
    if settings.master_key is not None:
        return _decode(settings.master_key.get_secret_value(), "SSLCLM_MASTER_KEY")
    path: Path = settings.ensure_home() / MASTER_KEY_FILE
    if path.exists():
        if path.stat().st_mode & 0o077:
            raise ConfigurationError(f"{path} must be readable by its owner only (chmod 600)")
        return _decode(path.read_text(), str(path))
    key = generate_kek()
    # O_EXCL: two processes starting together must not each write a different key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _decode(path.read_text(), str(path))
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(key).decode() + "\n")
    return key


def load_envelope(settings: Settings) -> Envelope:
    return Envelope(load_or_create_master_key(settings))
