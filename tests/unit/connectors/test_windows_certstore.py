"""The windows-certstore command layer: exact PowerShell command lines and parsing of recorded outputs.

PowerShell is not available here, so the store is driven through a fake runner that keeps a
certificate store in memory and answers each script the way Windows PowerShell 5.1 does (one object
instead of a one-element array, dates as ``\\/Date(ms)\\/``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sslclm.connectors.windows_certstore import WindowsCertStore
from sslclm.connectors.windows_certstore.powershell import (
    PASSWORD_VARIABLE,
    IisBinding,
    PowerShellResult,
    SubprocessPowerShell,
    iis_binding_script,
    import_pfx_script,
    list_script,
    parse_certificates,
    parse_date,
    parse_thumbprint,
    quote,
    remove_script,
    store_path,
)
from sslclm.errors import ConflictError, ConnectorError, InvalidInputError, NotFoundError
from sslclm.pki import load_bundle
from sslclm.pki.keystores import read_pkcs12
from sslclm.spi.capabilities import ConnectorKind
from sslclm.spi.registry import ConnectorRegistry
from sslclm.spi.store import InventoryRequest, RemoveRequest
from sslclm.spi.testing import memory_context, new_add_request

PREAMBLE = "$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'; "
MY = "Cert:\\LocalMachine\\My"
THUMB = "3C2B5E9A0F1D4C6B8A7E5D3C1B0A9F8E7D6C5B4A"

# Recorded `Get-ChildItem Cert:\LocalMachine\My | Select-Object ... | ConvertTo-Json -Compress` on Windows
# PowerShell 5.1 with one certificate in the store (RawData shortened to a real but tiny DER value below).
PS51_SINGLE = (
    '{"Thumbprint":"3C2B5E9A0F1D4C6B8A7E5D3C1B0A9F8E7D6C5B4A","FriendlyName":"www",'
    '"Subject":"CN=www.example.com","Issuer":"CN=Example Issuing CA","NotBefore":"\\/Date(1700000000000)\\/",'
    '"NotAfter":"\\/Date(1731622400000)\\/","HasPrivateKey":true,"RawData":"MAA="}'
)
# The same store listed by PowerShell 7 (pwsh): always an array, ISO 8601 dates with the local offset.
PS7_ARRAY = (
    '[{"Thumbprint":"3C2B5E9A0F1D4C6B8A7E5D3C1B0A9F8E7D6C5B4A","FriendlyName":"www",'
    '"Subject":"CN=www.example.com","Issuer":"CN=Example Issuing CA","NotBefore":"2023-11-14T23:13:20+01:00",'
    '"NotAfter":"2024-11-14T23:13:20+01:00","HasPrivateKey":true,"RawData":"MAA="},'
    '{"Thumbprint":"0A0B0C0D0E0F00112233445566778899AABBCCDD","FriendlyName":"",'
    '"Subject":"CN=Old","Issuer":"CN=Old","NotBefore":"2020-01-01T00:00:00","NotAfter":"2021-01-01T00:00:00",'
    '"HasPrivateKey":false,"RawData":"MAA="}]'
)


# --- exact command lines ---------------------------------------------------------------------------


def test_list_script() -> None:
    assert list_script(MY) == (
        PREAMBLE + "Get-ChildItem -Path 'Cert:\\LocalMachine\\My' | Select-Object Thumbprint, FriendlyName, "
        "Subject, Issuer, NotBefore, NotAfter, HasPrivateKey, "
        "@{Name='RawData'; Expression={[Convert]::ToBase64String($_.RawData)}} | ConvertTo-Json -Compress"
    )


def test_import_script_takes_the_password_from_the_environment() -> None:
    script = import_pfx_script(
        MY,
        "C:\\ProgramData\\sslclm\\import-1.pfx",
        exportable=True,
        chain_store="Cert:\\LocalMachine\\CA",
        chain_files=["C:\\ProgramData\\sslclm\\import-2.cer"],
    )
    assert script == (
        "$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'; "
        "Import-Certificate -FilePath 'C:\\ProgramData\\sslclm\\import-2.cer' "
        "-CertStoreLocation 'Cert:\\LocalMachine\\CA' | Out-Null; "
        "$password = ConvertTo-SecureString -String $env:SSLCLM_PFX_PASSWORD -AsPlainText -Force; "
        "Import-PfxCertificate -FilePath 'C:\\ProgramData\\sslclm\\import-1.pfx' "
        "-CertStoreLocation 'Cert:\\LocalMachine\\My' -Password $password -Exportable "
        "| Where-Object { $_.HasPrivateKey } | Select-Object Thumbprint | ConvertTo-Json -Compress"
    )
    plain = import_pfx_script(MY, "C:\\t\\a.pfx")
    assert "-Exportable" not in plain and "Import-Certificate " not in plain


def test_remove_script() -> None:
    assert remove_script(MY, THUMB.lower()) == (
        PREAMBLE + f"Remove-Item -Path 'Cert:\\LocalMachine\\My\\{THUMB}' -DeleteKey"
    )
    with pytest.raises(InvalidInputError, match="40 hexadecimal"):
        remove_script(MY, "*")


def test_iis_binding_script() -> None:
    binding = IisBinding(site="Default Web Site", port=8443, host_header="shop.example.com")
    assert iis_binding_script(binding, THUMB, "My") == (
        PREAMBLE + "Import-Module WebAdministration; "
        "$binding = Get-WebBinding -Name 'Default Web Site' -Protocol 'https' -Port 8443 "
        "-IPAddress '*' -HostHeader 'shop.example.com'; "
        "if ($null -eq $binding) { throw 'no such IIS HTTPS binding' }; "
        f"$binding.AddSslCertificate('{THUMB}', 'My')"
    )


@pytest.mark.parametrize(
    ("value", "quoted"),
    [
        ("plain", "'plain'"),
        ("O'Brien's site", "'O''Brien''s site'"),
        ("smart\u2019quote", "'smart\u2019\u2019quote'"),
        ("$(Remove-Item C:\\)", "'$(Remove-Item C:\\)'"),  # single quotes: no expansion
    ],
)
def test_quote(value: str, quoted: str) -> None:
    assert quote(value) == quoted


def test_quote_refuses_control_characters() -> None:
    with pytest.raises(InvalidInputError):
        quote("line\nbreak")


@pytest.mark.parametrize(
    ("location", "name", "field"), [("Elsewhere", "My", "location"), ("LocalMachine", "My\\..", "store_name")]
)
def test_store_path_refuses_bad_names(location: str, name: str, field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        store_path(location, name)
    assert caught.value.field == field


def test_subprocess_command_line_and_platform_check() -> None:
    runner = SubprocessPowerShell()
    assert runner.argv("Get-Date") == [
        "powershell.exe",
        "-NoProfile",
        "-NonInteractive",
        "-Command",
        "Get-Date",
    ]
    assert SubprocessPowerShell(platform="win32").unavailable_reason() is None
    reason = SubprocessPowerShell(platform="linux").unavailable_reason()
    assert reason is not None and "needs Windows" in reason
    with pytest.raises(ConnectorError, match="needs Windows"):
        SubprocessPowerShell(platform="linux").run("Get-Date", secret_env={}, timeout=5)


# --- parsing recorded output -----------------------------------------------------------------------


def test_parse_powershell_51_single_object() -> None:
    [cert] = parse_certificates(PS51_SINGLE)
    assert cert.thumbprint == THUMB and cert.friendly_name == "www" and cert.has_private_key
    assert cert.not_before == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert cert.not_after == datetime(2024, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert cert.der == b"\x30\x00"


def test_parse_powershell_7_array() -> None:
    first, second = parse_certificates(PS7_ARRAY)
    assert first.not_before == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert second.friendly_name == "" and not second.has_private_key
    assert second.not_after == datetime(2021, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/Date(0)/", datetime(1970, 1, 1, tzinfo=UTC)),
        ("/Date(1700000000000+0100)/", datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)),
        (None, None),
    ],
)
def test_parse_date(value: str | None, expected: datetime | None) -> None:
    assert parse_date(value) == expected


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("Get-ChildItem : Access is denied", "not JSON"),
        ('{"Thumbprint":"nope","RawData":"MAA="}', "without thumbprint"),
        ('{"Thumbprint":"' + THUMB + '","RawData":"not base64!"}', "without thumbprint or data"),
        ("[1, 2]", "not a list of objects"),
    ],
)
def test_unreadable_output_is_a_clear_error(output: str, message: str) -> None:
    with pytest.raises(ConnectorError, match=message):
        parse_certificates(output)


def test_empty_store_prints_nothing() -> None:
    assert parse_certificates("\r\n") == []


def test_parse_thumbprint() -> None:
    assert parse_thumbprint('{"Thumbprint":"' + THUMB.lower() + '"}\r\n') == THUMB
    with pytest.raises(ConnectorError, match="exactly one"):
        parse_thumbprint("")


# --- the store, driven through a fake PowerShell ---------------------------------------------------


def _thumbprint(der: bytes) -> str:
    return hashlib.sha1(der, usedforsecurity=False).hexdigest().upper()


def _literals(script: str) -> list[str]:
    return [match.replace("''", "'") for match in re.findall(r"'((?:[^']|'')*)'", script)]


def _ms(when: datetime) -> str:
    return f"/Date({int(when.timestamp() * 1000)})/"


@dataclass
class FakePowerShell:
    """Answers the store's scripts like Windows PowerShell 5.1 over an in-memory certificate store."""

    certificates: list[dict[str, object]] = field(default_factory=list)
    scripts: list[str] = field(default_factory=list)
    environments: list[Mapping[str, str]] = field(default_factory=list)
    imported_files: list[bytes] = field(default_factory=list)
    iis_bindings: list[tuple[str, str]] = field(default_factory=list)
    fail_on: str | None = None
    counter: int = 0

    def unavailable_reason(self) -> str | None:
        return None

    def run(self, script: str, *, secret_env: Mapping[str, str], timeout: float) -> PowerShellResult:
        self.scripts.append(script)
        self.environments.append(dict(secret_env))
        if self.fail_on and self.fail_on in script:
            return PowerShellResult(
                1, "", "Import-PfxCertificate : Access is denied.\r\nAt line:1 char:1\r\n"
            )
        if "Get-ChildItem" in script:
            records = [dict(c) for c in self.certificates]
            if len(records) == 1:
                return PowerShellResult(0, json.dumps(records[0]), "")
            return PowerShellResult(0, json.dumps(records) if records else "", "")
        if "Import-PfxCertificate" in script:
            return self._import(script, secret_env)
        if "Remove-Item" in script:
            thumb = _literals(script)[-1].rsplit("\\", 1)[1]
            self.certificates = [c for c in self.certificates if c["Thumbprint"] != thumb]
            return PowerShellResult(0, "", "")
        if "AddSslCertificate" in script:
            literals = _literals(script)
            self.iis_bindings.append((literals[2], literals[-2]))
            return PowerShellResult(0, "", "")
        return PowerShellResult(1, "", f"unexpected script {script[:60]}")

    def _import(self, script: str, secret_env: Mapping[str, str]) -> PowerShellResult:
        pfx_path = next(value for value in _literals(script) if value.endswith(".pfx"))
        data = Path(pfx_path).read_bytes()
        self.imported_files.append(data)
        entry = read_pkcs12(data, secret_env[PASSWORD_VARIABLE])
        der = load_bundle(entry.certificates_pem[0]).ders[0]
        self.counter += 1
        self.certificates.append(
            {
                "Thumbprint": _thumbprint(der),
                "FriendlyName": entry.alias,
                "Subject": "CN=test",
                "Issuer": "CN=Store Conformance CA",
                "NotBefore": _ms(datetime(2030, 1, self.counter, tzinfo=UTC)),
                "NotAfter": _ms(datetime(2031, 1, 1, tzinfo=UTC)),
                "HasPrivateKey": True,
                "RawData": base64.b64encode(der).decode(),
            }
        )
        return PowerShellResult(0, json.dumps({"Thumbprint": _thumbprint(der)}), "")


def make_store(tmp_path: Path, runner: FakePowerShell, **config: object) -> WindowsCertStore:
    return WindowsCertStore(
        WindowsCertStore.Config.model_validate(config), memory_context(tmp_path / "ctx"), runner=runner
    )


def test_entry_point_loads_and_check_says_it_needs_windows(tmp_path: Path) -> None:
    registry = ConnectorRegistry.from_entry_points()
    cls = registry.get(ConnectorKind.CERT_STORE, "windows-certstore").cls
    assert cls is WindowsCertStore
    store = WindowsCertStore(WindowsCertStore.Config(), memory_context(tmp_path / "ctx"))
    check = store.check()
    assert not check.ok and "needs Windows" in check.message


def test_add_imports_then_binds_then_removes_the_old_certificate(tmp_path: Path) -> None:
    runner = FakePowerShell()
    store = make_store(tmp_path, runner, iis_site="Default Web Site", iis_host_header="www.example.com")
    first = new_add_request("www")
    assert not store.add(first).replaced
    old_thumb = str(runner.certificates[0]["Thumbprint"])
    runner.scripts.clear()
    second = new_add_request("www")
    assert store.add(second).replaced
    kinds = [
        next(k for k in ("Get-ChildItem", "Import-Pfx", "AddSsl", "Remove-Item") if k in s)
        for s in runner.scripts
    ]
    assert kinds == ["Get-ChildItem", "Import-Pfx", "AddSsl", "Remove-Item"]
    assert old_thumb in runner.scripts[-1]
    entry = store.read_entry("www")
    assert entry is not None and entry.certificate_pem == second.certificate_pem
    assert runner.iis_bindings[-1] == ("Default Web Site", str(runner.certificates[0]["Thumbprint"]))


def test_secrets_stay_off_the_command_line_and_temp_files_are_removed(tmp_path: Path) -> None:
    runner = FakePowerShell()
    store = make_store(tmp_path, runner)
    request = new_add_request("api")
    store.add(request)
    [password] = [env[PASSWORD_VARIABLE] for env in runner.environments if env]
    assert len(password) >= 24
    assert not any(password in script for script in runner.scripts)
    assert not any(b"PRIVATE KEY" in script.encode() for script in runner.scripts)
    [pfx] = runner.imported_files
    held = read_pkcs12(pfx, password)
    assert held.alias == "api" and held.has_private_key and len(held.certificates_pem) == 1  # leaf only
    chain_import = next(s for s in runner.scripts if "Import-Certificate" in s)
    assert "'Cert:\\LocalMachine\\CA'" in chain_import
    assert list((tmp_path / "ctx").iterdir()) == []


def test_failed_import_changes_nothing_and_names_the_reason(tmp_path: Path) -> None:
    runner = FakePowerShell()
    store = make_store(tmp_path, runner)
    store.add(new_add_request("www"))
    before = list(runner.certificates)
    runner.fail_on = "Import-PfxCertificate"
    with pytest.raises(ConnectorError) as caught:
        store.add(new_add_request("www"))
    assert caught.value.message == f"importing into {MY} failed: Import-PfxCertificate : Access is denied."
    assert not caught.value.retryable
    assert runner.certificates == before and not any("Remove-Item" in s for s in runner.scripts)
    assert list((tmp_path / "ctx").iterdir()) == []


def test_add_without_overwrite_conflicts(tmp_path: Path) -> None:
    runner = FakePowerShell()
    store = make_store(tmp_path, runner)
    store.add(new_add_request("www"))
    with pytest.raises(ConflictError):
        store.add(new_add_request("WWW", overwrite=False))  # friendly names match case-insensitively


def test_remove_and_inventory(tmp_path: Path) -> None:
    runner = FakePowerShell()
    store = make_store(tmp_path, runner)
    for alias in ("a", "b", "c"):
        store.add(new_add_request(alias))
    runner.certificates.append(dict(runner.certificates[0], FriendlyName="", Thumbprint=THUMB))
    first = store.inventory(InventoryRequest(limit=2))
    second = store.inventory(InventoryRequest(limit=2, cursor=first.next_cursor))
    aliases = [e.alias for e in (*first.entries, *second.entries)]
    assert aliases == [THUMB, "a", "b", "c"] and second.next_cursor is None
    assert first.entries[1].details["thumbprint"] == runner.certificates[0]["Thumbprint"]
    assert store.remove(RemoveRequest(alias="b")).alias == "b"
    assert "b" not in [e.alias for e in store.inventory(InventoryRequest()).entries]
    with pytest.raises(NotFoundError):
        store.remove(RemoveRequest(alias="b"))


def test_bad_input(tmp_path: Path) -> None:
    store = make_store(tmp_path, FakePowerShell())
    request = new_add_request("x")
    with pytest.raises(InvalidInputError) as caught:
        store.add(type(request)(alias="tab\there", certificate_pem=request.certificate_pem))
    assert caught.value.field == "alias"
    with pytest.raises(ValueError, match="letters and digits"):
        WindowsCertStore.Config.model_validate({"store_name": "My; Remove-Item"})
