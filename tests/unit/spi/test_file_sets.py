"""Atomic file sets: the previous content is kept for rollback, by hard link or by copy."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from sslclm.spi import files
from sslclm.spi.files import PREVIOUS_SUFFIX, FileSpec, restore_previous, write_file_set


def test_the_previous_content_keeps_its_inode_mode_and_bytes(tmp_path: Path) -> None:
    key = tmp_path / "site.key"
    assert write_file_set([FileSpec(key, b"old key\n", mode=0o600)]) is False
    old_inode = key.stat().st_ino
    assert write_file_set([FileSpec(key, b"new key\n", mode=0o600)]) is True
    backup = key.with_name(key.name + PREVIOUS_SUFFIX)
    assert backup.read_bytes() == b"old key\n"
    assert backup.stat().st_ino == old_inode  # linked, not copied
    assert backup.stat().st_mode & 0o777 == 0o600
    assert key.read_bytes() == b"new key\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert restore_previous([key]) is True
    assert key.read_bytes() == b"old key\n"


def test_without_hard_links_the_previous_content_is_copied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: object, target: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    target = tmp_path / "cert.pem"
    write_file_set([FileSpec(target, b"first\n", mode=0o644)])
    monkeypatch.setattr(files.os, "link", no_links)
    write_file_set([FileSpec(target, b"second\n", mode=0o644)])
    backup = target.with_name(target.name + PREVIOUS_SUFFIX)
    assert backup.read_bytes() == b"first\n"
    assert os.stat(backup).st_mode & 0o777 == 0o644
    assert target.read_bytes() == b"second\n"
