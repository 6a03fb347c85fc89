"""Importing files and directories through the platform's import path, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import func, select

from sslclm.audit.service import AuditContext
from sslclm.core.platform import Platform
from sslclm.inventory.importer import PARSER_NICENESS, import_paths, parser_pool
from sslclm.inventory.models import Certificate, Sighting
from tests.support.certs import make_ca, make_leaf

CTX = AuditContext(actor="test")


def count(platform: Platform, model: type) -> int:
    with platform.sessions() as session:
        return session.execute(select(func.count()).select_from(model)).scalar_one()


@pytest.mark.parametrize("workers", [1, 2])
def test_directory_import_with_bad_and_unreadable_files(
    platform: Platform, tmp_path: Path, workers: int
) -> None:
    root = make_ca("Dir Root")
    tree = tmp_path / "certs"
    (tree / "nested" / "deeper").mkdir(parents=True)
    for i in range(30):
        leaf = make_leaf(root, f"host{i}.example.com")
        target = tree / ("nested/deeper" if i % 3 == 0 else "nested" if i % 3 == 1 else "")
        (target / f"host{i}.pem").write_bytes(leaf.pem)
    (tree / "root.der").write_bytes(root.der)
    (tree / "garbage.pem").write_bytes(os.urandom(2048))
    (tree / "empty.crt").write_bytes(b"")
    (tree / "cut.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIBIjAN")
    locked = tree / "locked.pem"
    locked.write_bytes(make_leaf(root, "locked.example.com").pem)
    locked.chmod(0)
    progress: list[int] = []
    try:
        summary = import_paths(
            platform, [tree, tmp_path / "missing"], CTX, workers=workers, progress=progress.append
        )
    finally:
        locked.chmod(0o600)
    readable_locked = os.geteuid() == 0  # root reads mode-0 files anyway
    expected = 31 + (1 if readable_locked else 0)
    assert summary.imported == expected
    assert summary.updated == 0
    reasons = {Path(r.path).name: r.reason for r in summary.rejected}
    assert set(reasons) >= {"garbage.pem", "empty.crt", "cut.pem", "missing"}
    assert reasons["missing"] == "no such file or directory"
    if not readable_locked:
        assert reasons["locked.pem"] == "unreadable: permission denied"
    assert all("\n" not in reason for reason in reasons.values())
    assert sum(progress) == summary.files
    assert count(platform, Certificate) == expected

    again = import_paths(platform, [tree], CTX, workers=workers)
    assert again.imported == 0 and again.updated == expected
    # One sighting per (certificate, file): re-import refreshes last_seen, never duplicates.
    assert count(platform, Sighting) == count(platform, Certificate)


def test_same_certificate_in_two_files_is_one_row_with_two_sightings(
    platform: Platform, tmp_path: Path
) -> None:
    leaf = make_leaf(make_ca(), "twice.example.com")
    (tmp_path / "a.pem").write_bytes(leaf.pem)
    (tmp_path / "b.crt").write_bytes(leaf.der)
    summary = import_paths(platform, [tmp_path], CTX, workers=1)
    assert summary.imported == 1
    assert count(platform, Certificate) == 1
    assert count(platform, Sighting) == 2


def test_key_in_separate_file_is_matched(platform: Platform, tmp_path: Path) -> None:
    leaf = make_leaf(make_ca(), "keyed.example.com")
    (tmp_path / "keyed.pem").write_bytes(leaf.pem + leaf.key_pem)
    summary = import_paths(platform, [tmp_path], CTX, workers=1)
    assert summary.keys_stored == 1
    with platform.sessions() as session:
        assert session.execute(select(Certificate.has_private_key)).scalar_one() is True


def test_parsers_run_below_the_writer_priority() -> None:
    # The writer is the serial part of an import: when the cores are contended, parsers yield.
    expected = min(19, os.nice(0) + PARSER_NICENESS)
    with parser_pool(1) as pool:
        assert pool.submit(os.nice, 0).result() == expected
