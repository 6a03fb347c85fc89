"""``sslclm store``, ``sslclm deploy`` and ``sslclm certs export-key`` through Typer's runner, on a
pem-files store in a temporary directory and certificates from the built-in CA."""

from __future__ import annotations

import base64
import json
import secrets
import socket
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner, Result

from sslclm.audit.models import AuditEvent
from sslclm.cli.main import build_app
from sslclm.core.config import Settings
from sslclm.core.platform import Platform
from sslclm.deployments.models import StoreBinding
from sslclm.deployments.tasks import fingerprint_of
from sslclm.workflows.models import Connection

PASSWORD = "Export-Pass-2024"


class Cli:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(build_app(), list(args), env=self.env, input=input)

    def json(self, *args: str, input: str | None = None) -> Any:
        result = self(*args, "--output", "json", input=input)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return json.loads(result.stdout)

    def fails(self, *args: str, input: str | None = None) -> str:
        """The one error line of a command that must fail with exit status 1."""
        result = self(*args, input=input)
        assert result.exit_code == 1, (result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert lines and lines[-1].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
        return lines[-1]

    def counts(self) -> tuple[int, int, int]:
        """Store connections, bindings and key exports in the database."""
        settings = Settings(
            home=Path(self.env["SSLCLM_HOME"]),
            database_url=self.env["SSLCLM_DATABASE_URL"],
            master_key=self.env["SSLCLM_MASTER_KEY"],
        )
        platform = Platform.open(settings)
        try:
            with platform.sessions() as session:
                stores = session.execute(
                    select(func.count()).select_from(Connection).where(Connection.kind == "cert-store")
                ).scalar_one()
                bindings = session.execute(select(func.count()).select_from(StoreBinding)).scalar_one()
                exports = session.execute(
                    select(func.count())
                    .select_from(AuditEvent)
                    .where(AuditEvent.action == "certificate.export-key")
                ).scalar_one()
        finally:
            platform.close()
        return stores, bindings, exports


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(
        {
            "SSLCLM_HOME": str(tmp_path / "home"),
            "SSLCLM_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}",
            "SSLCLM_MASTER_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
        }
    )


@pytest.fixture
def enrolled(cli: Cli) -> Cli:
    """The CLI with www.example.com issued by the built-in CA (the platform holds its key)."""
    assert cli("ca", "add", "internal", "--type", "local").exit_code == 0
    assert cli("profile", "create", "web", "--ca", "internal", "--allow", "*.example.com").exit_code == 0
    issued = cli.json("enroll", "--profile", "web", "www.example.com", "--wait")
    assert issued["job_status"] == "succeeded", issued
    return cli


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_store_and_deploy_commands(enrolled: Cli, tmp_path: Path) -> None:
    cli = enrolled
    directory = tmp_path / "certs"
    directory.mkdir()
    config = tmp_path / "files.yaml"
    config.write_text(f"# where the web server reads them\ndirectory: {directory}\nmode: '0640'\n")
    added = cli.json("store", "add", "files", "--type", "pem-files", "--config", str(config))
    assert added["type"] == "pem-files" and added["config"]["mode"] == "0640"
    [listed] = cli.json("store", "list")
    assert listed["name"] == "files"
    assert cli.json("store", "check", "files")["ok"] is True

    bound = cli.json("deploy", "bind", "www.example.com", "files", "--alias", "www", "--wait")
    assert bound["status"] == "deployed" and bound["job_status"] == "succeeded", bound
    assert fingerprint_of((directory / "www.crt").read_bytes()) == bound["last_deployed_fingerprint"]
    assert stat.S_IMODE((directory / "www.key").stat().st_mode) == 0o600

    # A binding whose endpoint does not answer fails verification: exit 1, its files taken back.
    failed = cli(
        "deploy", "bind", "www.example.com", "files", "--alias", "www2",
        "--verify-endpoint", f"127.0.0.1:{_free_port()}", "--option", "verify_timeout=0.5", "--wait",
    )  # fmt: skip
    assert failed.exit_code == 1, failed.stderr
    assert "restored the previous files" in failed.stderr.strip().splitlines()[-1]
    assert not (directory / "www2.crt").exists()

    listing = cli.json("deploy", "list", "--store", "files")
    assert [(b["alias"], b["status"]) for b in listing] == [("www", "deployed"), ("www2", "failed")]
    assert listing[1]["endpoint"].startswith("127.0.0.1:")
    shown = cli.json("deploy", "show", str(bound["id"]))
    assert shown["managed_certificate"] == "www.example.com"
    assert [d["status"] for d in shown["deployments"]] == ["succeeded"]
    assert "www.example.com" in cli("deploy", "list").stdout

    scanned = cli.json("store", "scan", "files", "--wait")
    assert scanned["job_status"] == "succeeded" and scanned["entries"] == 1, scanned
    again = cli.json("deploy", "redeploy", str(bound["id"]), "--wait")
    assert again["status"] == "deployed"
    removed = cli.json("deploy", "undeploy", str(bound["id"]), "--wait")
    assert removed["status"] == "undeployed" and not (directory / "www.crt").exists()
    assert cli.json("store", "show", "files")["bindings"] == 2


BAD_INPUT = [
    (["store", "add", "x", "--type", "nope", "--set", "directory=/tmp"], "nope"),
    (["store", "add", "x", "--type", "pem-files", "--set", "directory=relative"], "absolute path"),
    (["store", "add", "x", "--type", "pem-files", "--config", "/nonexistent.yaml"], "cannot read"),
    (["store", "add", "x", "--type", "pem-files", "--set", "directory"], "key=value"),
    (["store", "add", "bad name", "--type", "pem-files", "--set", "directory=/tmp"], "name"),
    (["store", "check", "missing"], "missing"),
    (["deploy", "bind", "www.example.com", "missing", "--alias", "www"], "missing"),
    (["deploy", "bind", "nobody.example.com", "files", "--alias", "www"], "nobody.example.com"),
    (["deploy", "bind", "www.example.com", "files", "--alias", "../up"], "alias"),
    (["deploy", "bind", "www.example.com", "files", "--alias", "a", "--verify-endpoint", "h"], "host:port"),
    (["deploy", "redeploy", "99"], "99"),
]


def test_bad_input_is_one_line_and_creates_nothing(enrolled: Cli, tmp_path: Path) -> None:
    cli = enrolled
    assert (
        cli("store", "add", "files", "--type", "pem-files", "--set", f"directory={tmp_path}").exit_code == 0
    )
    before = cli.counts()
    for args, problem in BAD_INPUT:
        assert problem in cli.fails(*args), args
    assert cli.counts() == before


def test_config_file_errors_and_secrets_never_echoed(cli: Cli, tmp_path: Path) -> None:
    not_yaml = tmp_path / "bad.yaml"
    not_yaml.write_text("directory: [unclosed\n")
    assert "not JSON or YAML at line" in cli.fails(
        "store", "add", "x", "--type", "haproxy", "--config", str(not_yaml)
    )
    listing = tmp_path / "list.yaml"
    listing.write_text("- directory\n")
    assert "must hold an object" in cli.fails(
        "store", "add", "x", "--type", "haproxy", "--config", str(listing)
    )
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret-value-never-shown\n")
    refused = cli.fails(
        "store", "add", "x", "--type", "haproxy", "--set", f"directory={tmp_path}",
        "--secret-file", f"password={secret}",
    )  # fmt: skip
    assert "password" in refused and "s3cret" not in refused
    assert "password" in cli.fails(
        "store", "add", "x", "--type", "haproxy", "--set", f"directory={tmp_path}", "--secret", "password",
        input="typed-secret-value\n",
    )  # fmt: skip
    assert cli.counts() == (0, 0, 0)
    # The haproxy type through the CLI: the JSON file's settings, the pid file from --set.
    config = tmp_path / "haproxy.json"
    config.write_text(json.dumps({"directory": str(tmp_path), "crt_list": str(tmp_path / "crt.list")}))
    added = cli.json(
        "store", "add", "edge", "--type", "haproxy", "--config", str(config),
        "--set", f"pid_file={tmp_path / 'haproxy.pid'}",
    )  # fmt: skip
    assert added["config"]["crt_list"] == str(tmp_path / "crt.list")
    assert added["config"]["pid_file"] == str(tmp_path / "haproxy.pid")


def test_certs_export_key(enrolled: Cli, tmp_path: Path) -> None:
    cli = enrolled
    certificate = str(cli.json("managed", "show", "www.example.com")["current_certificate_id"])
    target = tmp_path / "www.p12"
    done = cli("certs", "export-key", certificate, "--format", "pkcs12", "--file", str(target),
               "--password-stdin", input=f"{PASSWORD}\n")  # fmt: skip
    assert done.exit_code == 0, done.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    read = subprocess.run(
        ["openssl", "pkcs12", "-in", str(target), "-passin", f"pass:{PASSWORD}", "-nodes"],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert "PRIVATE KEY" in read.stdout and "CERTIFICATE" in read.stdout
    pem = cli("certs", "export-key", certificate, "--format", "pem")
    assert pem.exit_code == 0 and "BEGIN PRIVATE KEY" in pem.stdout

    jks = tmp_path / "www.jks"
    assert "too weak" in cli.fails(
        "certs", "export-key", certificate, "--format", "jks", "--file", str(jks), "--password-stdin",
        input="short\n",
    )  # fmt: skip
    assert "needs --file" in cli.fails("certs", "export-key", certificate, "--format", "jks")
    assert "--force" in cli.fails(
        "certs", "export-key", certificate, "--file", str(target), "--password-stdin", input=f"{PASSWORD}\n"
    )
    assert not jks.exists()
    assert cli.counts()[2] == 2  # the two that were written; refused ones are not exports
