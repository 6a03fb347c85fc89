"""Walking directories for certificates and private keys: pure, no database, safe on hostile trees.

:func:`walk` is a generator of frozen findings: every certificate with the file it is in (path,
owner, mode) and the file holding its private key; every private key; and the problems on the
way (a private key others can read, a keystore no configured password opens, a file that cannot be
read or parsed, a symlink loop).

- Files are recognised by the include globs (PEM/CRT/CER/DER, P7B/P7C, PFX/P12, JKS, KEY by
  default) and parsed by :func:`sslclm.pki.load_bundle`, which tells the format from the content.
- Keys are paired with certificates inside a directory, so ``site.crt`` and ``site.key`` side by
  side are matched, as are a key and certificate in one PKCS#12 or PEM file.
- Memory is bounded whatever the tree: directories are walked depth first with an explicit stack,
  one directory's parsed contents are held at a time, and loops are caught by remembering only the
  directories on the current path (plus those reached through a symlink), never every directory seen.
"""

from __future__ import annotations

import fnmatch
import grp
import os
import pwd
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache

from sslclm.errors import CertificateFormatError, InvalidInputError, WrongPasswordError
from sslclm.pki import (
    DEFAULT_MAX_SIZE,
    PrivateKey,
    load_bundle,
    match_private_keys,
    public_key_sha256,
)

__all__ = [
    "DEFAULT_INCLUDE",
    "CertificateFinding",
    "FileMeta",
    "FindingKind",
    "KeyFinding",
    "ProblemFinding",
    "WalkOptions",
    "walk",
]

DEFAULT_INCLUDE = (
    "*.pem",
    "*.crt",
    "*.cer",
    "*.cert",
    "*.der",
    "*.key",
    "*.p7b",
    "*.p7c",
    "*.pfx",
    "*.p12",
    "*.jks",
    "*.keystore",
    "*.truststore",
)


class FindingKind(StrEnum):
    CERTIFICATE = "certificate"
    PRIVATE_KEY = "private-key"
    EXPOSED_KEY = "exposed-key"  # a file holding a private key is readable by its group or by others
    LOCKED = "locked"  # no configured password opens the keystore or key
    UNREADABLE = "unreadable"
    UNPARSABLE = "unparsable"
    SYMLINK_LOOP = "symlink-loop"


@dataclass(frozen=True, slots=True)
class WalkOptions:
    """What to walk and how.

    ``include`` globs match file names; ``exclude`` globs match the file or directory name or its
    full path (an excluded directory is not entered). ``passwords`` are tried in order on keystores
    and encrypted keys after no password at all.
    """

    paths: tuple[str, ...]
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = ()
    passwords: tuple[str, ...] = field(default=(), repr=False)
    follow_symlinks: bool = True
    max_file_size: int = DEFAULT_MAX_SIZE
    max_depth: int = 64

    def __post_init__(self) -> None:
        if not self.paths:
            raise InvalidInputError("no paths to walk", field="paths")
        if self.max_file_size < 1:
            raise InvalidInputError("max_file_size must be positive", field="max_file_size")
        if self.max_depth < 0:
            raise InvalidInputError("max_depth must not be negative", field="max_depth")


@dataclass(frozen=True, slots=True)
class FileMeta:
    path: str
    uid: int
    owner: str | None
    gid: int
    group: str | None
    mode: int  # permission bits only, e.g. 0o600
    size: int
    modified_at: datetime

    @property
    def mode_text(self) -> str:
        return f"{self.mode:04o}"

    @property
    def readable_by(self) -> tuple[str, ...]:
        """Who besides the owner may read the file: ``group``, ``others``."""
        return tuple(
            who for who, bit in (("group", stat.S_IRGRP), ("others", stat.S_IROTH)) if self.mode & bit
        )


@dataclass(frozen=True, slots=True)
class CertificateFinding:
    """One certificate in one file; ``index`` is its position in the file (0 is first)."""

    file: FileMeta
    format: str
    der: bytes = field(repr=False)
    index: int
    key_path: str | None = None  # the file holding its private key, if one was found beside it
    kind: FindingKind = FindingKind.CERTIFICATE


@dataclass(frozen=True, slots=True)
class KeyFinding:
    """One private key; ``certificate_indexes`` pair it with certificates as ``(path, index)``."""

    file: FileMeta
    format: str
    public_key_sha256: str
    encrypted: bool  # it took a password to read
    certificates: tuple[tuple[str, int], ...] = ()
    kind: FindingKind = FindingKind.PRIVATE_KEY


@dataclass(frozen=True, slots=True)
class ProblemFinding:
    kind: FindingKind
    path: str
    message: str
    file: FileMeta | None = None


Finding = CertificateFinding | KeyFinding | ProblemFinding


@lru_cache(maxsize=1024)
def _owner(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None  # a uid with no passwd entry (containers, removed users)


@lru_cache(maxsize=1024)
def _group(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def _meta(path: str, st: os.stat_result) -> FileMeta:
    return FileMeta(
        path=path,
        uid=st.st_uid,
        owner=_owner(st.st_uid),
        gid=st.st_gid,
        group=_group(st.st_gid),
        mode=stat.S_IMODE(st.st_mode),
        size=st.st_size,
        modified_at=datetime.fromtimestamp(st.st_mtime, UTC),
    )


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


@dataclass(slots=True)
class _Loaded:
    meta: FileMeta
    format: str
    certificates: list[object]  # x509.Certificate, kept opaque here: pairing is pki's business
    ders: list[bytes]
    keys: list[PrivateKey]
    encrypted: bool


@dataclass(frozen=True, slots=True)
class _Enter:
    path: str
    depth: int
    via_link: bool


@dataclass(frozen=True, slots=True)
class _Leave:
    inode: tuple[int, int]


class _Walker:
    def __init__(self, options: WalkOptions) -> None:
        self.options = options
        # Directories on the current path (a loop returns to one of them) and directories reached
        # through a symlink from outside the roots (so two links to one directory walk it once):
        # both bounded, unlike "every directory seen", which grows with the tree. A link to a
        # directory inside a root is not followed: that directory is walked where it really is.
        self.ancestors: set[tuple[int, int]] = set()
        self.linked: set[tuple[int, int]] = set()
        self.real_roots = [os.path.realpath(path) for path in options.paths]

    def under_a_root(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.real_roots)

    def excluded(self, path: str, name: str) -> bool:
        return any(fnmatch.fnmatch(name, g) or fnmatch.fnmatch(path, g) for g in self.options.exclude)

    def included(self, name: str) -> bool:
        lower = name.lower()
        return any(fnmatch.fnmatch(lower, g.lower()) for g in self.options.include)

    def run(self) -> Iterator[Finding]:
        stack: list[_Enter | _Leave] = [
            _Enter(os.path.abspath(root), 0, False) for root in reversed(self.options.paths)
        ]
        while stack:
            item = stack.pop()
            if isinstance(item, _Leave):
                self.ancestors.discard(item.inode)
                continue
            path, depth, via_link = item.path, item.depth, item.via_link
            try:
                st = os.stat(path) if self.options.follow_symlinks else os.lstat(path)
            except OSError as exc:
                yield ProblemFinding(FindingKind.UNREADABLE, path, f"cannot stat: {_reason(exc)}")
                continue
            if stat.S_ISREG(st.st_mode):
                yield from self.directory_files([(path, st)])
                continue
            if not stat.S_ISDIR(st.st_mode):
                continue
            inode = (st.st_dev, st.st_ino)
            if inode in self.ancestors:
                yield ProblemFinding(
                    FindingKind.SYMLINK_LOOP, path, "symlink loop: leads back to a parent directory"
                )
                continue
            if via_link:
                if inode in self.linked or self.under_a_root(path):
                    continue  # walked through another link, or walked (to be walked) where it really is
                self.linked.add(inode)
            self.ancestors.add(inode)
            stack.append(_Leave(inode))
            files, subdirectories, problems = self.list_directory(path)
            yield from problems
            yield from self.directory_files(files)
            if depth < self.options.max_depth:
                for sub_path, is_link in reversed(subdirectories):
                    stack.append(_Enter(sub_path, depth + 1, is_link))

    def list_directory(
        self, path: str
    ) -> tuple[list[tuple[str, os.stat_result]], list[tuple[str, bool]], list[ProblemFinding]]:
        files: list[tuple[str, os.stat_result]] = []
        subdirectories: list[tuple[str, bool]] = []
        problems: list[ProblemFinding] = []
        follow = self.options.follow_symlinks
        try:
            with os.scandir(path) as entries:
                ordered = sorted(entries, key=lambda e: e.name)
        except OSError as exc:
            return [], [], [ProblemFinding(FindingKind.UNREADABLE, path, f"cannot list: {_reason(exc)}")]
        for entry in ordered:
            if self.excluded(entry.path, entry.name):
                continue
            try:
                is_link = entry.is_symlink()
                if is_link and not follow:
                    continue
                if entry.is_dir(follow_symlinks=follow):
                    subdirectories.append((entry.path, is_link))
                elif self.included(entry.name) and entry.is_file(follow_symlinks=follow):
                    files.append((entry.path, entry.stat(follow_symlinks=follow)))
            except OSError as exc:
                if exc.errno == 40:  # ELOOP: a symlink that points at itself (or a chain of them)
                    problems.append(ProblemFinding(FindingKind.SYMLINK_LOOP, entry.path, "symlink loop"))
                else:
                    problems.append(ProblemFinding(FindingKind.UNREADABLE, entry.path, _reason(exc)))
        return files, subdirectories, problems

    def load(self, path: str, st: os.stat_result) -> _Loaded | ProblemFinding:
        meta = _meta(path, st)
        if st.st_size > self.options.max_file_size:
            return ProblemFinding(
                FindingKind.UNPARSABLE, path, f"larger than {self.options.max_file_size} bytes", meta
            )
        try:
            with open(path, "rb") as handle:
                # Sized by the file, not the limit: read(n) allocates n bytes up front.
                data = handle.read(min(st.st_size, self.options.max_file_size) + 1)
        except OSError as exc:
            return ProblemFinding(FindingKind.UNREADABLE, path, f"cannot read: {_reason(exc)}", meta)
        encrypted = False
        bundle = None
        for password in (None, *self.options.passwords):
            try:
                bundle = load_bundle(data, password=password, max_size=self.options.max_file_size)
            except WrongPasswordError:
                continue
            except CertificateFormatError as exc:
                return ProblemFinding(FindingKind.UNPARSABLE, path, exc.message, meta)
            except (ValueError, TypeError) as exc:
                return ProblemFinding(FindingKind.UNPARSABLE, path, f"{type(exc).__name__}: {exc}", meta)
            encrypted = password is not None
            break
        if bundle is None:
            tried = len(self.options.passwords)
            return ProblemFinding(
                FindingKind.LOCKED,
                path,
                f"password protected, and none of the {tried} configured passwords opens it",
                meta,
            )
        return _Loaded(
            meta,
            bundle.format,
            list(bundle.certificates),
            list(bundle.ders),
            list(bundle.private_keys),
            encrypted,
        )

    def directory_files(self, files: Sequence[tuple[str, os.stat_result]]) -> Iterator[Finding]:
        loaded: list[_Loaded] = []
        for path, st in files:
            result = self.load(path, st)
            if isinstance(result, ProblemFinding):
                yield result
            else:
                loaded.append(result)
        # Pair every key of the directory with every certificate of the directory.
        certificates = [(item, index) for item in loaded for index in range(len(item.certificates))]
        keys = [(item, key) for item in loaded for key in item.keys]
        pairs = match_private_keys(
            [item.certificates[index] for item, index in certificates],  # type: ignore[misc]
            [key for _, key in keys],
        )
        key_home = {id(key): item for item, key in keys}
        paired: dict[int, list[tuple[str, int]]] = {}
        cert_key: dict[tuple[str, int], str] = {}
        for position, key in pairs.items():
            item, index = certificates[position]
            home = key_home[id(key)]
            paired.setdefault(id(key), []).append((item.meta.path, index))
            cert_key[(item.meta.path, index)] = home.meta.path
        for item in loaded:
            for index, der in enumerate(item.ders):
                yield CertificateFinding(
                    item.meta, item.format, der, index, key_path=cert_key.get((item.meta.path, index))
                )
            for key in item.keys:
                yield KeyFinding(
                    item.meta,
                    item.format,
                    public_key_sha256(key),
                    item.encrypted,
                    tuple(paired.get(id(key), ())),
                )
            if item.keys and item.meta.readable_by:
                who = " and ".join(item.meta.readable_by)
                yield ProblemFinding(
                    FindingKind.EXPOSED_KEY,
                    item.meta.path,
                    f"private key readable by {who} (mode {item.meta.mode_text})"
                    + (", encrypted" if item.encrypted else ", not encrypted"),
                    item.meta,
                )


def walk(options: WalkOptions) -> Iterator[Finding]:
    """Every finding under ``options.paths``, directory by directory, in name order."""
    return _Walker(options).run()
