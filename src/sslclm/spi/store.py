"""The certificate store: somewhere certificates (and usually their keys) are deployed.

A store may be a directory of PEM files, a keystore, a web server's configuration, a cloud secret
manager. Errors every method may raise, and what they mean:

- :class:`~sslclm.errors.ConnectorError` — the store failed the operation; ``retryable`` says whether
  trying again later may help (unreachable API: yes; permission denied: no).
- :class:`~sslclm.errors.NotFoundError` — the alias to remove does not exist (``remove`` only).
- :class:`~sslclm.errors.ConflictError` — ``add`` without ``overwrite`` hit an existing alias.
- :class:`~sslclm.errors.InvalidInputError` — the request is malformed (bad alias, unusable PEM).
- :class:`~sslclm.errors.NotSupportedError` — the method stands for an undeclared capability.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from sslclm.errors import InvalidInputError
from sslclm.spi._frozen import empty_mapping, freeze_mapping, freeze_tuple
from sslclm.spi.base import Connector
from sslclm.spi.capabilities import Capability, ConnectorKind


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreEntry:
    alias: str
    certificate_pem: bytes
    chain_pem: tuple[bytes, ...] = ()
    has_private_key: bool = False
    modified_at: datetime | None = None
    details: Mapping[str, Any] = field(default_factory=empty_mapping)

    def __post_init__(self) -> None:
        freeze_tuple(self, "chain_pem")
        freeze_mapping(self, "details")


@dataclass(frozen=True, slots=True, kw_only=True)
class InventoryRequest:
    cursor: str | None = None
    limit: int = 1000


@dataclass(frozen=True, slots=True, kw_only=True)
class InventoryResult:
    entries: tuple[StoreEntry, ...] = ()
    next_cursor: str | None = None

    def __post_init__(self) -> None:
        freeze_tuple(self, "entries")


@dataclass(frozen=True, slots=True, kw_only=True)
class AddRequest:
    alias: str
    certificate_pem: bytes
    chain_pem: tuple[bytes, ...] = ()
    private_key_pem: bytes | None = field(default=None, repr=False)
    overwrite: bool = True

    def __post_init__(self) -> None:
        freeze_tuple(self, "chain_pem")
        if not self.alias:
            raise InvalidInputError("an alias is required", field="alias")


@dataclass(frozen=True, slots=True, kw_only=True)
class AddResult:
    alias: str
    replaced: bool = False  # an existing entry under this alias was overwritten


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveRequest:
    alias: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoveResult:
    alias: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateRequest:
    """Create the store itself (an empty keystore, a vault, a directory)."""

    options: Mapping[str, Any] = field(default_factory=empty_mapping)

    def __post_init__(self) -> None:
        freeze_mapping(self, "options")


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateResult:
    created: bool  # False: it already existed, which is not an error


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadRequest:
    """Make the consumer of the store pick up new content (e.g. ``nginx -s reload``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadResult:
    message: str = ""


class CertificateStore(Connector):
    """A place certificates are deployed to and read back from."""

    kind: ClassVar[ConnectorKind] = ConnectorKind.CERT_STORE

    def inventory(self, request: InventoryRequest) -> InventoryResult:
        """One page of what the store holds (capability ``INVENTORY``)."""
        raise self._unsupported(Capability.INVENTORY)

    def add(self, request: AddRequest) -> AddResult:
        """Put a certificate, its chain and its key under ``alias`` (capability ``ADD``).

        Raises ``ConflictError`` when the alias exists and ``overwrite`` is false. Adding the same
        content again succeeds, so a retried deployment is harmless.
        """
        raise self._unsupported(Capability.ADD)

    def remove(self, request: RemoveRequest) -> RemoveResult:
        """Remove the entry under ``alias`` (capability ``REMOVE``); ``NotFoundError`` if absent."""
        raise self._unsupported(Capability.REMOVE)

    def create(self, request: CreateRequest) -> CreateResult:
        """Create the store itself (capability ``CREATE``); an existing store is not an error."""
        raise self._unsupported(Capability.CREATE)

    def reload(self, request: ReloadRequest) -> ReloadResult:
        """Make the store's consumer load the new content (capability ``RELOAD``).

        A consumer that refuses the new content (e.g. a configuration test fails) raises
        ``ConnectorError`` with ``retryable=False`` and the consumer's message.
        """
        raise self._unsupported(Capability.RELOAD)


def read_entry(store: CertificateStore, alias: str) -> StoreEntry | None:
    """The store's entry under ``alias``: directly when the store can, else by walking its inventory."""
    direct: Callable[[str], StoreEntry | None] | None = getattr(store, "read_entry", None)
    if direct is not None:
        return direct(alias)
    cursor: str | None = None
    while True:
        page = store.inventory(InventoryRequest(cursor=cursor, limit=500))
        for entry in page.entries:
            if entry.alias == alias:
                return entry
        if page.next_cursor is None or page.next_cursor == cursor:
            return None
        cursor = page.next_cursor


def reload_if_supported(store: CertificateStore) -> None:
    """Has the store's consumer load new content, for stores that have one (``RELOAD``)."""
    if Capability.RELOAD in store.capabilities:
        store.reload(ReloadRequest())
