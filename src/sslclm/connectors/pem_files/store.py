"""PEM files at configured paths, replaced atomically, with the previous set kept for rollback."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from sslclm.errors import ConnectorError
from sslclm.spi.base import CHECK, ConnectorConfig
from sslclm.spi.capabilities import Capability
from sslclm.spi.config_fields import AbsolutePath, AliasTemplateOrEmpty, FileMode, SecretFileMode
from sslclm.spi.files import PemLayout
from sslclm.spi.store import (
    AddRequest,
    AddResult,
    CertificateStore,
    CreateRequest,
    CreateResult,
    InventoryRequest,
    InventoryResult,
    RemoveRequest,
    RemoveResult,
    StoreEntry,
)
from sslclm.spi.types import CheckRequest, CheckResult


class PemFilesConfig(ConnectorConfig):
    directory: AbsolutePath = Field(description="Absolute path of the directory the files are written to")
    certificate_file: AliasTemplateOrEmpty = Field(
        "{alias}.crt", description="File name template; empty to skip"
    )
    key_file: AliasTemplateOrEmpty = Field(
        "{alias}.key", description="File name template; empty: the key is not written"
    )
    chain_file: AliasTemplateOrEmpty = Field(
        "{alias}.chain.pem", description="File name template; empty to skip"
    )
    fullchain_file: AliasTemplateOrEmpty = Field(
        "{alias}.fullchain.pem", description="File name template; empty to skip"
    )
    owner: str | None = Field(None, description="Owner of the files (name or uid)")
    group: str | None = Field(None, description="Group of the files (name or gid)")
    mode: FileMode = Field("0644", description="Mode of certificate files (octal)")
    key_mode: SecretFileMode = Field(
        "0600", description="Mode of the key file (octal; never readable by others)"
    )

    def layout(self, **extra: str) -> PemLayout:
        return PemLayout(
            directory=Path(self.directory),
            certificate_file=self.certificate_file,
            key_file=self.key_file,
            chain_file=self.chain_file,
            fullchain_file=self.fullchain_file,
            owner=self.owner,
            group=self.group,
            mode=int(self.mode, 8),
            key_mode=int(self.key_mode, 8),
            **extra,
        )


class PemFilesStore(CertificateStore):
    """A directory of PEM files; each alias is one set of files named from the templates."""

    type_key = "pem-files"
    display_name = "PEM files"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.INVENTORY, Capability.ADD, Capability.REMOVE, Capability.CREATE}
    )
    Config = PemFilesConfig

    @property
    def layout(self) -> PemLayout:
        assert isinstance(self.config, PemFilesConfig)
        return self.config.layout()

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        return self.layout.check()

    def inventory(self, request: InventoryRequest) -> InventoryResult:
        return self.layout.inventory(request)

    def add(self, request: AddRequest) -> AddResult:
        return self.layout.add(request)

    def remove(self, request: RemoveRequest) -> RemoveResult:
        return self.layout.remove(request)

    def create(self, request: CreateRequest) -> CreateResult:
        directory = self.layout.directory
        if directory.is_dir():
            return CreateResult(created=False)
        try:
            directory.mkdir(parents=True, mode=0o755)
        except OSError as exc:
            raise ConnectorError(
                f"cannot create {directory}: {exc.strerror or exc}", retryable=False
            ) from None
        return CreateResult(created=True)

    @property
    def needs_private_key(self) -> bool:
        return self.layout.needs_key()

    def read_entry(self, alias: str) -> StoreEntry | None:
        """The entry under ``alias`` without listing the directory."""
        return self.layout.read(alias)

    def restore_previous(self, alias: str) -> bool:
        """Puts back the files the last ``add`` of ``alias`` replaced (see ``RestorableStore``)."""
        return self.layout.restore(alias)
