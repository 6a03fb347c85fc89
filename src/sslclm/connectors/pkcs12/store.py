"""PKCS#12 files, one per alias, replaced atomically with the previous file kept for rollback.

One file per alias because a PKCS#12 file is, for nearly every program that reads one (IIS, Tomcat's
``certificateKeystoreFile``, HAProxy, Node), one key and its chain; cryptography can also only
write one key per file. The alias is the file name (from the template) and the friendly name
inside it. An existing file is only replaced when the configured password opens it, so a wrong
password never destroys a keystore someone else made.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from sslclm.errors import ConflictError, ConnectorError, InvalidInputError, NotFoundError
from sslclm.pki.keystores import KeystoreEntry, build_pkcs12, load_key_material, read_pkcs12
from sslclm.spi.base import CHECK, ConnectorConfig
from sslclm.spi.capabilities import Capability
from sslclm.spi.config_fields import AbsolutePath, AliasTemplate, NonEmptySecret, SecretFileMode
from sslclm.spi.files import (
    ALIAS,
    FileSpec,
    check_alias,
    remove_file_set,
    resolve_ids,
    restore_previous,
    write_file_set,
)
from sslclm.spi.keystore_files import directory_lock, keystore_error, read_keystore_file
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

# check() opens at most this many existing files to prove the password; more only costs time.
_CHECK_SAMPLE = 20


class Pkcs12Config(ConnectorConfig):
    directory: AbsolutePath = Field(
        description="Absolute path of the directory the PKCS#12 files are written to"
    )
    file_name: AliasTemplate = Field("{alias}.p12", description="File name template holding {alias} once")
    password: NonEmptySecret = Field(description="Password of every PKCS#12 file of this store")
    legacy_encryption: bool = Field(
        False,
        description="3DES and a SHA-1 MAC for readers older than Java 8u301 / openssl 1.1 "
        "(default: AES-256-CBC, PBKDF2, HMAC-SHA256)",
    )
    owner: str | None = Field(None, description="Owner of the files (name or uid)")
    group: str | None = Field(None, description="Group of the files (name or gid)")
    mode: SecretFileMode = Field("0600", description="Mode of the files (octal; never readable by others)")


class Pkcs12Store(CertificateStore):
    """A directory of password-protected PKCS#12 files, ``{alias}.p12`` by default."""

    type_key = "pkcs12"
    display_name = "PKCS#12 files"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.INVENTORY, Capability.ADD, Capability.REMOVE, Capability.CREATE}
    )
    Config = Pkcs12Config
    needs_private_key = True

    @property
    def settings(self) -> Pkcs12Config:
        assert isinstance(self.config, Pkcs12Config)
        return self.config

    @property
    def directory(self) -> Path:
        return Path(self.settings.directory)

    def path_of(self, alias: str) -> Path:
        return self.directory / self.settings.file_name.format(alias=check_alias(alias))

    def _open(self, path: Path, data: bytes) -> KeystoreEntry:
        try:
            return read_pkcs12(data, self.settings.password.get_secret_value())
        except InvalidInputError as exc:
            raise keystore_error(path, exc) from None

    # -- writing --

    def add(self, request: AddRequest) -> AddResult:
        path = self.path_of(request.alias)
        material = load_key_material(request.certificate_pem, request.chain_pem, request.private_key_pem)
        content = build_pkcs12(
            material,
            alias=request.alias,
            password=self.settings.password.get_secret_value(),
            legacy=self.settings.legacy_encryption,
        )
        with directory_lock(self.directory):
            held = read_keystore_file(path)
            if held is not None:
                if not request.overwrite:
                    raise ConflictError(f"alias '{request.alias}' already exists", field="alias")
                self._open(path, held)  # refuses to replace a file this store cannot open
            spec = FileSpec(
                path,
                content,
                mode=int(self.settings.mode, 8),
                owner=self.settings.owner,
                group=self.settings.group,
            )
            write_file_set([spec])
        return AddResult(alias=request.alias, replaced=held is not None)

    def remove(self, request: RemoveRequest) -> RemoveResult:
        path = self.path_of(request.alias)
        with directory_lock(self.directory):
            if not path.exists():
                raise NotFoundError(f"alias '{request.alias}' is not in the store", field="alias")
            remove_file_set([path])
        return RemoveResult(alias=request.alias)

    def restore_previous(self, alias: str) -> bool:
        """Puts back the file the last ``add`` of ``alias`` replaced (see ``RestorableStore``)."""
        with directory_lock(self.directory):
            return restore_previous([self.path_of(alias)])

    def create(self, request: CreateRequest) -> CreateResult:
        if self.directory.is_dir():
            return CreateResult(created=False)
        try:
            self.directory.mkdir(parents=True, mode=0o750)
        except OSError as exc:
            raise ConnectorError(
                f"cannot create {self.directory}: {exc.strerror or exc}", retryable=False
            ) from None
        return CreateResult(created=True)

    # -- reading --

    def read_entry(self, alias: str) -> StoreEntry | None:
        """The entry under ``alias``; ConnectorError if its file does not open with the password."""
        path = self.path_of(alias)
        data = read_keystore_file(path)
        if data is None:
            return None
        entry = self._open(path, data)
        if not entry.certificates_pem:
            return None
        return StoreEntry(
            alias=alias,
            certificate_pem=entry.certificates_pem[0],
            chain_pem=entry.certificates_pem[1:],
            has_private_key=entry.has_private_key,
            modified_at=datetime.fromtimestamp(path.stat().st_mtime, UTC),
            details={"path": str(path), "friendly_name": entry.alias},
        )

    def aliases(self) -> list[str]:
        prefix, _, suffix = self.settings.file_name.partition("{alias}")
        try:
            names = sorted(entry.name for entry in os.scandir(self.directory) if entry.is_file())
        except OSError as exc:
            raise ConnectorError(f"cannot list {self.directory}: {exc.strerror or exc}") from None
        found = []
        for name in names:
            if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix) + len(suffix):
                alias = name[len(prefix) : len(name) - len(suffix)]
                if ALIAS.match(alias) and ".." not in alias:
                    found.append(alias)
        return found

    def inventory(self, request: InventoryRequest) -> InventoryResult:
        aliases = [a for a in self.aliases() if request.cursor is None or a > request.cursor]
        page = aliases[: max(1, request.limit)]
        entries = []
        for alias in page:
            try:
                entry = self.read_entry(alias)
            except ConnectorError as exc:
                # One foreign or broken file must not hide the rest; check() reports it.
                self.context.logger.warning("pkcs12 store skips %s: %s", alias, exc.message)
                continue
            if entry is not None:
                entries.append(entry)
        more = len(aliases) > len(page)
        return InventoryResult(entries=tuple(entries), next_cursor=page[-1] if more and page else None)

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        directory = self.directory
        if not directory.is_dir():
            return CheckResult(ok=False, message=f"directory {directory} does not exist")
        if not os.access(directory, os.W_OK | os.X_OK):
            return CheckResult(ok=False, message=f"directory {directory} is not writable")
        try:
            resolve_ids(self.settings.owner, self.settings.group)
            aliases = self.aliases()
            for alias in aliases[:_CHECK_SAMPLE]:
                self.read_entry(alias)
        except (InvalidInputError, ConnectorError) as exc:
            return CheckResult(ok=False, message=exc.message)
        return CheckResult(
            ok=True, message=f"directory {directory} is writable; {len(aliases)} keystore file(s)"
        )
