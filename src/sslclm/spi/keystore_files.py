"""What keystore-file stores (PKCS#12, JKS) share: a lock per directory and their error messages.

A keystore is edited read-modify-write, so two deployments to the same file at once would lose one
of the updates; the lock serialises them (between processes too: it is an ``flock`` on the
directory). The write itself goes through :func:`sslclm.spi.files.write_file_set`, so the file is
replaced atomically and the previous one kept for rollback.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sslclm.errors import CertificateFormatError, ConnectorError, InvalidInputError, WrongPasswordError


@contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``directory`` while the block runs."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        raise ConnectorError(f"directory {directory} does not exist", retryable=False) from None
    except OSError as exc:
        raise ConnectorError(f"cannot open {directory}: {exc.strerror or exc}", retryable=False) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read_keystore_file(path: Path) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        retryable = not isinstance(exc, PermissionError | IsADirectoryError | NotADirectoryError)
        raise ConnectorError(f"cannot read {path}: {exc.strerror or exc}", retryable=retryable) from None


def keystore_error(path: Path, error: InvalidInputError) -> ConnectorError:
    """The store-level error for a keystore that cannot be opened: never retryable, file untouched."""
    if isinstance(error, WrongPasswordError):
        return ConnectorError(f"wrong keystore password for {path}", retryable=False, path=str(path))
    if isinstance(error, CertificateFormatError):
        return ConnectorError(
            f"cannot read keystore {path}: {error.message}", retryable=False, path=str(path)
        )
    return ConnectorError(f"keystore {path}: {error.message}", retryable=False, path=str(path))
