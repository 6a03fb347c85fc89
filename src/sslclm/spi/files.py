"""Atomic replacement of a set of files, for store connectors that write certificates to disk.

Each file is written to a temporary file in its own directory with its final mode already set (so a
key is never readable by others, not even for a moment), fsynced, then renamed over the target. The
content a target held before is kept next to it as ``<name>.previous`` so the whole set can be put
back (:func:`restore_previous`). A failure before the renames leaves every target untouched; a
failure during them puts back the targets already renamed.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import re
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sslclm.errors import ConflictError, ConnectorError, InvalidInputError, NotFoundError
from sslclm.spi.config_fields import parse_mode as parse_mode  # re-exported: it used to live here
from sslclm.spi.store import (
    AddRequest,
    AddResult,
    InventoryRequest,
    InventoryResult,
    RemoveRequest,
    RemoveResult,
    StoreEntry,
)
from sslclm.spi.types import CheckResult

PREVIOUS_SUFFIX = ".previous"


@dataclass(frozen=True, slots=True)
class FileSpec:
    """One file of a set: where, what, and who may read it."""

    path: Path
    content: bytes = field(repr=False)
    mode: int = 0o644
    owner: str | None = None
    group: str | None = None


def resolve_ids(owner: str | None, group: str | None) -> tuple[int, int]:
    """Numeric uid and gid for names (or numbers); -1 leaves that id unchanged."""
    uid = gid = -1
    try:
        if owner:
            uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
        if group:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise InvalidInputError(f"unknown owner or group '{owner}:{group}'", field="owner") from None
    return uid, gid


def _fail(action: str, path: Path, exc: OSError) -> ConnectorError:
    # Permission and space problems do not go away by retrying; a busy file system might.
    retryable = not isinstance(
        exc, PermissionError | FileNotFoundError | NotADirectoryError | IsADirectoryError
    )
    return ConnectorError(f"cannot {action} {path}: {exc.strerror or exc}", retryable=retryable)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(spec: FileSpec, content: bytes, mode: int, uid: int, gid: int) -> Path:
    directory = spec.path.parent
    try:
        fd, name = tempfile.mkstemp(prefix=f".{spec.path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise _fail("write in", directory, exc) from None
    temp = Path(name)
    try:
        os.fchmod(fd, mode)  # before the content: mkstemp's 0600 is tighter, never looser
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        view = memoryview(content)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except OSError as exc:
        os.close(fd)
        temp.unlink(missing_ok=True)
        raise _fail("write", spec.path, exc) from None
    os.close(fd)
    return temp


# Where a file system has no hard links (some network and FUSE mounts), the previous content is copied.
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


def _keep_previous(path: Path) -> Path:
    """A temporary second name for what ``path`` holds now, renamed to ``<name>.previous`` later.

    A hard link: the rename that replaces ``path`` leaves its old inode, content, mode and owner
    untouched to the link, so nothing is copied or fsynced again (the directory's fsync makes the
    link durable). The file system's lack of hard links falls back to a copy.
    """
    link = path.with_name(f".{path.name}.{secrets.token_hex(6)}.previous.tmp")
    try:
        os.link(path, link)
        return link
    except OSError as exc:
        if exc.errno not in _NO_HARD_LINKS:
            raise _fail("keep the previous content of", path, exc) from None
    try:
        current = path.stat()
        held = path.read_bytes()
    except OSError as exc:
        raise _fail("read", path, exc) from None
    backup = FileSpec(path.with_name(path.name + PREVIOUS_SUFFIX), b"")
    return _write_temp(backup, held, current.st_mode & 0o777, current.st_uid, current.st_gid)


def write_file_set(files: Sequence[FileSpec], *, keep_previous: bool = True) -> bool:
    """Replaces every file of ``files`` atomically; True if any of them existed before.

    Raises ConnectorError (with the path and the system's reason) when a file cannot be written; the
    targets then hold what they held before.
    """
    staged: list[tuple[FileSpec, Path, Path | None]] = []
    existed = False
    try:
        for spec in files:
            uid, gid = resolve_ids(spec.owner, spec.group)
            previous: Path | None = None
            if spec.path.exists():
                existed = True
                if keep_previous:
                    previous = _keep_previous(spec.path)
            staged.append((spec, _write_temp(spec, spec.content, spec.mode, uid, gid), previous))
    except BaseException:
        for _, temp, previous in staged:
            temp.unlink(missing_ok=True)
            if previous is not None:
                previous.unlink(missing_ok=True)
        raise
    _commit(staged)
    return existed


def _commit(staged: list[tuple[FileSpec, Path, Path | None]]) -> None:
    done: list[FileSpec] = []
    try:
        for spec, temp, previous in staged:
            backup = spec.path.with_name(spec.path.name + PREVIOUS_SUFFIX)
            if previous is not None:
                os.replace(previous, backup)
            elif backup.exists():
                backup.unlink()  # the target is new: a stale backup would bring back an unrelated file
            os.replace(temp, spec.path)
            done.append(spec)
        for directory in {spec.path.parent for spec, _, _ in staged}:
            _fsync_dir(directory)
    except OSError as exc:
        for _, temp, previous in staged:
            temp.unlink(missing_ok=True)
            if previous is not None:
                previous.unlink(missing_ok=True)
        with contextlib.suppress(ConnectorError):
            restore_previous([spec.path for spec in done])
        raise _fail(
            "replace", staged[len(done)][0].path if len(done) < len(staged) else done[-1].path, exc
        ) from None


def restore_previous(paths: Sequence[Path]) -> bool:
    """Puts back what each path held before the last :func:`write_file_set`; False if nothing to do.

    A path that had no previous content (the last write created it) is removed. Raises
    ConnectorError when a file cannot be put back.
    """
    changed = False
    try:
        for path in paths:
            backup = path.with_name(path.name + PREVIOUS_SUFFIX)
            if backup.exists():
                # Copied, not moved: restoring twice (a retried rollback) gives the same files.
                kept = backup.stat()
                temp = _write_temp(
                    FileSpec(path, b""), backup.read_bytes(), kept.st_mode & 0o777, kept.st_uid, kept.st_gid
                )
                os.replace(temp, path)
                changed = True
            elif path.exists():
                path.unlink()
                changed = True
        for directory in {path.parent for path in paths if path.parent.exists()}:
            _fsync_dir(directory)
    except OSError as exc:
        raise _fail("restore", Path(exc.filename or "?"), exc) from None
    return changed


def remove_file_set(paths: Sequence[Path]) -> bool:
    """Removes the files (and their backups); True if any existed."""
    found = False
    try:
        for path in paths:
            if path.exists():
                path.unlink()
                found = True
            path.with_name(path.name + PREVIOUS_SUFFIX).unlink(missing_ok=True)
    except OSError as exc:
        raise _fail("remove", Path(exc.filename or "?"), exc) from None
    return found


# --- a directory of PEM files, one set per alias ---------------------------------------------------

ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?-----END CERTIFICATE-----\r?\n?", re.DOTALL)
_PEM_KEY = re.compile(rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----")


def check_alias(alias: str) -> str:
    """An alias becomes part of file names, so it may not name a path (no ``/``, no ``..``)."""
    if not ALIAS.match(alias) or ".." in alias:
        raise InvalidInputError(
            "the alias must be 1-128 letters, digits or . _ - and start with a letter or digit", field="alias"
        )
    return alias


def split_certificates(pem: bytes) -> list[bytes]:
    """The PEM certificate blocks of ``pem``, each normalised to end with one newline."""
    return [block.rstrip(b"\r\n") + b"\n" for block in _PEM_CERT.findall(pem)]


@dataclass(frozen=True, slots=True, kw_only=True)
class PemLayout:
    """Where each alias's files go, from templates with ``{alias}``; an empty template skips that file.

    ``combined_file`` is certificate, chain and key in one file (HAProxy's ``crt``).
    """

    directory: Path
    certificate_file: str = "{alias}.crt"
    key_file: str = "{alias}.key"
    chain_file: str = "{alias}.chain.pem"
    fullchain_file: str = "{alias}.fullchain.pem"
    combined_file: str = ""
    owner: str | None = None
    group: str | None = None
    mode: int = 0o644
    key_mode: int = 0o600

    def _primary(self) -> str:
        return self.certificate_file or self.fullchain_file or self.combined_file

    def paths(self, alias: str) -> dict[str, Path]:
        check_alias(alias)
        templates = {
            "certificate": self.certificate_file,
            "key": self.key_file,
            "chain": self.chain_file,
            "fullchain": self.fullchain_file,
            "combined": self.combined_file,
        }
        return {kind: self.directory / t.format(alias=alias) for kind, t in templates.items() if t}

    def needs_key(self) -> bool:
        return bool(self.key_file or self.combined_file)

    def files_for(self, request: AddRequest) -> list[FileSpec]:
        leaf = split_certificates(request.certificate_pem)
        if len(leaf) != 1:
            raise InvalidInputError(
                "certificate_pem must hold exactly one PEM certificate", field="certificate_pem"
            )
        chain = [block for pem in request.chain_pem for block in split_certificates(pem)]
        key = request.private_key_pem
        if self.needs_key() and not key:
            raise InvalidInputError(
                "this store writes the private key; none was given", field="private_key_pem"
            )
        if key is not None and not _PEM_KEY.search(key):
            raise InvalidInputError("private_key_pem is not a PEM private key", field="private_key_pem")
        contents = {
            "certificate": leaf[0],
            "chain": b"".join(chain),
            "fullchain": leaf[0] + b"".join(chain),
            "key": key or b"",
            "combined": leaf[0] + b"".join(chain) + (key or b""),
        }
        specs = []
        for kind, path in self.paths(request.alias).items():
            secret = kind in ("key", "combined")
            specs.append(
                FileSpec(
                    path,
                    contents[kind],
                    mode=self.key_mode if secret else self.mode,
                    owner=self.owner,
                    group=self.group,
                )
            )
        return specs

    def exists(self, alias: str) -> bool:
        return self.directory.joinpath(self._primary().format(alias=alias)).exists()

    def add(self, request: AddRequest) -> AddResult:
        files = self.files_for(request)
        if not request.overwrite and self.exists(request.alias):
            raise ConflictError(f"alias '{request.alias}' already exists", field="alias")
        if not self.directory.is_dir():
            raise ConnectorError(f"directory {self.directory} does not exist", retryable=False)
        replaced = write_file_set(files)
        return AddResult(alias=request.alias, replaced=replaced)

    def read(self, alias: str) -> StoreEntry | None:
        paths = self.paths(alias)
        primary = self.directory / self._primary().format(alias=alias)
        try:
            blocks = split_certificates(primary.read_bytes())
            modified = datetime.fromtimestamp(primary.stat().st_mtime, UTC)
            chain = blocks[1:]
            if "chain" in paths and paths["chain"].exists():
                chain = split_certificates(paths["chain"].read_bytes())
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _fail("read", primary, exc) from None
        if not blocks:
            return None
        has_key = ("key" in paths and paths["key"].exists()) or "combined" in paths
        return StoreEntry(
            alias=alias,
            certificate_pem=blocks[0],
            chain_pem=tuple(chain),
            has_private_key=has_key,
            modified_at=modified,
            details={"path": str(primary)},
        )

    def aliases(self) -> list[str]:
        prefix, _, suffix = self._primary().partition("{alias}")
        try:
            names = sorted(entry.name for entry in os.scandir(self.directory) if entry.is_file())
        except OSError as exc:
            raise _fail("list", self.directory, exc) from None
        found = []
        for name in names:
            if name.startswith(prefix) and name.endswith(suffix) and len(name) > len(prefix) + len(suffix):
                alias = name[len(prefix) : len(name) - len(suffix)]
                if ALIAS.match(alias):
                    found.append(alias)
        return found

    def inventory(self, request: InventoryRequest) -> InventoryResult:
        aliases = [a for a in self.aliases() if request.cursor is None or a > request.cursor]
        page = aliases[: max(1, request.limit)]
        entries = [entry for entry in (self.read(alias) for alias in page) if entry is not None]
        more = len(aliases) > len(page)
        return InventoryResult(entries=tuple(entries), next_cursor=page[-1] if more and page else None)

    def remove(self, request: RemoveRequest) -> RemoveResult:
        if not self.exists(request.alias):
            raise NotFoundError(f"alias '{request.alias}' is not in the store", field="alias")
        remove_file_set(list(self.paths(request.alias).values()))
        return RemoveResult(alias=request.alias)

    def restore(self, alias: str) -> bool:
        return restore_previous(list(self.paths(alias).values()))

    def check(self) -> CheckResult:
        if not self.directory.is_dir():
            return CheckResult(ok=False, message=f"directory {self.directory} does not exist")
        if not os.access(self.directory, os.W_OK | os.X_OK):
            return CheckResult(ok=False, message=f"directory {self.directory} is not writable")
        try:
            resolve_ids(self.owner, self.group)
        except InvalidInputError as exc:
            return CheckResult(ok=False, message=exc.message)
        return CheckResult(ok=True, message=f"directory {self.directory} is writable")
