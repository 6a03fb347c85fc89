"""The ``tls-scan`` discovery source: the network TLS scanner behind the SPI.

``discover`` takes the request's targets (the tokens :func:`parse_targets` reads) and options
(``ports``, ``sni``, ``exclude``, ``protocol`` override the configured ones) and yields one
finding per endpoint that served a certificate, leaf first with the rest of the served chain, and
the handshake facts in the sighting's details. Endpoints that served nothing are not errors; they
are logged at debug level.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

from pydantic import Field

from sslclm.connectors.tls_scan.results import ScanResult
from sslclm.connectors.tls_scan.scanner import ScanOptions, TlsScanner
from sslclm.connectors.tls_scan.targets import DEFAULT_MAX_TARGETS, parse_ports, parse_targets
from sslclm.connectors.tls_scan.trust import TrustStore
from sslclm.errors import InvalidInputError
from sslclm.spi import (
    Capability,
    CheckRequest,
    CheckResult,
    ConnectorConfig,
    DiscoveryRequest,
    DiscoverySource,
    Finding,
    Sighting,
    SightingKind,
)
from sslclm.spi.base import CHECK

_OVERRIDABLE = ("ports", "sni", "exclude", "protocol")


class TlsScanConfig(ConnectorConfig):
    ports: str = Field(default="443", max_length=2000, description="Ports: '443,8443,9000-9010'.")
    sni: list[str] = Field(default_factory=list, description="SNI names asked of every target.")
    exclude: list[str] = Field(default_factory=list, description="Addresses, blocks or names to skip.")
    protocol: str | None = Field(default=None, description="auto (by port), tls, smtp, imap, pop3, ldap, ...")
    concurrency: int = Field(default=256, ge=1, le=10_000)
    connect_timeout: float = Field(default=5.0, gt=0, le=120)
    handshake_timeout: float = Field(default=10.0, gt=0, le=300)
    rate: float | None = Field(default=None, gt=0)
    per_host_rate: float | None = Field(default=None, gt=0)
    per_host_concurrency: int | None = Field(default=None, ge=1)
    use_system_roots: bool = True
    extra_roots_pem: str | None = Field(default=None, description="PEM roots trusted in addition.")
    max_targets: int = Field(default=DEFAULT_MAX_TARGETS, ge=1)


class TlsScanSource(DiscoverySource):
    type_key: ClassVar[str] = "tls-scan"
    display_name: ClassVar[str] = "Network TLS scan"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.DISCOVER})
    Config = TlsScanConfig

    @property
    def settings(self) -> TlsScanConfig:
        assert isinstance(self.config, TlsScanConfig)
        return self.config

    def scanner(self) -> TlsScanner:
        config = self.settings
        store = TrustStore.load(
            use_system=config.use_system_roots, extra_pem=(config.extra_roots_pem or "").encode()
        )
        return TlsScanner(
            ScanOptions(
                concurrency=config.concurrency,
                connect_timeout=config.connect_timeout,
                handshake_timeout=config.handshake_timeout,
                rate=config.rate,
                per_host_rate=config.per_host_rate,
                per_host_concurrency=config.per_host_concurrency,
                trust_store=store,
                clock=self.context.clock,
            )
        )

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        """Validates ports, names and the trust bundle; a scan source has no remote end to reach."""
        config = self.settings
        try:
            parse_ports(config.ports)
            parse_targets(["192.0.2.1"], ports=config.ports, sni=config.sni, protocol=config.protocol)
            parse_targets(["192.0.2.0/24"], exclude=config.exclude)
        except InvalidInputError as exc:
            return CheckResult(ok=False, message=exc.message, details={"field": exc.field})
        roots = len(self.scanner().trust_store)
        if roots == 0:
            return CheckResult(
                ok=False, message="no trusted roots: enable system roots or add extra_roots_pem"
            )
        return CheckResult(ok=True, message=f"ready: {roots} trusted roots", details={"roots": roots})

    async def discover(self, request: DiscoveryRequest) -> AsyncIterator[Finding]:
        config = self.settings
        override: dict[str, Any] = {k: request.options[k] for k in _OVERRIDABLE if k in request.options}
        unknown = sorted(set(request.options) - set(_OVERRIDABLE))
        if unknown:
            raise InvalidInputError(f"unknown option '{unknown[0]}'", field=f"options.{unknown[0]}")
        targets = parse_targets(
            request.targets,
            ports=override.get("ports", config.ports),
            sni=override.get("sni", config.sni),
            exclude=override.get("exclude", config.exclude),
            protocol=override.get("protocol", config.protocol),
            max_targets=config.max_targets,
        )
        log = self.context.logger
        async for result in self.scanner().scan(targets):
            if result.ok and result.chain:
                yield finding_of(result)
            else:
                log.debug("%s: %s", result.target, result.error or "no certificate served")


def finding_of(result: ScanResult) -> Finding:
    """One served chain as an SPI finding."""
    target = result.target
    sighting = Sighting(
        kind=SightingKind.ENDPOINT,
        seen_at=result.scanned_at,
        location=str(target),
        host=target.host,
        ip=result.address,
        port=target.port,
        sni=target.sni,
        details={
            "protocol": target.protocol.value,
            "tls_version": result.tls_version,
            "cipher": result.cipher,
            "alpn": result.alpn,
            "trusted": result.trusted,
            "trust_error_kind": result.trust_error_kind.value if result.trust_error_kind else None,
            "trust_error": result.trust_error,
            "hostname_match": result.hostname_match,
        },
    )
    return Finding(certificate_der=result.chain[0], sighting=sighting, chain_der=result.chain[1:])
