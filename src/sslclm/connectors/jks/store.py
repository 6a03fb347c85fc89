"""One Java KeyStore file: add, replace and remove private key entries by alias (pyjks).

Every other entry (other keys, trusted certificates) is carried over byte for byte, still encrypted
with its own key password, so the store never needs them. The whole file is replaced atomically
and the previous one kept (``<file>.previous``) for rollback. JCEKS keystores are listed but not
written: pyjks cannot write JCEKS.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from pydantic import Field, SecretStr

from sslclm.errors import ConflictError, ConnectorError, InvalidInputError, NotFoundError
from sslclm.pki.keystores import JavaKeystore, KeystoreEntry, load_key_material
from sslclm.spi.base import CHECK, ConnectorConfig
from sslclm.spi.capabilities import Capability
from sslclm.spi.config_fields import AbsolutePath, NonEmptySecret, SecretFileMode
from sslclm.spi.files import FileSpec, resolve_ids, restore_previous, write_file_set
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

# Java reads aliases as modified UTF-8 strings; keep them printable and of a sane length.
_MAX_ALIAS = 255


class JksConfig(ConnectorConfig):
    path: AbsolutePath = Field(
        description="Absolute path of the keystore file (created on first add if missing)"
    )
    store_password: NonEmptySecret = Field(description="Keystore password (-storepass)")
    key_password: SecretStr | None = Field(
        None,
        description="Password of the private key entries written (-keypass); default: the store password",
    )
    owner: str | None = Field(None, description="Owner of the file (name or uid)")
    group: str | None = Field(None, description="Group of the file (name or gid)")
    mode: SecretFileMode = Field("0600", description="Mode of the file (octal; never readable by others)")


def _check_alias(alias: str) -> str:
    if len(alias) > _MAX_ALIAS or not alias.isprintable() or alias != alias.strip():
        raise InvalidInputError(
            f"a keystore alias is 1-{_MAX_ALIAS} printable characters without surrounding spaces",
            field="alias",
        )
    return alias


class JksStore(CertificateStore):
    """Private key entries of one JKS keystore; inventory lists every entry."""

    type_key = "jks"
    display_name = "Java KeyStore (JKS)"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.INVENTORY, Capability.ADD, Capability.REMOVE, Capability.CREATE}
    )
    Config = JksConfig
    needs_private_key = True

    @property
    def settings(self) -> JksConfig:
        assert isinstance(self.config, JksConfig)
        return self.config

    @property
    def path(self) -> Path:
        return Path(self.settings.path)

    @property
    def _store_password(self) -> str:
        return self.settings.store_password.get_secret_value()

    @property
    def _key_password(self) -> str:
        secret = self.settings.key_password
        return secret.get_secret_value() if secret and secret.get_secret_value() else self._store_password

    def _load(self) -> JavaKeystore | None:
        data = read_keystore_file(self.path)
        if data is None:
            return None
        try:
            return JavaKeystore.load(data, self._store_password)
        except InvalidInputError as exc:
            raise keystore_error(self.path, exc) from None

    def _save(self, keystore: JavaKeystore) -> None:
        try:
            content = keystore.dumps(self._store_password)
        except InvalidInputError as exc:
            raise keystore_error(self.path, exc) from None
        spec = FileSpec(
            self.path,
            content,
            mode=int(self.settings.mode, 8),
            owner=self.settings.owner,
            group=self.settings.group,
        )
        write_file_set([spec])

    def _writable(self, keystore: JavaKeystore) -> None:
        if keystore.store_type != "JKS":
            raise ConnectorError(
                f"{self.path} is a {keystore.store_type} keystore: it can be listed but not written "
                "(pyjks writes only JKS)",
                retryable=False,
            )

    # -- writing --

    def add(self, request: AddRequest) -> AddResult:
        alias = _check_alias(request.alias)
        material = load_key_material(request.certificate_pem, request.chain_pem, request.private_key_pem)
        with directory_lock(self.path.parent):
            keystore = self._load() or JavaKeystore.new()
            self._writable(keystore)
            if not request.overwrite and keystore.get(alias) is not None:
                raise ConflictError(f"alias '{alias}' already exists", field="alias")
            replaced = keystore.put_private_key(alias, material, key_password=self._key_password)
            self._save(keystore)
        return AddResult(alias=alias, replaced=replaced)

    def remove(self, request: RemoveRequest) -> RemoveResult:
        with directory_lock(self.path.parent):
            keystore = self._load()
            if keystore is None or keystore.get(request.alias) is None:
                raise NotFoundError(f"alias '{request.alias}' is not in the store", field="alias")
            self._writable(keystore)
            keystore.delete(request.alias)
            self._save(keystore)
        return RemoveResult(alias=request.alias)

    def restore_previous(self, alias: str) -> bool:
        """Puts back the keystore file as it was before the last change (see ``RestorableStore``).

        The whole file is restored, so a change to another alias made after that one is undone too;
        the deployment workflow rolls back right after its own add, before anything else runs.
        """
        with directory_lock(self.path.parent):
            return restore_previous([self.path])

    def create(self, request: CreateRequest) -> CreateResult:
        with directory_lock(self.path.parent):
            if self._load() is not None:
                return CreateResult(created=False)
            self._save(JavaKeystore.new())
        return CreateResult(created=True)

    # -- reading --

    @staticmethod
    def _as_store_entry(entry: KeystoreEntry) -> StoreEntry | None:
        if not entry.certificates_pem:
            return None  # a JCEKS secret key entry holds no certificate
        return StoreEntry(
            alias=entry.alias,
            certificate_pem=entry.certificates_pem[0],
            chain_pem=entry.certificates_pem[1:],
            has_private_key=entry.has_private_key,
            modified_at=entry.modified_at,
            details={"entry_type": entry.kind},
        )

    def read_entry(self, alias: str) -> StoreEntry | None:
        keystore = self._load()
        entry = keystore.get(alias) if keystore is not None else None
        return self._as_store_entry(entry) if entry is not None else None

    def inventory(self, request: InventoryRequest) -> InventoryResult:
        keystore = self._load()
        listed = [] if keystore is None else keystore.entries()
        after = [entry for entry in listed if request.cursor is None or entry.alias > request.cursor]
        page = after[: max(1, request.limit)]
        entries = [found for found in map(self._as_store_entry, page) if found is not None]
        more = len(after) > len(page)
        return InventoryResult(entries=tuple(entries), next_cursor=page[-1].alias if more and page else None)

    def check(self, request: CheckRequest = CHECK) -> CheckResult:
        directory = self.path.parent
        if not directory.is_dir():
            return CheckResult(ok=False, message=f"directory {directory} does not exist")
        if not os.access(directory, os.W_OK | os.X_OK):
            return CheckResult(ok=False, message=f"directory {directory} is not writable")
        try:
            resolve_ids(self.settings.owner, self.settings.group)
            keystore = self._load()
        except (InvalidInputError, ConnectorError) as exc:
            return CheckResult(ok=False, message=exc.message)
        if keystore is None:
            return CheckResult(ok=True, message=f"{self.path} does not exist yet; the first add creates it")
        count = len(keystore.entries())
        kind = keystore.store_type
        suffix = "" if kind == "JKS" else " (read only: pyjks cannot write it)"
        return CheckResult(ok=True, message=f"{kind} keystore {self.path} opens; {count} entries{suffix}")
