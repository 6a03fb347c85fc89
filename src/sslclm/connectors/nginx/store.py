"""nginx: write the files atomically, ``nginx -t``, then ``nginx -s reload``.

The platform verifies afterwards, by a TLS handshake, that the endpoint serves the new certificate;
on failure it calls ``restore_previous`` and ``reload`` again.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from sslclm.errors import ConnectorError
from sslclm.spi.base import CHECK, ConnectorConfig
from sslclm.spi.capabilities import Capability
from sslclm.spi.config_fields import AbsolutePath, AliasTemplate, FileMode, SecretFileMode
from sslclm.spi.files import PemLayout
from sslclm.spi.store import (
    AddRequest,
    AddResult,
    CertificateStore,
    InventoryRequest,
    InventoryResult,
    ReloadRequest,
    ReloadResult,
    RemoveRequest,
    RemoveResult,
    StoreEntry,
)
from sslclm.spi.types import CheckRequest, CheckResult


class NginxConfig(ConnectorConfig):
    directory: AbsolutePath = Field(
        description="Absolute path of the directory nginx reads certificates from"
    )
    fullchain_file: AliasTemplate = Field(
        "{alias}.fullchain.pem", description="ssl_certificate file name template"
    )
    key_file: AliasTemplate = Field("{alias}.key", description="ssl_certificate_key file name template")
    owner: str | None = None
    group: str | None = None
    mode: FileMode = "0644"
    key_mode: SecretFileMode = "0600"
    nginx: str = Field("nginx", description="The nginx binary")
    config_file: str | None = Field(None, description="nginx -c: the main configuration file")
    prefix: str | None = Field(None, description="nginx -p: the prefix path")
    timeout: float = Field(30.0, gt=0, le=600, description="Seconds a test or reload may take")


class NginxStore(CertificateStore):
    type_key = "nginx"
    display_name = "nginx"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.INVENTORY, Capability.ADD, Capability.REMOVE, Capability.RELOAD}
    )
    Config = NginxConfig
    needs_private_key = True

    @property
    def _config(self) -> NginxConfig:
        assert isinstance(self.config, NginxConfig)
        return self.config

    @property
    def layout(self) -> PemLayout:
        c = self._config
        return PemLayout(
            directory=Path(c.directory),
            certificate_file="",
            chain_file="",
            fullchain_file=c.fullchain_file,
            key_file=c.key_file,
            owner=c.owner,
            group=c.group,
            mode=int(c.mode, 8),
            key_mode=int(c.key_mode, 8),
        )

    def _command(self, *args: str) -> list[str]:
        c = self._config
        command = [c.nginx]
        if c.prefix:
            command += ["-p", c.prefix]
        if c.config_file:
            command += ["-c", c.config_file]
        return [*command, *args]

    def _run(self, *args: str) -> str:
        try:
            done = subprocess.run(
                self._command(*args),
                capture_output=True,
                text=True,
                timeout=self._config.timeout,
                check=False,
            )
        except FileNotFoundError:
            raise ConnectorError(f"nginx binary '{self._config.nginx}' not found", retryable=False) from None
        except subprocess.TimeoutExpired:
            raise ConnectorError(f"nginx {' '.join(args)} timed out", retryable=True) from None
        output = (done.stderr or done.stdout).strip()
        if done.returncode != 0:
            lines = [line for line in output.splitlines() if "[emerg]" in line or "failed" in line] or [
                output
            ]
            raise ConnectorError(f"nginx {' '.join(args)} failed: {lines[0][:300]}", retryable=False)
        return output

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        files = self.layout.check()
        if not files.ok:
            return files
        try:
            self._run("-t", "-q")
        except ConnectorError as exc:
            return CheckResult(ok=False, message=exc.message)
        return CheckResult(ok=True, message="nginx configuration test passed; " + files.message)

    def inventory(self, request: InventoryRequest) -> InventoryResult:
        return self.layout.inventory(request)

    def read_entry(self, alias: str) -> StoreEntry | None:
        return self.layout.read(alias)

    def add(self, request: AddRequest) -> AddResult:
        return self.layout.add(request)

    def remove(self, request: RemoveRequest) -> RemoveResult:
        return self.layout.remove(request)

    def restore_previous(self, alias: str) -> bool:
        return self.layout.restore(alias)

    def reload(self, request: ReloadRequest) -> ReloadResult:
        """Tests the configuration (with the new files), then signals the master to reload."""
        self._run("-t", "-q")
        self._run("-s", "reload")
        return ReloadResult(message="nginx reloaded")
