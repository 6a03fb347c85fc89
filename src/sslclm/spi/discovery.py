"""The discovery source: finds certificates where they are used and says where it saw them.

Errors ``discover`` may raise, and what they mean:

- :class:`~sslclm.errors.ConnectorError` — the source as a whole failed (bad credentials, API down);
  ``retryable`` says whether the next run may succeed. A single unreachable target is not an error:
  the source skips it and says so in the finding details or its log.
- :class:`~sslclm.errors.InvalidInputError` — the request names targets the source cannot understand.
- :class:`~sslclm.errors.NotSupportedError` — the source does not declare ``DISCOVER``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from sslclm.errors import InvalidInputError
from sslclm.spi._frozen import empty_mapping, freeze_mapping, freeze_tuple, require_aware
from sslclm.spi.base import Connector
from sslclm.spi.capabilities import Capability, ConnectorKind


class SightingKind(StrEnum):
    ENDPOINT = "endpoint"  # a TLS endpoint: host/IP, port, SNI
    FILE = "file"  # a file on a host
    STORE = "store"  # an entry in a keystore or certificate store
    CLOUD = "cloud"  # a cloud resource (load balancer, secret, certificate manager entry)


@dataclass(frozen=True, slots=True, kw_only=True)
class Sighting:
    """Where and when a certificate was seen; which fields apply depends on ``kind``."""

    kind: SightingKind
    seen_at: datetime
    location: str  # one human-readable line: "10.0.0.5:443 (sni www.example.com)", "/etc/ssl/x.pem"
    host: str | None = None
    ip: str | None = None
    port: int | None = None
    sni: str | None = None
    path: str | None = None
    details: Mapping[str, Any] = field(default_factory=empty_mapping)

    def __post_init__(self) -> None:
        require_aware(self.seen_at, "seen_at")
        freeze_mapping(self, "details")
        if self.port is not None and not 0 < self.port < 65536:
            raise InvalidInputError("port must be between 1 and 65535", field="port")


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    certificate_der: bytes = field(repr=False)
    sighting: Sighting
    # The rest of the chain as the location presented it, in order, without the leaf.
    chain_der: tuple[bytes, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        freeze_tuple(self, "chain_der")


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoveryRequest:
    """One discovery run; ``targets`` and ``options`` mean what the source's documentation says."""

    targets: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=empty_mapping)

    def __post_init__(self) -> None:
        freeze_tuple(self, "targets")
        freeze_mapping(self, "options")


class DiscoverySource(Connector):
    """Something that yields certificates it finds."""

    kind: ClassVar[ConnectorKind] = ConnectorKind.DISCOVERY_SOURCE

    def discover(self, request: DiscoveryRequest) -> AsyncIterator[Finding]:
        """Yield findings as they come (capability ``DISCOVER``).

        The platform consumes the iterator as a stream and may stop early; a source must not collect
        everything in memory first.
        """
        raise self._unsupported(Capability.DISCOVER)
