"""Platform stores run on the agent's host: deploy (add, reload, verify, roll back), remove, read back.

The server sends the store's connector type and configuration with each job; the agent builds the
same connector class the server would and runs it here. It trusts none of that configuration for
where it may write: every directory or keystore file must lie under the agent's ``deploy_paths``,
every file nginx is pointed at under the paths it is configured for, and every program a store runs
must be named in ``commands``. Anything else is refused before the connector is even built.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from sslclm.agent.config import AgentConfig, within
from sslclm.connectors.jks import JksStore
from sslclm.connectors.nginx import NginxStore
from sslclm.connectors.pem_files import PemFilesStore
from sslclm.connectors.pkcs12 import Pkcs12Store
from sslclm.errors import ConnectorError, InvalidInputError, NotFoundError, PermissionDeniedError
from sslclm.pki import load_certificate
from sslclm.pki.identity import certificate_facts
from sslclm.protocol import (
    StoreDeployPayload,
    StoreDeployResult,
    StoreInventoryPayload,
    StoreInventoryResult,
    StoreRemovePayload,
    StoreRemoveResult,
    StoreTarget,
    VerifyTarget,
    WireEntry,
)
from sslclm.spi.capabilities import Capability
from sslclm.spi.context import ConnectorContext
from sslclm.spi.store import (
    AddRequest,
    CertificateStore,
    InventoryRequest,
    RemoveRequest,
    StoreEntry,
    read_entry,
    reload_if_supported,
)

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
Context = Callable[[str], ConnectorContext]

# The store types an agent runs, with the configuration fields that name what it writes, what it
# reads, and which program it runs.
STORE_TYPES: dict[str, type[CertificateStore]] = {
    PemFilesStore.type_key: PemFilesStore,
    Pkcs12Store.type_key: Pkcs12Store,
    JksStore.type_key: JksStore,
    NginxStore.type_key: NginxStore,
}
WRITE_FIELDS: dict[str, tuple[str, ...]] = {
    "pem-files": ("directory",),
    "pkcs12": ("directory",),
    "jks": ("path",),
    "nginx": ("directory",),
}
READ_FIELDS: dict[str, tuple[str, ...]] = {"nginx": ("config_file", "prefix")}
COMMAND_FIELDS: dict[str, tuple[str, ...]] = {"nginx": ("nginx",), "windows-certstore": ("powershell",)}

if sys.platform == "win32":  # the Windows certificate store exists, and is declared, only there
    from sslclm.connectors.windows_certstore import WindowsCertStore

    STORE_TYPES[WindowsCertStore.type_key] = WindowsCertStore


def store_types() -> list[str]:
    """The connector types this agent runs (declared in its capabilities)."""
    return sorted(STORE_TYPES)


def fingerprint_of_pem(pem: bytes) -> str:
    return certificate_facts(load_certificate(pem)).fingerprint


def served_fingerprint(target: VerifyTarget) -> str:
    """SHA-256 of the leaf the endpoint presents (no trust check: we compare, not trust)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with (
            socket.create_connection((target.host, target.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=target.sni or None) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as exc:
        return f"(none: TLS handshake with {target.host}:{target.port} failed: {exc})"
    return hashlib.sha256(der).hexdigest() if der else "(none: no certificate presented)"


def wait_for_fingerprint(target: VerifyTarget, expected: str) -> str:
    """Polls until the endpoint serves ``expected`` (a reload takes effect as old workers drain)."""
    deadline = time.monotonic() + target.timeout
    while True:
        seen = served_fingerprint(target)
        if seen == expected or time.monotonic() >= deadline:
            return seen
        time.sleep(0.2)


class StoreJobs:
    """Runs store jobs within the limits of the agent's configuration."""

    def __init__(self, config: AgentConfig, context: Context, own_key: Callable[[str], bytes | None]) -> None:
        self.config = config
        self._context = context
        self._own_key = own_key

    def build(self, target: StoreTarget) -> CertificateStore:
        """The connector for ``target``, once its paths and programs are known to be allowed here."""
        kind = STORE_TYPES.get(target.type)
        if kind is None:
            raise InvalidInputError(
                f"this agent does not run '{target.type}' stores (it runs {', '.join(store_types())})"
            )
        try:
            config = kind.Config.model_validate(target.config)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first.get("loc", ()))
            raise InvalidInputError(f"store '{target.name}': config.{where}: {first.get('msg')}") from None
        self._confine(target, config)
        return kind(config, self._context(f"store-{target.type}"))

    def _confine(self, target: StoreTarget, config: Any) -> None:
        writable = self.config.deploy_paths
        for name in WRITE_FIELDS.get(target.type, ()):
            path = getattr(config, name)
            if not writable or not within(str(path), writable):
                raise PermissionDeniedError(
                    f"store '{target.name}': {path} is outside the paths this agent may write "
                    f"(deploy_paths: {', '.join(writable) or 'none'})"
                )
        readable = self.config.allowed_paths()
        for name in READ_FIELDS.get(target.type, ()):
            path = getattr(config, name)
            if path is not None and not within(str(path), readable):
                raise PermissionDeniedError(
                    f"store '{target.name}': {path} is outside the paths this agent is configured for"
                )
        for name in COMMAND_FIELDS.get(target.type, ()):
            program = getattr(config, name)
            if program not in self.config.commands:
                raise PermissionDeniedError(
                    f"store '{target.name}': this agent may not run '{program}' "
                    f"(commands: {', '.join(self.config.commands) or 'none'})"
                )

    # --- deploy ------------------------------------------------------------------------------------

    def _key_for(self, payload: StoreDeployPayload, store: CertificateStore) -> bytes | None:
        if not bool(getattr(store, "needs_private_key", True)):
            return None
        if payload.private_key_pem is not None:
            return payload.private_key_pem.encode()
        if payload.key_ref:
            key = self._own_key(payload.key_ref)
            if key is None:
                raise InvalidInputError(
                    f"the platform does not hold this certificate's key and this agent does not "
                    f"either (key {payload.key_ref[:16]}…)"
                )
            return key
        raise InvalidInputError(f"store '{payload.store.name}' needs the private key and none was sent")

    def deploy(self, payload: StoreDeployPayload, progress: Progress) -> dict[str, Any]:
        store = self.build(payload.store)
        name = payload.store.name
        request = AddRequest(
            alias=payload.alias,
            certificate_pem=payload.certificate_pem.encode(),
            chain_pem=tuple(pem.encode() for pem in payload.chain_pem),
            private_key_pem=self._key_for(payload, store),
        )
        expected = fingerprint_of_pem(request.certificate_pem)
        added = None
        try:
            added = store.add(request)
            reload_if_supported(store)
        except Exception as exc:
            # A refused add changed nothing (stores replace atomically); a refused reload needs undoing.
            undone = self._rollback(store, payload.alias, replaced=added.replaced) if added else "unchanged"
            raise ConnectorError(
                f"deploying to store '{name}' failed: {_message(exc)} ({undone})", retryable=False
            ) from exc
        progress(f"deployed to store '{name}' as '{payload.alias}'")
        try:
            problem = self._check(store, payload, expected)
        except Exception as exc:
            problem = f"verification failed: {_message(exc)}"
        if problem is not None:
            undone = self._rollback(store, payload.alias, replaced=added.replaced)
            raise ConnectorError(f"{problem} ({undone})", retryable=False)
        progress("verified")
        return StoreDeployResult(fingerprint=expected, replaced=added.replaced).model_dump()

    def _check(self, store: CertificateStore, payload: StoreDeployPayload, expected: str) -> str | None:
        if Capability.INVENTORY in store.capabilities and not getattr(store, "confirms_writes", False):
            entry = read_entry(store, payload.alias)
            if entry is None:
                return f"the store holds nothing under '{payload.alias}'"
            held = fingerprint_of_pem(entry.certificate_pem)
            if held != expected:
                return f"the store holds {held[:16]}… under '{payload.alias}', expected {expected[:16]}…"
        if payload.verify is not None:
            served = wait_for_fingerprint(payload.verify, expected)
            if served != expected:
                where = f"{payload.verify.host}:{payload.verify.port}"
                return f"{where} serves {served[:80]}, expected {expected[:16]}…"
        return None

    def _rollback(self, store: CertificateStore, alias: str, *, replaced: bool) -> str:
        """Puts back what the store held before; returns what was done, for the message."""
        try:
            restore: Callable[[str], bool] | None = getattr(store, "restore_previous", None)
            if restore is not None and replaced:
                restore(alias)
                done = "restored the previous content"
            elif not replaced and Capability.REMOVE in store.capabilities:
                store.remove(RemoveRequest(alias=alias))
                done = "removed the new entry"
            else:
                done = "nothing to restore"
        except Exception as exc:  # the rollback failing must not hide why the deployment failed
            log.warning("rollback of '%s' failed: %s", alias, exc)
            return f"rollback failed: {_message(exc)[:300]}"
        try:
            reload_if_supported(store)
        except Exception as exc:
            # The files are back; a service whose configuration is broken keeps serving what it loaded.
            return f"{done}; the reload after it failed too: {_message(exc)[:300]}"
        return done

    # --- remove and read back ----------------------------------------------------------------------

    def remove(self, payload: StoreRemovePayload, progress: Progress) -> dict[str, Any]:
        store = self.build(payload.store)
        removed = True
        try:
            store.remove(RemoveRequest(alias=payload.alias))
        except NotFoundError:
            removed = False  # already gone (a retry, or removed by hand): the goal is reached
        reload_if_supported(store)
        progress(f"removed '{payload.alias}' from store '{payload.store.name}'")
        return StoreRemoveResult(removed=removed).model_dump()

    def inventory(self, payload: StoreInventoryPayload, progress: Progress) -> dict[str, Any]:
        store = self.build(payload.store)
        if Capability.INVENTORY not in store.capabilities:
            raise InvalidInputError(f"store type '{payload.store.type}' cannot list what it holds")
        entries: list[WireEntry] = []
        cursor: str | None = None
        truncated = False
        while len(entries) < payload.limit:
            page = store.inventory(InventoryRequest(cursor=cursor, limit=min(500, payload.limit)))
            entries += [_wire(entry) for entry in page.entries]
            if page.next_cursor is None or page.next_cursor == cursor:
                break
            cursor = page.next_cursor
        else:
            truncated = True
        entries = entries[: payload.limit]
        listed = {entry.alias: entry for entry in entries}
        held: dict[str, str | None] = {}
        problems: dict[str, str] = {}
        for alias in payload.aliases:
            try:
                wire = listed.get(alias) or _wire_or_none(read_entry(store, alias))
                held[alias] = fingerprint_of_pem(wire.certificate_pem.encode()) if wire else None
            except Exception as exc:
                problems[alias] = _message(exc)[:500]
        progress(f"read {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
        return StoreInventoryResult(
            entries=entries, held=held, problems=problems, truncated=truncated
        ).model_dump()


def _wire(entry: StoreEntry) -> WireEntry:
    return WireEntry(
        alias=entry.alias,
        certificate_pem=entry.certificate_pem.decode(),
        chain_pem=[pem.decode() for pem in entry.chain_pem],
    )


def _wire_or_none(entry: StoreEntry | None) -> WireEntry | None:
    return _wire(entry) if entry is not None else None


def _message(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc)


def own_key_reader(directories: Callable[[], tuple[Path, ...]]) -> Callable[[str], bytes | None]:
    """Reads a key this agent made, by the SHA-256 of its public key (installed or still waiting)."""

    def read(reference: str) -> bytes | None:
        if len(reference) != 64 or any(c not in "0123456789abcdef" for c in reference):
            raise InvalidInputError("a key reference is the 64 hex digits of a public key's SHA-256")
        for directory in directories():
            with contextlib.suppress(FileNotFoundError):
                return (directory / f"{reference}.pem").read_bytes()
        return None

    return read
