"""The jobs an agent runs with its own connectors, each confined to the paths it is configured for."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sslclm.agent.config import AgentConfig, within
from sslclm.agent.identity import private_dir, write_private
from sslclm.agent.stores import StoreJobs, own_key_reader
from sslclm.connectors.filesystem import FilesystemSource
from sslclm.connectors.filesystem.source import FilesystemConfig
from sslclm.connectors.pem_files import PemFilesStore
from sslclm.errors import ConfigurationError, InvalidInputError, PermissionDeniedError
from sslclm.pki import (
    build_csr,
    generate_private_key,
    load_certificate,
    private_key_to_pem,
    public_key_sha256,
)
from sslclm.pki.ca_tools import csr_to_pem
from sslclm.pki.envelope import Envelope, generate_kek
from sslclm.pki.identity import certificate_facts
from sslclm.protocol import (
    DISCOVER_FILESYSTEM,
    PEM_INSTALL,
    PEM_KEYGEN,
    STORE_DEPLOY,
    STORE_INVENTORY,
    STORE_REMOVE,
    DiscoverFilesystemPayload,
    DiscoverFilesystemResult,
    PemInstallPayload,
    PemInstallResult,
    PemKeygenPayload,
    PemKeygenResult,
    StoreDeployPayload,
    StoreInventoryPayload,
    StoreRemovePayload,
    WireFinding,
)
from sslclm.spi import ConnectorContext, DiscoveryRequest
from sslclm.spi.context import EnvelopeSealer, MemoryStateStore
from sslclm.spi.store import AddRequest

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


class JobRunner:
    """Runs one job payload and returns its result as JSON-ready data (raises to fail the job)."""

    def __init__(self, config: AgentConfig, state_dir: Path) -> None:
        self.config = config
        self.state_dir = state_dir
        # Connectors may seal scratch secrets; on the agent nothing sealed outlives the process.
        self._envelope = Envelope(generate_kek())
        self.stores = StoreJobs(
            config, self._context, own_key_reader(lambda: (self._keys(), self._pending_keys()))
        )

    @property
    def kinds(self) -> list[str]:
        return [DISCOVER_FILESYSTEM, PEM_KEYGEN, PEM_INSTALL, STORE_DEPLOY, STORE_REMOVE, STORE_INVENTORY]

    def _context(self, name: str) -> ConnectorContext:
        data_dir = private_dir(self.state_dir / "connectors" / name)
        return ConnectorContext(
            connection_id=f"agent:{name}",
            state=MemoryStateStore(),
            secrets=EnvelopeSealer(self._envelope, f"agent:{name}"),
            data_dir=data_dir,
            logger=logging.getLogger(f"sslclm.agent.connectors.{name}"),
        )

    def run(self, kind: str, payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
        if kind == DISCOVER_FILESYSTEM:
            return self.discover(DiscoverFilesystemPayload.model_validate(payload), progress)
        if kind == PEM_KEYGEN:
            return self.keygen(PemKeygenPayload.model_validate(payload))
        if kind == PEM_INSTALL:
            return self.install(PemInstallPayload.model_validate(payload), progress)
        if kind == STORE_DEPLOY:
            return self.stores.deploy(StoreDeployPayload.model_validate(payload), progress)
        if kind == STORE_REMOVE:
            return self.stores.remove(StoreRemovePayload.model_validate(payload), progress)
        if kind == STORE_INVENTORY:
            return self.stores.inventory(StoreInventoryPayload.model_validate(payload), progress)
        raise InvalidInputError(f"this agent does not run '{kind}' jobs")

    # --- discovery ---------------------------------------------------------------------------------

    def discover(self, payload: DiscoverFilesystemPayload, progress: Progress) -> dict[str, Any]:
        allowed = self.config.discovery_paths
        paths = payload.paths or allowed
        if not paths:
            raise ConfigurationError("no discovery_paths are configured on this agent")
        outside = [path for path in paths if not within(path, allowed)]
        if outside:
            raise PermissionDeniedError(
                f"not configured for discovery on this agent: {', '.join(outside[:5])}"
            )
        options: dict[str, Any] = {"paths": paths, "exclude": payload.exclude, "max_depth": payload.max_depth}
        if payload.include is not None:
            options["include"] = payload.include
        source = FilesystemSource(FilesystemConfig(**options), self._context("filesystem"))
        progress(f"walking {len(paths)} path(s)")

        async def collect() -> list[WireFinding]:
            found: list[WireFinding] = []
            async for finding in source.discover(DiscoveryRequest()):
                sighting = finding.sighting
                found.append(
                    WireFinding(
                        certificate_der_b64=base64.b64encode(finding.certificate_der).decode(),
                        chain_der_b64=[base64.b64encode(der).decode() for der in finding.chain_der],
                        location=sighting.location,
                        path=sighting.path,
                        host=sighting.host,
                        details=dict(sighting.details),
                    )
                )
            return found

        findings = asyncio.run(collect())
        progress(f"found {len(findings)} certificate(s)")
        return DiscoverFilesystemResult(findings=findings).model_dump(mode="json")

    # --- on-host keys for pem-files stores --------------------------------------------------------

    def _store(self, name: str) -> PemFilesStore:
        config = self.config.stores.get(name)
        if config is None:
            raise PermissionDeniedError(f"no store '{name}' is configured on this agent")
        return PemFilesStore(config, self._context(f"store-{name}"))

    def _pending_keys(self) -> Path:
        return private_dir(self.state_dir / "pending-keys")

    def _keys(self) -> Path:
        """Keys made here whose certificate was issued: kept so that the same certificate can be
        deployed to the host's other stores (PKCS#12, JKS, nginx) without the key ever leaving it."""
        return private_dir(self.state_dir / "keys")

    def keygen(self, payload: PemKeygenPayload) -> dict[str, Any]:
        """Makes the key here and returns only its CSR: the key never leaves this host."""
        self._store(payload.store)
        key = generate_private_key(payload.key_type)
        fingerprint = public_key_sha256(key)
        write_private(self._pending_keys() / f"{fingerprint}.pem", private_key_to_pem(key))
        csr = csr_to_pem(
            build_csr(key, payload.common_name, payload.dns_names, payload.ip_addresses)
        ).decode()
        return PemKeygenResult(csr_pem=csr, public_key_sha256=fingerprint).model_dump()

    def install(self, payload: PemInstallPayload, progress: Progress) -> dict[str, Any]:
        store = self._store(payload.store)
        cert = load_certificate(payload.certificate_pem.encode())
        if public_key_sha256(cert) != payload.public_key_sha256:
            raise InvalidInputError("the certificate is not for the key this agent made")
        pending = self._pending_keys() / f"{payload.public_key_sha256}.pem"
        if not pending.exists():
            held = store.read_entry(payload.alias)
            if held is not None and certificate_facts(load_certificate(held.certificate_pem)).fingerprint == (
                certificate_facts(cert).fingerprint
            ):
                # Installed by an earlier try whose result was lost: the goal is reached.
                return PemInstallResult(
                    fingerprint=certificate_facts(cert).fingerprint, replaced=True
                ).model_dump()
            raise InvalidInputError(f"no key {payload.public_key_sha256[:16]}… is waiting on this agent")
        key_pem = pending.read_bytes()
        added = store.add(
            AddRequest(
                alias=payload.alias,
                certificate_pem=payload.certificate_pem.encode(),
                chain_pem=tuple(pem.encode() for pem in payload.chain_pem),
                private_key_pem=key_pem,
            )
        )
        os.replace(pending, self._keys() / pending.name)
        progress(f"installed as '{payload.alias}' in store '{payload.store}'")
        return PemInstallResult(
            fingerprint=certificate_facts(cert).fingerprint, replaced=added.replaced
        ).model_dump()
