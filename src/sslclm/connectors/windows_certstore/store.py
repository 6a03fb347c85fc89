"""The Windows certificate store (``Cert:\\LocalMachine\\My``) through PowerShell, on a Windows agent.

The alias is the certificate's friendly name. ``add`` imports the new certificate first, then moves
the IIS binding (if configured) to it, and only then deletes the certificates that held the alias
before, so a failure at any step leaves a working certificate in place. There is no
``restore_previous``: the deployment workflow rolls back by adding the previous certificate again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from sslclm.connectors.windows_certstore.powershell import (
    PASSWORD_VARIABLE,
    IisBinding,
    PowerShellRunner,
    SubprocessPowerShell,
    WindowsCertificate,
    error_line,
    iis_binding_script,
    import_pfx_script,
    list_script,
    parse_certificates,
    parse_thumbprint,
    remove_script,
    store_path,
)
from sslclm.errors import ConflictError, ConnectorError, InvalidInputError, NotFoundError
from sslclm.pki import certificate_to_pem
from sslclm.pki.keystores import KeyMaterial, build_pkcs12, load_key_material
from sslclm.spi.base import CHECK, ConnectorConfig
from sslclm.spi.capabilities import Capability
from sslclm.spi.context import ConnectorContext
from sslclm.spi.store import (
    AddRequest,
    AddResult,
    CertificateStore,
    InventoryRequest,
    InventoryResult,
    RemoveRequest,
    RemoveResult,
    StoreEntry,
)
from sslclm.spi.types import CheckRequest, CheckResult


def _valid_store_name(name: str) -> str:
    try:
        store_path("LocalMachine", name)
    except InvalidInputError as exc:
        raise ValueError(exc.message) from None  # pydantic reports ValueError as a field error
    return name


class WindowsCertStoreConfig(ConnectorConfig):
    store_location: Literal["LocalMachine", "CurrentUser"] = Field(
        "LocalMachine", description="Certificate store location"
    )
    store_name: str = Field("My", description="Store for the certificate and key (My = Personal)")
    chain_store: str = Field(
        "CA",
        description="Store for the chain certificates (CA: Intermediate Certification Authorities); "
        "empty to skip",
    )
    exportable: bool = Field(False, description="Mark the imported private key exportable")
    legacy_pfx_encryption: bool = Field(
        True,
        description="Hand the key over in a 3DES PFX that every Windows version imports (Windows Server "
        "2016 and older cannot read AES-256 PFX files); the file exists only during the import",
    )
    iis_site: str | None = Field(None, description="IIS site whose HTTPS binding gets the certificate")
    iis_port: int = Field(443, ge=1, le=65535, description="Port of that HTTPS binding")
    iis_host_header: str = Field("", description="Host header (SNI name) of that binding; empty for none")
    iis_ip_address: str = Field("*", description="IP address of that binding; * for all unassigned")
    powershell: str = Field("powershell.exe", description="PowerShell executable (pwsh.exe for PowerShell 7)")
    timeout: float = Field(120.0, gt=0, le=900, description="Seconds one PowerShell call may take")

    @field_validator("store_name")
    @classmethod
    def _store_name(cls, value: str) -> str:
        return _valid_store_name(value)

    @field_validator("chain_store")
    @classmethod
    def _chain_store(cls, value: str) -> str:
        return _valid_store_name(value) if value else value


def _check_alias(alias: str) -> str:
    if len(alias) > 255 or not alias.isprintable() or alias != alias.strip():
        raise InvalidInputError(
            "a friendly name is 1-255 printable characters without surrounding spaces", field="alias"
        )
    return alias


def _thumbprint(der: bytes) -> str:
    # Windows names certificates by the SHA-1 of their DER; only an identifier here, not a security check.
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


class WindowsCertStore(CertificateStore):
    """Certificates with private keys in a Windows certificate store, optionally bound in IIS."""

    type_key = "windows-certstore"
    display_name = "Windows certificate store"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.INVENTORY, Capability.ADD, Capability.REMOVE}
    )
    Config = WindowsCertStoreConfig
    needs_private_key = True

    def __init__(
        self,
        config: WindowsCertStoreConfig,
        context: ConnectorContext,
        runner: PowerShellRunner | None = None,
    ) -> None:
        super().__init__(config, context)
        self.runner: PowerShellRunner = runner or SubprocessPowerShell(executable=config.powershell)

    @property
    def settings(self) -> WindowsCertStoreConfig:
        assert isinstance(self.config, WindowsCertStoreConfig)
        return self.config

    @property
    def path(self) -> str:
        return store_path(self.settings.store_location, self.settings.store_name)

    def _run(self, script: str, what: str, secret_env: Mapping[str, str] | None = None) -> str:
        result = self.runner.run(script, secret_env=secret_env or {}, timeout=self.settings.timeout)
        if result.returncode != 0:
            raise ConnectorError(f"{what} failed: {error_line(result)}", retryable=False)
        return result.stdout

    def certificates(self) -> list[WindowsCertificate]:
        return parse_certificates(self._run(list_script(self.path), f"listing {self.path}"))

    def _holding(self, alias: str) -> list[WindowsCertificate]:
        wanted = alias.casefold()
        return [
            cert
            for cert in self.certificates()
            if cert.friendly_name.casefold() == wanted or cert.thumbprint == alias.upper()
        ]

    # -- writing --

    def add(self, request: AddRequest) -> AddResult:
        alias = _check_alias(request.alias)
        material = load_key_material(request.certificate_pem, request.chain_pem, request.private_key_pem)
        new_thumbprint = _thumbprint(material.certificate_der)
        held = self._holding(alias)
        if held and not request.overwrite:
            raise ConflictError(f"alias '{alias}' already exists", field="alias")
        thumbprint = self._import(alias, material)
        if thumbprint != new_thumbprint:
            raise ConnectorError(
                f"Import-PfxCertificate reported {thumbprint}, expected {new_thumbprint}", retryable=False
            )
        if self.settings.iis_site:
            binding = IisBinding(
                site=self.settings.iis_site,
                port=self.settings.iis_port,
                host_header=self.settings.iis_host_header,
                ip_address=self.settings.iis_ip_address,
            )
            script = iis_binding_script(binding, thumbprint, self.settings.store_name)
            self._run(script, f"updating the HTTPS binding of IIS site '{binding.site}'")
        for old in held:
            if old.thumbprint != thumbprint:
                self._run(remove_script(self.path, old.thumbprint), f"removing {old.thumbprint}")
        return AddResult(alias=alias, replaced=bool(held))

    def _import(self, alias: str, material: KeyMaterial) -> str:
        password = secrets.token_urlsafe(24)  # protects the PFX only while it sits in the temp file
        pfx = build_pkcs12(
            material.without_chain(),
            alias=alias,
            password=password,
            legacy=self.settings.legacy_pfx_encryption,
        )
        chain = [certificate_to_pem(der) for der in material.chain_der]
        with self._temp_files([pfx, *chain]) as paths:
            chain_store = (
                store_path(self.settings.store_location, self.settings.chain_store)
                if self.settings.chain_store
                else None
            )
            script = import_pfx_script(
                self.path,
                paths[0],
                exportable=self.settings.exportable,
                chain_store=chain_store,
                chain_files=paths[1:],
            )
            output = self._run(script, f"importing into {self.path}", {PASSWORD_VARIABLE: password})
        return parse_thumbprint(output)

    @contextlib.contextmanager
    def _temp_files(self, contents: list[bytes]) -> Iterator[list[str]]:
        """Owner-only files in the connector's data directory, deleted whatever happens."""
        made: list[Path] = []
        try:
            for number, content in enumerate(contents):
                suffix = ".pfx" if number == 0 else ".cer"
                fd, name = tempfile.mkstemp(prefix="import-", suffix=suffix, dir=self.context.data_dir)
                made.append(Path(name))
                with os.fdopen(fd, "wb") as handle:
                    handle.write(content)
            yield [str(path) for path in made]
        finally:
            for path in made:
                path.unlink(missing_ok=True)

    def remove(self, request: RemoveRequest) -> RemoveResult:
        held = self._holding(request.alias)
        if not held:
            raise NotFoundError(f"alias '{request.alias}' is not in {self.path}", field="alias")
        for cert in held:
            self._run(remove_script(self.path, cert.thumbprint), f"removing {cert.thumbprint}")
        return RemoveResult(alias=request.alias)

    # -- reading --

    def _entries(self) -> list[StoreEntry]:
        """One entry per certificate; a friendly name held twice names the newest, others their thumbprint."""
        newest_first = sorted(
            self.certificates(), key=lambda c: c.not_before.timestamp() if c.not_before else 0.0, reverse=True
        )
        entries: dict[str, StoreEntry] = {}
        for cert in newest_first:
            taken = {known.casefold() for known in entries}
            named = cert.friendly_name and cert.friendly_name.casefold() not in taken
            alias = cert.friendly_name if named else cert.thumbprint
            entries[alias] = StoreEntry(
                alias=alias,
                certificate_pem=certificate_to_pem(cert.der),
                has_private_key=cert.has_private_key,
                modified_at=cert.not_before,
                details={
                    "thumbprint": cert.thumbprint,
                    "friendly_name": cert.friendly_name,
                    "subject": cert.subject,
                    "store": self.path,
                },
            )
        return [entries[alias] for alias in sorted(entries)]

    def read_entry(self, alias: str) -> StoreEntry | None:
        wanted = alias.casefold()
        return next((e for e in self._entries() if e.alias.casefold() == wanted), None)

    def inventory(self, request: InventoryRequest) -> InventoryResult:
        after = [e for e in self._entries() if request.cursor is None or e.alias > request.cursor]
        page = after[: max(1, request.limit)]
        more = len(after) > len(page)
        return InventoryResult(entries=tuple(page), next_cursor=page[-1].alias if more and page else None)

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        reason = self.runner.unavailable_reason()
        if reason is not None:
            return CheckResult(ok=False, message=reason)
        try:
            count = len(self.certificates())
        except ConnectorError as exc:
            return CheckResult(ok=False, message=exc.message)
        return CheckResult(ok=True, message=f"{self.path} holds {count} certificate(s)")
