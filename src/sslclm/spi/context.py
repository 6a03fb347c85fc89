"""What the platform hands a connector: logger, clock, data directory, state store and sealed storage.

A connector keeps nothing of its own in module globals or ad-hoc files: persistent state goes into
``context.state`` (the platform backs it with the database, so every worker process sees the same
state), and anything secret it must persist (a CA key, an ACME account key) is sealed with
``context.secrets`` first.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@runtime_checkable
class StateStore(Protocol):
    """A connector instance's own persistent key-value state.

    Keys are short strings (at most 200 characters) ordered lexicographically; values are bytes. Each
    call is atomic on its own. Implementations must be safe to use from several threads and, for the
    platform's database-backed one, from several processes at once.
    """

    def get(self, key: str) -> bytes | None:
        """The value stored under ``key``, or None."""
        ...

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The values of those of ``keys`` that exist, in one round trip (for batch work)."""
        ...

    def put(self, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        ...

    def put_if_absent(self, key: str, value: bytes) -> bytes | None:
        """Store ``value`` unless ``key`` exists.

        Returns None when this call stored the value, otherwise the value that was already there
        (which wins). This is the primitive for "create once" and for idempotency across workers.
        """
        ...

    def delete(self, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        ...

    def scan(self, prefix: str, *, after: str | None = None, limit: int = 1000) -> list[tuple[str, bytes]]:
        """Up to ``limit`` entries whose key starts with ``prefix``, in key order, after key ``after``."""
        ...


@runtime_checkable
class SecretSealer(Protocol):
    """Encrypts values at rest under the platform's master key.

    ``purpose`` binds a sealed value to what it is (e.g. ``"root-key"``); a value unsealed under another
    purpose, another connector instance or another master key fails with
    :class:`~sslclm.errors.IntegrityError`.
    """

    def seal(self, plaintext: bytes, purpose: str) -> bytes: ...

    def unseal(self, sealed: bytes, purpose: str) -> bytes: ...


class _Envelope(Protocol):
    def encrypt(self, plaintext: bytes, associated_data: bytes) -> bytes: ...

    def decrypt(self, blob: bytes, associated_data: bytes) -> bytes: ...


class EnvelopeSealer:
    """A :class:`SecretSealer` over the platform's AES-GCM envelope, scoped to one connector instance."""

    def __init__(self, envelope: _Envelope, scope: str) -> None:
        self._envelope = envelope
        self._scope = scope

    def _associated_data(self, purpose: str) -> bytes:
        return f"connector:{self._scope}:{purpose}".encode()

    def seal(self, plaintext: bytes, purpose: str) -> bytes:
        return self._envelope.encrypt(plaintext, self._associated_data(purpose))

    def unseal(self, sealed: bytes, purpose: str) -> bytes:
        return self._envelope.decrypt(sealed, self._associated_data(purpose))


class MemoryStateStore:
    """A :class:`StateStore` in a dict, for tests and one-shot tools."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._data.get(key)

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        with self._lock:
            return {key: self._data[key] for key in keys if key in self._data}

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._data[key] = bytes(value)

    def put_if_absent(self, key: str, value: bytes) -> bytes | None:
        with self._lock:
            existing = self._data.get(key)
            if existing is not None:
                return existing
            self._data[key] = bytes(value)
            return None

    def delete(self, key: str) -> bool:
        with self._lock:
            return self._data.pop(key, None) is not None

    def scan(self, prefix: str, *, after: str | None = None, limit: int = 1000) -> list[tuple[str, bytes]]:
        with self._lock:
            keys = sorted(k for k in self._data if k.startswith(prefix) and (after is None or k > after))
            return [(k, self._data[k]) for k in keys[:limit]]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectorContext:
    """Everything a connector instance gets from the platform besides its config."""

    connection_id: str  # the configured instance (CA connection, store, ...) this connector serves
    state: StateStore
    secrets: SecretSealer
    data_dir: Path  # a directory of its own for scratch files; persistent state belongs in ``state``
    logger: logging.Logger
    clock: Clock = utcnow

    def now(self) -> datetime:
        return self.clock()
