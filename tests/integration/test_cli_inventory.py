"""``sslclm import`` and ``sslclm certs`` through Typer's runner, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import csv
import io
import json
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

from sslclm.audit.models import AuditEvent
from sslclm.cli.main import build_app
from sslclm.core.config import Settings
from sslclm.core.platform import Platform
from sslclm.inventory.models import Certificate
from sslclm.pki import to_pkcs12
from support.certs import NOW, Issued, make_ca, make_leaf

P12_PASSWORD = "pkcs12 secret"


class Cli:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(build_app(), list(args), env=self.env, input=input)

    def ok(self, *args: str, input: str | None = None) -> Result:
        result = self(*args, input=input)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--output", "json").stdout)


@pytest.fixture
def cli(tmp_path: Path, database_url: str) -> Cli:
    return Cli(
        {
            "SSLCLM_HOME": str(tmp_path / "home"),
            "SSLCLM_DATABASE_URL": database_url,
            "SSLCLM_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        }
    )


@pytest.fixture
def estate() -> dict[str, Issued]:
    root = make_ca("CLI Root")
    other = make_ca("CLI Other CA", key_kind="rsa")
    return {
        "root": root,
        "other": other,
        "soon": make_leaf(root, "soon.example.com", days=10),
        "later": make_leaf(
            root, "later.example.com", sans=["later.example.com", "api.example.org"], days=300
        ),
        "expired": make_leaf(other, "old.example.net", not_before=NOW - timedelta(days=400), days=100),
        "p12": make_leaf(root, "p12.example.com", days=200, key_kind="rsa"),
    }


@pytest.fixture
def tree(tmp_path: Path, estate: dict[str, Issued]) -> Path:
    """A directory of good files, nested, plus files no importer could make sense of."""
    root = tmp_path / "certs"
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "soon.pem").write_bytes(estate["soon"].pem + estate["soon"].key_pem)
    (root / "nested" / "later.der").write_bytes(estate["later"].der)
    (root / "nested" / "deeper" / "old.crt").write_bytes(estate["expired"].pem)
    (root / "nested" / "chain.pem").write_bytes(estate["root"].pem + estate["other"].pem)
    (root / "notes.txt").write_text("not a certificate\n")
    (root / "nested" / "cut.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIBIjAN")
    return root


def test_import_directory_reports_rejections(cli: Cli, tree: Path) -> None:
    result = cli("import", str(tree))
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "files: 6  imported: 5  updated: 0  keys stored: 1  rejected: 2"
    rejected = sorted(line for line in lines[1:])
    assert len(rejected) == 2
    assert rejected[0].startswith(f"rejected {tree / 'nested' / 'cut.pem'}: ")
    assert rejected[1].startswith(f"rejected {tree / 'notes.txt'}: ")
    assert "Traceback" not in result.output

    again = cli("import", str(tree), "--source", "nightly-scan", "--output", "json")
    assert again.exit_code == 1
    summary = json.loads(again.stdout)
    assert (summary["files"], summary["imported"], summary["updated"]) == (6, 0, 5)
    assert {Path(r["path"]).name for r in summary["rejected"]} == {"cut.pem", "notes.txt"}
    # Each reason is said once, without repeating the path in front of it.
    assert all(r["reason"] and not r["reason"].startswith(r["path"]) for r in summary["rejected"])
    rescanned = cli.json("certs", "list", "--source", "nightly-scan")["items"]
    everything = {item["common_name"] for item in cli.json("certs", "list")["items"]}
    assert {item["common_name"] for item in rescanned} == everything

    clean = cli.ok("import", str(tree / "soon.pem"), str(tree / "nested" / "later.der"), "--output", "json")
    assert json.loads(clean.stdout)["rejected"] == []


def test_import_pkcs12_with_password_from_stdin(cli: Cli, tmp_path: Path, estate: dict[str, Issued]) -> None:
    leaf = estate["p12"]
    p12 = tmp_path / "bundle.p12"
    p12.write_bytes(to_pkcs12(leaf.key, leaf.cert, [estate["root"].cert], password=P12_PASSWORD))
    wrong = cli("import", str(p12), "--password-stdin", "--output", "json", input="nope\n")
    assert wrong.exit_code == 1
    assert json.loads(wrong.stdout)["rejected"][0]["path"] == str(p12)
    right = cli.ok("import", str(p12), "--password-stdin", "--output", "json", input=P12_PASSWORD + "\n")
    summary = json.loads(right.stdout)
    assert (summary["imported"], summary["keys_stored"]) == (2, 1)


def test_certs_list_show_export(cli: Cli, tree: Path, estate: dict[str, Issued], tmp_path: Path) -> None:
    cli("import", str(tree))
    page = cli.json("certs", "list")
    by_cn = {item["common_name"]: item for item in page["items"]}
    assert set(by_cn) == {
        "soon.example.com",
        "later.example.com",
        "old.example.net",
        "CLI Root",
        "CLI Other CA",
    }
    assert page["next_cursor"] is None
    assert by_cn["soon.example.com"]["status"] == "expiring"
    assert by_cn["old.example.net"]["status"] == "expired"
    assert by_cn["soon.example.com"]["has_private_key"] is True

    def cns(*args: str) -> list[str]:
        return [item["common_name"] for item in cli.json("certs", "list", *args)["items"]]

    assert cns("--status", "expired") == ["old.example.net"]
    assert set(cns("--status", "expired", "--status", "expiring")) == {"old.example.net", "soon.example.com"}
    assert cns("--expires-within", "30") == ["soon.example.com"]
    assert cns("-q", "API.example.ORG") == ["later.example.com"]
    assert set(cns("--issuer", "CLI Other")) == {"old.example.net", "CLI Other CA"}
    assert set(cns("--key-algorithm", "rsa")) == {"CLI Other CA"}
    after = (NOW + timedelta(days=100)).date().isoformat()
    assert "later.example.com" in cns("--expires-after", after)
    assert "soon.example.com" not in cns("--expires-after", after)
    assert cns("--expires-before", NOW.date().isoformat()) == ["old.example.net"]
    assert cns("--sort", "common_name", "--desc", "--limit", "2") == ["soon.example.com", "old.example.net"]

    first = cli.json("certs", "list", "--limit", "2")
    second = cli.json("certs", "list", "--limit", "2", "--cursor", first["next_cursor"])
    seen = [i["id"] for i in first["items"] + second["items"]]
    assert len(set(seen)) == 4

    table = cli.ok("certs", "list", "--limit", "2")
    assert "soon.example.com" not in table.stderr and "more: repeat with --cursor" in table.stderr
    assert "old.example.net" in table.stdout

    soon = estate["soon"]
    detail = cli.json("certs", "show", soon.fingerprint[:12])
    assert detail["fingerprint_sha256"] == soon.fingerprint
    assert detail["sans"] == ["DNS:soon.example.com"]
    assert detail["pem"] == soon.pem.decode()
    by_id = cli.ok("certs", "show", str(detail["id"]))
    assert "soon.example.com" in by_id.stdout and "BEGIN CERTIFICATE" not in by_id.stdout
    assert cli.ok("certs", "show", str(detail["id"]), "--pem").stdout == soon.pem.decode()

    exported = json.loads(cli.ok("certs", "export", "--format", "json", "--status", "expired").stdout)
    assert [row["common_name"] for row in exported] == ["old.example.net"]
    target = tmp_path / "out" / "inventory.csv"
    target.parent.mkdir()
    cli.ok("certs", "export", "--file", str(target))
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert len(rows) == 5
    assert {row["common_name"] for row in rows} == set(by_cn)
    assert not list(target.parent.glob("*.partial"))
    stdout_csv = list(csv.DictReader(io.StringIO(cli.ok("certs", "export", "-q", "later").stdout)))
    assert [row["sans"] for row in stdout_csv] == ["DNS:later.example.com DNS:api.example.org"]


def test_certs_errors_are_one_line(cli: Cli, tree: Path) -> None:
    cli("import", str(tree))
    cases: list[tuple[list[str], int, str]] = [
        (["certs", "list", "--expires-after", "2024-13-45"], 2, "'2024-13-45' is not a date"),
        (["certs", "list", "--status", "zombie"], 2, "--status"),
        (["certs", "list", "--sort", "colour"], 1, "cannot sort by 'colour'"),
        (["certs", "list", "--cursor", "@@@"], 1, "cursor is malformed"),
        (["certs", "list", "--limit", "0"], 2, "--limit"),
        (["certs", "show", "424242"], 1, "no certificate with id 424242"),
        (["certs", "show", "xyz"], 1, "refer to a certificate by id or by SHA-256"),
        (["certs", "export", "--format", "xml"], 2, "--format"),
        (["certs", "export", "--sort", "colour", "--format", "json"], 1, "cannot sort by 'colour'"),
        (["import", str(tree / "missing.pem")], 1, "no such file or directory"),
        (["import", str(tree), "--source", "bad name!"], 1, "source must be"),
    ]
    for args, code, fragment in cases:
        result = cli(*args)
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], (args, lines)
        assert "Traceback" not in result.output
        assert result.stdout == "", (args, result.stdout)


def test_import_is_audited_as_the_cli_user(cli: Cli, tree: Path) -> None:
    cli("import", str(tree / "soon.pem"))
    platform = Platform.open(
        Settings(
            home=Path(cli.env["SSLCLM_HOME"]),
            database_url=cli.env["SSLCLM_DATABASE_URL"],
            master_key=cli.env["SSLCLM_MASTER_KEY"],
        )
    )
    try:
        with platform.sessions() as session:
            events = session.execute(select(AuditEvent.actor, AuditEvent.action)).all()
            assert [(actor.startswith("cli:"), action) for actor, action in events] == [
                (True, "certificate.import")
            ]
            assert session.execute(select(Certificate.common_name)).scalars().one() == "soon.example.com"
    finally:
        platform.close()
