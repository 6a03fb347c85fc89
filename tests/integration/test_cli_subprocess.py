"""The installed ``sslclm`` program, run as a real process with its data directory in a temp dir.

This is what an operator types: console-script entry point, environment settings, exit codes, the
streams the output lands on, and the one-line errors (no traceback ever reaches the terminal).
"""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from support.certs import NOW, make_ca, make_leaf

SSLCLM = Path(sys.executable).with_name("sslclm")
PASSWORD = "correct horse battery staple"


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


class Program:
    def __init__(self, home: Path, database_url: str | None = None) -> None:
        self.env = {key: value for key, value in os.environ.items() if not key.startswith("SSLCLM_")}
        self.env["SSLCLM_HOME"] = str(home)
        if database_url:
            self.env["SSLCLM_DATABASE_URL"] = database_url

    def __call__(self, *args: str, input: str | None = None) -> Run:
        done = subprocess.run(
            [str(SSLCLM), *args], env=self.env, input=input, capture_output=True, text=True, timeout=120
        )
        assert "Traceback" not in done.stderr, done.stderr
        return Run(done.returncode, done.stdout, done.stderr)

    def ok(self, *args: str, input: str | None = None) -> Run:
        run = self(*args, input=input)
        assert run.code == 0, (args, run.stdout, run.stderr)
        return run

    def fails(self, code: int, *args: str, fragment: str, input: str | None = None) -> None:
        run = self(*args, input=input)
        assert run.code == code, (args, run.stdout, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1, (args, run.stderr)
        assert lines[0].startswith("error: ") and fragment in lines[0], (args, lines)


@pytest.fixture
def sslclm(tmp_path: Path) -> Program:
    return Program(tmp_path / "home")


def test_admin_commands_end_to_end(sslclm: Program, tmp_path: Path) -> None:
    assert sslclm.ok("--version").stdout.strip() == "sslclm 0.1.0"
    assert "(head)" in sslclm.ok("db", "upgrade").stdout
    assert sslclm.ok("db", "current", "-o", "json").json()["up_to_date"] is True
    assert (tmp_path / "home" / "sslclm.db").is_file()

    sslclm.ok("user", "create", "root-admin", "--role", "admin", "--password-stdin", input=PASSWORD + "\n")
    assert (tmp_path / "home" / "master.key").stat().st_mode & 0o777 == 0o600
    sslclm.ok("user", "create", "ops", "--role", "operator", input=f"{PASSWORD}\n{PASSWORD}\n")
    users = sslclm.ok("user", "list", "--output", "json").json()
    assert [(u["username"], u["role"]) for u in users] == [("ops", "operator"), ("root-admin", "admin")]
    assert "root-admin" in sslclm.ok("user", "list").stdout
    sslclm.ok("user", "passwd", "ops", "--password-stdin", input="a brand new passphrase\n")

    token = sslclm.ok("token", "create", "--user", "ops", "--name", "deploy", "-o", "json").json()
    assert token["secret"].startswith("sslclm_") and token["role"] == "operator"
    human = sslclm.ok("token", "create", "--user", "ops", "--name", "ci", "--expires-days", "30")
    assert human.stdout.splitlines()[-1].startswith("sslclm_")
    sslclm.ok("token", "revoke", str(token["id"]))
    listed = {t["name"]: t["status"] for t in sslclm.ok("token", "list", "-o", "json").json()}
    assert listed == {"deploy": "revoked", "ci": "active"}
    assert token["secret"] not in sslclm.ok("token", "list").stdout

    sslclm.ok("user", "disable", "ops")
    verified = sslclm.ok("audit", "verify")
    # user.create x2, user.update (password), token.create x2, token.revoke, user.update (disable)
    assert verified.stdout.strip() == "audit log intact: 7 events"

    sslclm.fails(
        1, "user", "create", "eve", "--role", "root", "--password-stdin", fragment="unknown role 'root'"
    )
    sslclm.fails(2, "user", "create", "--role", "viewer", fragment="Missing argument")
    sslclm.fails(1, "token", "revoke", "4242", fragment="no API token with id 4242")
    sslclm.fails(2, "db", "downgrade", fragment="No such command")


def test_import_and_inventory_end_to_end(sslclm: Program, tmp_path: Path) -> None:
    root = make_ca("Subprocess Root")
    tree = tmp_path / "drop"
    (tree / "sub").mkdir(parents=True)
    (tree / "web.pem").write_bytes(make_leaf(root, "web.example.com", days=20).pem)
    (tree / "sub" / "api.der").write_bytes(make_leaf(root, "api.example.com", days=200).der)
    (tree / "sub" / "old.pem").write_bytes(
        make_leaf(root, "old.example.com", not_before=NOW - timedelta(days=90), days=30).pem
    )
    (tree / "root.crt").write_bytes(root.pem)
    (tree / "README").write_text("certificates for the web tier\n")
    (tree / "sub" / "broken.der").write_bytes(b"\x30\x82\x01\x00garbage")

    imported = sslclm("import", str(tree))
    assert imported.code == 1
    lines = imported.stdout.splitlines()
    assert lines[0] == "files: 6  imported: 4  updated: 0  keys stored: 0  rejected: 2"
    assert sorted(line.split(":")[0] for line in lines[1:]) == [
        f"rejected {tree / 'README'}",
        f"rejected {tree / 'sub' / 'broken.der'}",
    ]
    again = sslclm("import", str(tree / "web.pem"), "--output", "json")
    assert again.code == 0 and again.json()["updated"] == 1

    listed = sslclm.ok("certs", "list", "-o", "json").json()
    names = [item["common_name"] for item in listed["items"]]
    assert names == ["old.example.com", "web.example.com", "api.example.com", "Subprocess Root"]
    table = sslclm.ok("certs", "list", "--status", "expiring").stdout
    assert "web.example.com" in table and "api.example.com" not in table
    web = next(item for item in listed["items"] if item["common_name"] == "web.example.com")
    shown = sslclm.ok("certs", "show", web["fingerprint_sha256"], "-o", "json").json()
    assert shown["id"] == web["id"] and shown["status"] == "expiring"

    as_json = sslclm.ok("certs", "export", "--format", "json", "--status", "expired").json()
    assert [row["common_name"] for row in as_json] == ["old.example.com"]
    as_csv = list(csv.DictReader(io.StringIO(sslclm.ok("certs", "export", "--sort", "common_name").stdout)))
    assert [row["common_name"] for row in as_csv] == [
        "Subprocess Root",
        "api.example.com",
        "old.example.com",
        "web.example.com",
    ]
    target = tmp_path / "export.csv"
    sslclm.ok("certs", "export", "--format", "csv", "--file", str(target), "--expires-within", "60")
    exported = csv.DictReader(io.StringIO(target.read_text()))
    assert [row["common_name"] for row in exported] == ["web.example.com"]

    sslclm.fails(1, "import", str(tmp_path / "nowhere"), fragment="no such file or directory")
    sslclm.fails(2, "certs", "list", "--expires-before", "next tuesday", fragment="is not a date")
    sslclm.fails(1, "certs", "show", "deadbeefdeadbeef", fragment="no certificate with fingerprint")
    sslclm.fails(2, "certs", "list", "--status", "fresh", fragment="--status")


def test_import_shows_progress_on_a_terminal(sslclm: Program, tmp_path: Path) -> None:
    root = make_ca("Progress Root")
    tree = tmp_path / "many"
    tree.mkdir()
    for index in range(40):
        (tree / f"leaf{index}.pem").write_bytes(make_leaf(root, f"h{index}.example.com").pem)
    leader, follower = pty.openpty()
    env = {**sslclm.env, "COLUMNS": "100", "TERM": "xterm"}
    process = subprocess.Popen(
        [str(SSLCLM), "import", str(tree)], env=env, stdout=subprocess.PIPE, stderr=follower, text=True
    )
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 120
    # Read until the terminal reports EOF/EIO: that happens only once the program has exited and
    # everything it wrote has been drained, so the final frame of the bar is never missed.
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    assert stdout.startswith("files: 40  imported: 40")
    assert b"importing" in seen and b"40/40" in seen
