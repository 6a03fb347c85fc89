"""What ``sslclm serve`` prepares before it listens: the internal CA, the server certificate, the URLs,
and the two system routes that expose them. The listening server itself is tested in tests/e2e.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from conftest import ApiUser
from sslclm.auth.bootstrap import AdminCredentials
from sslclm.cli.serve import admin_lines, base_url, jobs_line
from sslclm.core.config import Settings
from sslclm.core.platform import Platform
from sslclm.core.tls import CA_KEY_AAD, ensure_server_tls, internal_ca_pem, server_names
from sslclm.errors import ConfigurationError, IntegrityError
from sslclm.pki import load_private_key_der


def sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(name.value) for name in names}


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_first_run_creates_ca_and_server_certificate(platform: Platform) -> None:
    tls = ensure_server_tls(platform, "127.0.0.1")
    assert tls.ca_file.parent == platform.settings.home / "tls"
    assert mode(tls.ca_file.parent) == 0o700
    assert mode(tls.key_file) == 0o600
    assert mode(tls.ca_file.parent / "internal-ca.key.enc") == 0o600
    assert sans(tls.cert_file) == {"localhost", "127.0.0.1", "::1"}

    ca = x509.load_pem_x509_certificate(tls.ca_file.read_bytes())
    leaf = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
    leaf.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # The CA key on disk opens only with the platform's master key and the internal-CA label.
    sealed = (tls.ca_file.parent / "internal-ca.key.enc").read_bytes()
    assert b"PRIVATE KEY" not in sealed
    ca_key = load_private_key_der(platform.envelope.decrypt(sealed, CA_KEY_AAD))
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    assert ca_key.public_key() == ca.public_key()
    with pytest.raises(IntegrityError):
        platform.envelope.decrypt(sealed, b"something-else")


def test_reused_until_names_or_expiry_demand_a_new_one(platform: Platform) -> None:
    first = ensure_server_tls(platform, "localhost")
    ca_pem, cert_pem = first.ca_file.read_bytes(), first.cert_file.read_bytes()

    same = ensure_server_tls(platform, "127.0.0.1")
    assert same.cert_file.read_bytes() == cert_pem

    other_ip = ensure_server_tls(platform, "127.0.0.2")
    assert "127.0.0.2" in sans(other_ip.cert_file)
    assert other_ip.ca_file.read_bytes() == ca_pem  # the CA never changes; clients keep trusting it

    named = ensure_server_tls(platform, "clm.internal.example")
    assert {"clm.internal.example", "localhost", "127.0.0.1", "::1"} <= sans(named.cert_file)
    renamed_pem = named.cert_file.read_bytes()

    # 340 days on, the 365-day certificate is inside the 30-day renewal window.
    real_clock = platform.clock
    platform.clock = lambda: real_clock() + timedelta(days=340)
    renewed = ensure_server_tls(platform, "clm.internal.example")
    assert renewed.cert_file.read_bytes() != renamed_pem
    leaf = x509.load_pem_x509_certificate(renewed.cert_file.read_bytes())
    assert leaf.not_valid_after_utc > platform.clock() + timedelta(days=300)
    assert renewed.ca_file.read_bytes() == ca_pem


def test_wildcard_host_adds_the_machine_name(settings: Settings) -> None:
    dns, ips = server_names(settings, "0.0.0.0")
    assert "0.0.0.0" not in ips and "localhost" in dns and "::1" in ips
    assert server_names(settings, "[::1]") == (["localhost"], ["127.0.0.1", "::1"])


def test_half_a_ca_is_refused_not_replaced(platform: Platform) -> None:
    tls = ensure_server_tls(platform, "127.0.0.1")
    (tls.ca_file.parent / "internal-ca.key.enc").unlink()
    with pytest.raises(ConfigurationError, match=r"internal-ca\.key\.enc is missing"):
        ensure_server_tls(platform, "127.0.0.1")


def test_ca_sealed_under_another_master_key_is_an_error(platform: Platform, tmp_path: Path) -> None:
    ensure_server_tls(platform, "127.0.0.1")
    other = Settings(
        home=platform.settings.home,
        database_url=platform.settings.database_url,
        master_key="A" * 43 + "=",
        server_hostnames=["elsewhere.example"],
    )
    reopened = Platform.open(other)
    try:
        with pytest.raises(IntegrityError, match="different master key"):
            ensure_server_tls(reopened, "127.0.0.1")
    finally:
        reopened.close()


def test_urls_and_admin_lines(settings: Settings) -> None:
    assert base_url(settings, "127.0.0.1", 8443, https=True) == "https://127.0.0.1:8443"
    assert base_url(settings, "::1", 8443, https=True) == "https://[::1]:8443"
    assert base_url(settings, "0.0.0.0", 443, https=True) == "https://localhost"
    assert base_url(settings, "127.0.0.1", 8080, https=False) == "http://127.0.0.1:8080"
    public = settings.model_copy(update={"public_url": "https://clm.example.com/"})
    assert base_url(public, "0.0.0.0", 8443, https=True) == "https://clm.example.com"

    generated = AdminCredentials("admin", "s3cret-generated", Path("/x/initial-admin-password"), True)
    assert "with password: s3cret-generated" in admin_lines(generated)[0]
    reminder = AdminCredentials("admin", "s3cret-generated", Path("/x/initial-admin-password"), False)
    assert "initial password: s3cret-generated" in admin_lines(reminder)[0]
    from_env = AdminCredentials("admin", None, None, True)
    assert admin_lines(from_env) == [
        "Admin:       created user 'admin' with the password from SSLCLM_ADMIN_PASSWORD"
    ]
    assert "existing account" in admin_lines(None)[0]

    assert jobs_line(settings) == "job worker and scheduler in this process"
    node = settings.model_copy(update={"embedded_worker": False})
    assert jobs_line(node) == "scheduler in this process"
    api_only = node.model_copy(update={"embedded_scheduler": False})
    assert jobs_line(api_only).startswith("none in this process")


def test_ca_pem_is_public_and_matches_the_file(platform: Platform, client: TestClient) -> None:
    response = client.get("/api/v1/system/ca.pem")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-pem-file")
    assert response.content == internal_ca_pem(platform)
    tls = ensure_server_tls(platform, "127.0.0.1")
    assert tls.ca_file.read_bytes() == response.content
    x509.load_pem_x509_certificate(response.content)


def test_system_info_needs_a_login_and_counts(client: TestClient, api_users: dict[str, ApiUser]) -> None:
    assert client.get("/api/v1/system/info").status_code == 401
    for role, user in api_users.items():
        response = client.get("/api/v1/system/info", headers=user.headers)
        assert response.status_code == 200, role
    body = response.json()
    assert body["version"] == "0.1.0"
    assert body["database_dialect"] in {"sqlite", "postgresql"}
    assert body["counts"]["users"] == 4
    assert body["counts"]["active_api_tokens"] == 4
    assert body["counts"]["certificates"] == 0
    assert body["counts"]["audit_events"] >= 8
    assert body["embedded_worker"] is True


def test_serve_refuses_bad_options_before_touching_anything(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sslclm.cli.main import build_app

    home = tmp_path / "untouched"
    result = CliRunner().invoke(build_app(), ["serve", "--port", "70000"], env={"SSLCLM_HOME": str(home)})
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "--port" in result.stderr
    assert not os.path.exists(home)


def test_every_setting_is_in_the_configuration_reference() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    reference = readme.split("## Configuration reference", 1)[1]
    missing = [name for name in Settings.model_fields if f"`SSLCLM_{name.upper()}`" not in reference]
    assert not missing, f"document these settings in the README's configuration reference: {missing}"
