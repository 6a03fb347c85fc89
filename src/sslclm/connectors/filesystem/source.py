"""The ``filesystem`` discovery source: certificates in files on the host it runs on (the agent's).

Each certificate found becomes a finding with a ``file`` sighting whose details carry the file's
owner, mode and format, and where its private key is (with ``key_exposed`` when that file is
readable by group or others). Problems that concern no certificate (a locked keystore, an
unreadable file, a stray key) go to the connector's log; :func:`walk` reports them all for
callers that want them.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

from pydantic import Field, SecretStr

from sslclm.connectors.filesystem.walker import (
    DEFAULT_INCLUDE,
    CertificateFinding,
    KeyFinding,
    ProblemFinding,
    WalkOptions,
    walk,
)
from sslclm.pki import DEFAULT_MAX_SIZE
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

# Findings are produced by a thread in chunks of this many, so the event loop is never blocked on disk.
_CHUNK = 200


class FilesystemConfig(ConnectorConfig):
    paths: list[str] = Field(min_length=1, max_length=1000, description="Files and directories to walk.")
    include: list[str] = Field(default_factory=lambda: list(DEFAULT_INCLUDE), description="File name globs.")
    exclude: list[str] = Field(
        default_factory=list, description="Name or path globs skipped (directories too)."
    )
    passwords: list[SecretStr] = Field(
        default_factory=list, max_length=100, description="Tried in order on keystores and encrypted keys."
    )
    follow_symlinks: bool = True
    max_file_size: int = Field(default=DEFAULT_MAX_SIZE, ge=1, le=512 * 1024 * 1024)
    max_depth: int = Field(default=64, ge=0, le=1000)


class FilesystemSource(DiscoverySource):
    type_key: ClassVar[str] = "filesystem"
    display_name: ClassVar[str] = "Filesystem"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.DISCOVER})
    Config = FilesystemConfig

    @property
    def settings(self) -> FilesystemConfig:
        assert isinstance(self.config, FilesystemConfig)
        return self.config

    def options(self, request: DiscoveryRequest) -> WalkOptions:
        """The walk for ``request``: its targets replace the configured paths when given."""
        config = self.settings
        return WalkOptions(
            paths=tuple(request.targets or config.paths),
            include=tuple(config.include),
            exclude=tuple(config.exclude),
            passwords=tuple(p.get_secret_value() for p in config.passwords),
            follow_symlinks=config.follow_symlinks,
            max_file_size=config.max_file_size,
            max_depth=config.max_depth,
        )

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        missing = [path for path in self.settings.paths if not os.path.exists(path)]
        unreadable = [p for p in self.settings.paths if os.path.exists(p) and not os.access(p, os.R_OK)]
        if missing or unreadable:
            parts = []
            if missing:
                parts.append(f"missing: {', '.join(missing[:5])}")
            if unreadable:
                parts.append(f"not readable: {', '.join(unreadable[:5])}")
            return CheckResult(ok=False, message="; ".join(parts), details={"missing": missing})
        return CheckResult(ok=True, message=f"{len(self.settings.paths)} path(s) readable")

    async def discover(self, request: DiscoveryRequest) -> AsyncIterator[Finding]:
        options = self.options(request)
        host = socket.gethostname()
        findings = self._findings(options, host)
        while True:
            chunk = await asyncio.to_thread(_take, findings, _CHUNK)
            for finding in chunk:
                yield finding
            if len(chunk) < _CHUNK:
                return

    def _findings(self, options: WalkOptions, host: str) -> Iterator[Finding]:
        log = self.context.logger
        exposed: set[str] = set()
        keys: dict[str, KeyFinding] = {}
        pending: list[CertificateFinding] = []
        current_dir: str | None = None

        def flush() -> Iterator[Finding]:
            # Findings of one directory arrive together; certificates wait for the directory's keys.
            by_file: dict[str, list[bytes]] = {}
            for cert in pending:
                by_file.setdefault(cert.file.path, []).append(cert.der)
            for cert in pending:
                # The first certificate of a file is presented with the rest of the file as its chain.
                chain = tuple(by_file[cert.file.path][1:]) if cert.index == 0 else ()
                yield self._finding(cert, keys, exposed, host, chain)
            pending.clear()
            keys.clear()

        for item in walk(options):
            directory = os.path.dirname(item.path if isinstance(item, ProblemFinding) else item.file.path)
            if directory != current_dir:
                yield from flush()
                current_dir = directory
            if isinstance(item, CertificateFinding):
                pending.append(item)
            elif isinstance(item, KeyFinding):
                keys[item.file.path] = item
                if not item.certificates:
                    log.info("private key without a certificate beside it: %s", item.file.path)
            else:
                if item.kind == "exposed-key":
                    exposed.add(item.path)
                log.warning("%s: %s: %s", item.kind.value, item.path, item.message)
        yield from flush()

    def _finding(
        self,
        cert: CertificateFinding,
        keys: dict[str, KeyFinding],
        exposed: set[str],
        host: str,
        chain: tuple[bytes, ...],
    ) -> Finding:
        meta = cert.file
        details: dict[str, Any] = {
            "format": cert.format,
            "index": cert.index,
            "owner": meta.owner,
            "uid": meta.uid,
            "group": meta.group,
            "mode": meta.mode_text,
            "size": meta.size,
            "modified_at": meta.modified_at.isoformat(),
        }
        if cert.key_path is not None:
            details["key_path"] = cert.key_path
            details["key_exposed"] = cert.key_path in exposed
            key = keys.get(cert.key_path)
            if key is not None:
                details["key_encrypted"] = key.encrypted
        sighting = Sighting(
            kind=SightingKind.FILE,
            seen_at=self.context.now(),
            location=meta.path if cert.index == 0 else f"{meta.path}#{cert.index}",
            host=host,
            path=meta.path,
            details=details,
        )
        return Finding(certificate_der=cert.der, sighting=sighting, chain_der=chain)


def _take(items: Iterator[Finding], count: int) -> list[Finding]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= count:
            break
    return chunk
