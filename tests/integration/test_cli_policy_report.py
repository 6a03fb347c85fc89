"""``sslclm policy`` and ``sslclm report`` through Typer's runner, on SQLite and PostgreSQL.

Each invocation opens the platform afresh, so the whole story runs in one test with few calls.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import secrets
from pathlib import Path

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from pypdf import PdfReader
from typer.testing import CliRunner, Result

from sslclm.cli.main import build_app
from support.certs import Issued, make_ca, make_leaf

GOOD = """\
name: strict
scope: {kind: all}
checks:
  - check: expiry
    params: {warning_days: 30, critical_days: 7}
  - check: domains
    params: {forbidden: ["*.internal.example"]}
"""
BAD = """\
name: broken
checks:
  - check: expiry
    params: {warning_days: "soon"}
"""


class Cli:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.runner = CliRunner()

    def __call__(self, *args: str) -> Result:
        return self.runner.invoke(build_app(), list(args), env=self.env)

    def ok(self, *args: str) -> Result:
        result = self(*args)
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result


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
def estate(tmp_path: Path) -> dict[str, Issued]:
    root = make_ca("CLI Report Root")
    certs = {
        "root": root,
        "soon": make_leaf(root, "soon.cli.example", days=5, key_kind="rsa"),
        "bad": make_leaf(root, "db.internal.example", days=200),
    }
    folder = tmp_path / "certs"
    folder.mkdir()
    for name, issued in certs.items():
        (folder / f"{name}.pem").write_bytes(issued.pem)
    return certs


def test_policies_violations_exemptions_and_every_report(
    cli: Cli, tmp_path: Path, estate: dict[str, Issued]
) -> None:
    cli.ok("import", str(tmp_path / "certs"))
    (tmp_path / "bad.yaml").write_text(BAD)
    (tmp_path / "good.yaml").write_text(GOOD)

    refused = cli("policy", "apply", str(tmp_path / "bad.yaml"))
    assert refused.exit_code == 1 and refused.stdout == ""
    assert refused.stderr.startswith(f"error: {tmp_path / 'bad.yaml'}: line ")
    assert "params.warning_days" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert cli("policy", "apply", str(tmp_path / "missing.yaml")).exit_code == 1

    applied = cli.ok("policy", "apply", str(tmp_path / "good.yaml"))
    assert "created policy set 'strict'; evaluated 3 certificate(s)" in applied.stdout
    listed = json.loads(cli.ok("policy", "list", "--format", "json").stdout)
    assert [(p["name"], p["checks"]) for p in listed] == [("strict", "expiry, domains")]
    assert cli.ok("policy", "show", "strict").stdout.strip() == GOOD.strip()

    exported = tmp_path / "violations.csv"
    cli.ok("policy", "violations", "--format", "csv", "--output", str(exported), "--check", "domains")
    [violation] = list(csv.DictReader(io.StringIO(exported.read_text())))
    assert violation["common_name"] == "db.internal.example" and violation["policy"] == "strict"
    no_table_file = cli("policy", "violations", "--output", str(tmp_path / "x.txt"))
    assert no_table_file.exit_code == 2 and not (tmp_path / "x.txt").exists()

    granted = cli.ok(
        "policy", "exempt", "add",
        "--certificate", violation["certificate_id"],
        "--check", "domains",
        "--justification", "legacy database until the migration in Q3",
        "--approver", "ciso",
        "--expires", "2099-01-31",
    )  # fmt: skip
    assert granted.stdout.startswith("exemption ")
    remaining = json.loads(cli.ok("policy", "violations", "--format", "json").stdout)
    assert [(v["common_name"], v["check"]) for v in remaining] == [("soon.cli.example", "expiry")]

    forecast = json.loads(cli.ok("report", "expiry", "--per", "week", "--format", "json").stdout)
    assert sum(r["total"] for r in forecast) == 1
    wrong = cli("report", "breakdown", "--by", "colour")
    assert wrong.exit_code == 1 and "cannot group by 'colour'" in wrong.stderr
    table = cli.ok("report", "breakdown", "--by", "key_algorithm").stdout
    assert "RSA" in table and "EC" in table
    concentration = json.loads(
        cli.ok("report", "ca-concentration", estate["root"].fingerprint[:16], "--format", "json").stdout
    )
    assert concentration["certificates"] == 2

    bom_file = tmp_path / "cbom.json"
    cli.ok("report", "cbom", "--output", str(bom_file))
    text = bom_file.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    names = {c["name"] for c in json.loads(text)["components"]}
    assert {"soon.cli.example", "RSA-2048", "EC-secp256r1", "ecdsa-with-SHA256"} <= names

    pdf_file = tmp_path / "summary.pdf"
    cli.ok("report", "pdf", "--output", str(pdf_file))
    pdf_text = "\n".join(page.extract_text() for page in PdfReader(pdf_file).pages)
    assert "Certificates by status (total 3)" in pdf_text and "strict" in pdf_text
    missing_dir = cli("report", "pdf", "--output", str(tmp_path / "nowhere" / "summary.pdf"))
    assert missing_dir.exit_code == 1 and "nowhere" in missing_dir.stderr


def test_policy_commands_follow_the_api_rule_for_large_inventories(
    cli: Cli, tmp_path: Path, estate: dict[str, Issued], monkeypatch: pytest.MonkeyPatch
) -> None:
    from sslclm.policies import service as policy_service

    cli.ok("import", str(tmp_path / "certs"))
    (tmp_path / "good.yaml").write_text(GOOD)
    # "Large" = more than one certificate here: the commands queue the work as the API does.
    monkeypatch.setattr(policy_service, "SYNC_EVALUATION_LIMIT", 1)
    applied = cli.ok("policy", "apply", str(tmp_path / "good.yaml"))
    assert "created policy set 'strict'; re-evaluation queued as job " in applied.stdout
    evaluated = json.loads(cli.ok("policy", "evaluate", "--format", "json").stdout)
    assert list(evaluated[0]) == ["queued_job_id"]
    cli.ok("worker", "--until-idle", "--no-scheduler")
    # An exemption for one certificate re-evaluates that certificate alone, in the command.
    [violation] = json.loads(cli.ok("policy", "violations", "--check", "domains", "--format", "json").stdout)
    granted = cli.ok(
        "policy", "exempt", "add",
        "--certificate", str(violation["certificate_id"]),
        "--check", "domains",
        "--justification", "legacy database until the migration in Q3",
        "--approver", "ciso",
        "--expires", "2099-01-31",
    )  # fmt: skip
    assert "; evaluated 1 certificate(s)" in granted.stdout
    deleted = cli.ok("policy", "delete", "strict")
    assert "deleted policy set 'strict'; re-evaluation queued as job " in deleted.stdout  # baseline
