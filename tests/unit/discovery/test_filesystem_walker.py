"""The filesystem walker on real trees: formats, key pairing, permissions, passwords, loops, bad files."""

from __future__ import annotations

import multiprocessing
import os
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from sslclm.connectors.filesystem import (
    CertificateFinding,
    FindingKind,
    KeyFinding,
    ProblemFinding,
    WalkOptions,
    walk,
)
from sslclm.errors import InvalidInputError
from sslclm.pki import private_key_to_pem, public_key_sha256, to_jks, to_pkcs12
from support.tls_zoo import Issued, Pki

NOBODY = 65534


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki.create("Files")


def write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def findings(root: Path, **options: object) -> list[CertificateFinding | KeyFinding | ProblemFinding]:
    return list(walk(WalkOptions(paths=(str(root),), **options)))  # type: ignore[arg-type]


def by_kind(items: list[CertificateFinding | KeyFinding | ProblemFinding], kind: FindingKind) -> list[object]:
    return [item for item in items if item.kind == kind]


def problems(items: list[CertificateFinding | KeyFinding | ProblemFinding]) -> dict[str, tuple[str, str]]:
    return {
        os.path.basename(item.path): (item.kind.value, item.message)
        for item in items
        if isinstance(item, ProblemFinding)
    }


def test_formats_and_key_pairing_across_files(pki: Pki, tmp_path: Path) -> None:
    leaf, other = pki.leaf("www.files.test"), pki.leaf("api.files.test")
    site = tmp_path / "site"
    write(site / "site.crt", leaf.pem + pki.intermediate.pem)
    write(site / "site.key", leaf.key_pem, 0o600)
    write(site / "api.der", other.der)
    write(
        site / "chain.p7b", pkcs7.serialize_certificates([pki.intermediate.cert, pki.root.cert], Encoding.DER)
    )
    write(site / "README.txt", b"not a certificate, and not included")
    items = findings(tmp_path)

    certs = [
        (os.path.basename(c.file.path), c.index, c.format, c.key_path)
        for c in by_kind(items, FindingKind.CERTIFICATE)
    ]  # type: ignore[attr-defined]
    assert certs == [
        ("api.der", 0, "DER", None),
        ("chain.p7b", 0, "PKCS7", None),
        ("chain.p7b", 1, "PKCS7", None),
        ("site.crt", 0, "PEM", str(site / "site.key")),
        ("site.crt", 1, "PEM", None),
    ]
    (key,) = by_kind(items, FindingKind.PRIVATE_KEY)
    assert isinstance(key, KeyFinding)
    assert (key.file.path, key.certificates, key.encrypted) == (
        str(site / "site.key"),
        ((str(site / "site.crt"), 0),),
        False,
    )
    assert key.public_key_sha256 == public_key_sha256(leaf.key)  # type: ignore[arg-type]
    meta = next(
        c
        for c in items
        if isinstance(c, CertificateFinding) and c.index == 0 and c.file.path.endswith("site.crt")
    ).file
    assert (meta.owner, meta.uid, meta.mode_text, meta.size) == (
        "root" if os.geteuid() == 0 else meta.owner,
        os.geteuid(),
        "0644",
        len(leaf.pem + pki.intermediate.pem),
    )
    assert by_kind(items, FindingKind.EXPOSED_KEY) == []


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        (0o600, None),
        (0o640, "private key readable by group (mode 0640), not encrypted"),
        (0o604, "private key readable by others (mode 0604), not encrypted"),
        (0o644, "private key readable by group and others (mode 0644), not encrypted"),
    ],
)
def test_a_private_key_readable_by_others_is_a_finding(
    pki: Pki, tmp_path: Path, mode: int, message: str | None
) -> None:
    leaf = pki.leaf("app.files.test")
    write(tmp_path / "app.pem", leaf.pem + leaf.key_pem, mode)
    items = findings(tmp_path)
    (cert,) = by_kind(items, FindingKind.CERTIFICATE)
    assert cert.key_path == str(tmp_path / "app.pem")  # type: ignore[attr-defined]
    exposed = [p.message for p in by_kind(items, FindingKind.EXPOSED_KEY)]  # type: ignore[attr-defined]
    assert exposed == ([message] if message else [])


def test_keystores_are_opened_with_the_configured_passwords(pki: Pki, tmp_path: Path) -> None:
    leaf, other = pki.leaf("jks.files.test"), pki.leaf("pfx.files.test")
    jks = to_jks(password="changeit", key_entries={"app": (leaf.key, [leaf.der, pki.intermediate.der])})  # type: ignore[dict-item]
    write(tmp_path / "app.jks", jks, 0o600)
    write(tmp_path / "app.p12", to_pkcs12(other.key, other.der, password="pfx-secret"), 0o600)  # type: ignore[arg-type]
    write(tmp_path / "locked.p12", to_pkcs12(other.key, other.der, password="not-in-the-list"), 0o600)  # type: ignore[arg-type]
    encrypted = tmp_path / "enc" / "site.key"
    write(encrypted, private_key_to_pem(leaf.key, password="changeit"), 0o644)  # type: ignore[arg-type]
    write(tmp_path / "enc" / "site.crt", leaf.pem)

    items = findings(tmp_path, passwords=("wrong", "changeit", "pfx-secret"))
    certs = {
        (os.path.basename(c.file.path), c.index): (c.format, c.key_path)
        for c in by_kind(items, FindingKind.CERTIFICATE)
    }  # type: ignore[attr-defined]
    assert certs == {
        ("app.jks", 0): ("JKS", str(tmp_path / "app.jks")),
        ("app.jks", 1): ("JKS", None),
        ("app.p12", 0): ("PKCS12", str(tmp_path / "app.p12")),
        ("site.crt", 0): ("PEM", str(encrypted)),
    }
    keys = {os.path.basename(k.file.path): k.encrypted for k in by_kind(items, FindingKind.PRIVATE_KEY)}  # type: ignore[attr-defined]
    assert keys == {"app.jks": True, "app.p12": True, "site.key": True}
    assert problems(items) == {
        "locked.p12": ("locked", "password protected, and none of the 3 configured passwords opens it"),
        "site.key": ("exposed-key", "private key readable by group and others (mode 0644), encrypted"),
    }
    # Without passwords every protected file is locked, and nothing is guessed.
    locked = problems(findings(tmp_path))
    assert {name for name, (kind, _) in locked.items() if kind == "locked"} == {
        "app.jks",
        "app.p12",
        "locked.p12",
        "site.key",
    }


def test_symlink_loops_and_self_links_end(pki: Pki, tmp_path: Path) -> None:
    leaf = pki.leaf("loop.files.test")
    write(tmp_path / "a" / "cert.pem", leaf.pem)
    (tmp_path / "a" / "back").symlink_to(tmp_path)  # a -> back -> root -> a ...
    (tmp_path / "a" / "self.pem").symlink_to(tmp_path / "a" / "self.pem")
    (tmp_path / "twin").symlink_to(tmp_path / "a")  # the same directory through a second link: walked once
    items = findings(tmp_path)
    certs = [c.file.path for c in by_kind(items, FindingKind.CERTIFICATE)]  # type: ignore[attr-defined]
    assert certs == [str(tmp_path / "a" / "cert.pem")]
    loops = sorted(p.path for p in by_kind(items, FindingKind.SYMLINK_LOOP))  # type: ignore[attr-defined]
    assert loops == [str(tmp_path / "a" / "back"), str(tmp_path / "a" / "self.pem")]
    # Not following links sees the real directory only.
    assert [
        c.file.path for c in by_kind(findings(tmp_path, follow_symlinks=False), FindingKind.CERTIFICATE)
    ] == certs  # type: ignore[attr-defined]


def test_include_and_exclude_globs_and_bad_files(pki: Pki, tmp_path: Path) -> None:
    leaf = pki.leaf("globs.files.test")
    write(tmp_path / "keep" / "a.pem", leaf.pem)
    write(tmp_path / "keep" / "a.bak", leaf.pem)
    write(tmp_path / "skip" / "b.pem", leaf.pem)
    write(tmp_path / "keep" / "garbage.pem", b"this is not PEM at all")
    write(tmp_path / "keep" / "big.pem", leaf.pem + b"\n" * 4096)
    items = findings(tmp_path, exclude=("skip",), max_file_size=4096)
    assert [c.file.path for c in by_kind(items, FindingKind.CERTIFICATE)] == [
        str(tmp_path / "keep" / "a.pem")
    ]  # type: ignore[attr-defined]
    found = problems(items)
    assert found["big.pem"] == ("unparsable", "larger than 4096 bytes")
    assert found["garbage.pem"][0] == "unparsable"
    included = findings(tmp_path, include=("*.bak",))
    assert [c.file.path for c in by_kind(included, FindingKind.CERTIFICATE)] == [
        str(tmp_path / "keep" / "a.bak")
    ]  # type: ignore[attr-defined]
    with pytest.raises(InvalidInputError):
        WalkOptions(paths=())


def _walk_as_nobody(root: str, send: multiprocessing.connection.Connection) -> None:
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    send.send(list(walk(WalkOptions(paths=(root,)))))


def _as_unprivileged(root: Path) -> list[CertificateFinding | KeyFinding | ProblemFinding]:
    """Walks as an unprivileged user (root reads every file whatever its mode)."""
    if os.geteuid() != 0:
        return findings(root)
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_walk_as_nobody, args=(str(root), send))
    child.start()
    result: list[CertificateFinding | KeyFinding | ProblemFinding] = receive.recv()
    child.join(30)
    return result


def test_unreadable_files_and_directories_are_reported_and_skipped(pki: Pki, tmp_path: Path) -> None:
    leaf = pki.leaf("perm.files.test")
    root = tmp_path / "tree"
    write(root / "open.pem", leaf.pem, 0o644)
    write(root / "secret.pem", leaf.pem, 0o600)
    write(root / "closed" / "inner.pem", leaf.pem, 0o644)
    (root / "closed").chmod(0o700)
    for directory in (tmp_path, root):
        directory.chmod(0o755)
    parents: list[tuple[Path, int]] = []
    if os.geteuid() == 0:
        # pytest's base temp directory is private to its owner: let the unprivileged walker in.
        for parent in tmp_path.parents:
            if parent == Path("/tmp"):
                break
            parents.append((parent, parent.stat().st_mode & 0o777))
            parent.chmod(parents[-1][1] | 0o711)
    try:
        items = _as_unprivileged(root)
    finally:
        for parent, mode in parents:
            parent.chmod(mode)
    assert [os.path.basename(c.file.path) for c in by_kind(items, FindingKind.CERTIFICATE)] == ["open.pem"]  # type: ignore[attr-defined]
    found = problems(items)
    assert found["secret.pem"] == ("unreadable", "cannot read: Permission denied")
    assert found["closed"] == ("unreadable", "cannot list: Permission denied")


def test_a_huge_tree_is_walked_lazily_in_bounded_memory(pki: Pki, tmp_path: Path) -> None:
    pem = pki.leaf("many.files.test").pem
    for top in range(40):
        for sub in range(50):
            write(tmp_path / f"d{top:02d}" / f"s{sub:02d}" / "c.pem", pem)
    deep = tmp_path / "deep"
    path = deep
    for level in range(300):
        path = path / f"l{level}"
    write(path / "bottom.pem", pem)

    stream = walk(WalkOptions(paths=(str(tmp_path),), max_depth=400))
    first = next(stream)
    assert isinstance(first, CertificateFinding)
    tracemalloc.start()
    count = 1 + sum(1 for item in stream if isinstance(item, CertificateFinding))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert count == 40 * 50 + 1
    assert peak < 1024 * 1024, f"peak {peak / 1024:.0f} KiB"


def test_max_depth_stops_descending(pki: Pki, tmp_path: Path) -> None:
    write(tmp_path / "a" / "b" / "c.pem", pki.leaf("depth.files.test").pem)
    assert by_kind(findings(tmp_path, max_depth=1), FindingKind.CERTIFICATE) == []
    assert len(by_kind(findings(tmp_path, max_depth=2), FindingKind.CERTIFICATE)) == 1


def test_a_file_given_directly_is_walked(pki: Pki, tmp_path: Path) -> None:
    leaf: Issued = pki.leaf("direct.files.test")
    target = write(tmp_path / "x.crt", leaf.der)
    items = list(walk(WalkOptions(paths=(str(target),))))
    assert [(type(i).__name__, i.kind.value) for i in items] == [("CertificateFinding", "certificate")]
    missing: Callable[[], list[object]] = lambda: list(walk(WalkOptions(paths=(str(tmp_path / "nope"),))))  # noqa: E731
    (problem,) = missing()
    assert isinstance(problem, ProblemFinding) and problem.kind == FindingKind.UNREADABLE
