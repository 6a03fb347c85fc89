"""The PowerShell layer of the Windows certificate store: exact scripts, how they run, their JSON output.

Scripts are built from fixed text and single-quoted PowerShell literals only (no double quotes, so
Windows command-line quoting cannot change them). Secrets never appear in a script: the PFX password
reaches PowerShell through the ``SSLCLM_PFX_PASSWORD`` environment variable of the child process.
Output is parsed from ``ConvertTo-Json`` as both Windows PowerShell 5.1 and PowerShell 7 write it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from sslclm.errors import ConnectorError, InvalidInputError

PASSWORD_VARIABLE = "SSLCLM_PFX_PASSWORD"
STORE_LOCATIONS = ("LocalMachine", "CurrentUser")
_STORE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{0,63}$")
_THUMBPRINT = re.compile(r"^[0-9A-Fa-f]{40}$")
# PowerShell ends a single-quoted string at any of these, not only at the ASCII apostrophe.
_SINGLE_QUOTES = ("'", "\u2018", "\u2019", "\u201a", "\u201b")
# PowerShell 5.1 writes DateTime as "\/Date(<ms since 1970>)\/", PowerShell 7 as ISO 8601.
_MS_DATE = re.compile(r"^/Date\((-?\d+)(?:[+-]\d{4})?\)/$")
_PREAMBLE = "$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'; "
_LIST_FIELDS = (
    "Thumbprint, FriendlyName, Subject, Issuer, NotBefore, NotAfter, HasPrivateKey, "
    "@{Name='RawData'; Expression={[Convert]::ToBase64String($_.RawData)}}"
)


def quote(value: str) -> str:
    """``value`` as a single-quoted PowerShell literal: every kind of single quote doubled."""
    if any(ord(ch) < 0x20 for ch in value):
        raise InvalidInputError("control characters cannot be passed to PowerShell", field="alias")
    for mark in _SINGLE_QUOTES:
        value = value.replace(mark, mark * 2)
    return f"'{value}'"


def store_path(location: str, name: str) -> str:
    """The PowerShell drive path of a certificate store, e.g. ``Cert:\\LocalMachine\\My``."""
    if location not in STORE_LOCATIONS:
        raise InvalidInputError(
            f"the store location is one of {', '.join(STORE_LOCATIONS)}", field="location"
        )
    if not _STORE_NAME.match(name):
        raise InvalidInputError("a certificate store name is letters and digits, e.g. My", field="store_name")
    return f"Cert:\\{location}\\{name}"


def check_thumbprint(thumbprint: str) -> str:
    if not _THUMBPRINT.match(thumbprint):
        raise InvalidInputError("a thumbprint is 40 hexadecimal digits", field="thumbprint")
    return thumbprint.upper()


def list_script(path: str) -> str:
    """Every certificate of the store as JSON (an array in PowerShell 7, maybe one object in 5.1)."""
    listing = f"Get-ChildItem -Path {quote(path)} | Select-Object {_LIST_FIELDS}"
    return f"{_PREAMBLE}{listing} | ConvertTo-Json -Compress"


def import_pfx_script(
    path: str,
    pfx_file: str,
    *,
    exportable: bool = False,
    chain_store: str | None = None,
    chain_files: Sequence[str] = (),
) -> str:
    """Imports the PFX file (password from the environment) and prints the new certificate's thumbprint.

    Chain certificates go to ``chain_store`` (``Cert:\\LocalMachine\\CA``) with ``Import-Certificate``
    first, so IIS can send them; the PFX holds only the leaf and its key.
    """
    steps = [_PREAMBLE.rstrip()]
    if chain_store is not None:
        for chain_file in chain_files:
            target = f"-FilePath {quote(chain_file)} -CertStoreLocation {quote(chain_store)}"
            steps.append(f"Import-Certificate {target} | Out-Null;")
    steps.append(f"$password = ConvertTo-SecureString -String $env:{PASSWORD_VARIABLE} -AsPlainText -Force;")
    flags = " -Exportable" if exportable else ""
    steps.append(
        f"Import-PfxCertificate -FilePath {quote(pfx_file)} -CertStoreLocation {quote(path)}"
        f" -Password $password{flags}"
        " | Where-Object { $_.HasPrivateKey } | Select-Object Thumbprint | ConvertTo-Json -Compress"
    )
    return " ".join(steps)


def remove_script(path: str, thumbprint: str) -> str:
    """Deletes one certificate and its private key from the store."""
    target = f"{path}\\{check_thumbprint(thumbprint)}"
    return f"{_PREAMBLE}Remove-Item -Path {quote(target)} -DeleteKey"


@dataclass(frozen=True, slots=True)
class IisBinding:
    """Which HTTPS binding of which IIS site gets the certificate."""

    site: str
    port: int = 443
    host_header: str = ""
    ip_address: str = "*"


def iis_binding_script(binding: IisBinding, thumbprint: str, store_name: str) -> str:
    """Points an existing IIS HTTPS binding at the certificate (WebAdministration's AddSslCertificate).

    AddSslCertificate replaces the certificate an HTTPS binding had; the binding must exist.
    """
    thumb = check_thumbprint(thumbprint)
    if not 0 < binding.port < 65536:
        raise InvalidInputError("the IIS binding port is between 1 and 65535", field="iis_port")
    return (
        f"{_PREAMBLE}Import-Module WebAdministration; "
        f"$binding = Get-WebBinding -Name {quote(binding.site)} -Protocol 'https' -Port {binding.port} "
        f"-IPAddress {quote(binding.ip_address)} -HostHeader {quote(binding.host_header)}; "
        "if ($null -eq $binding) { throw 'no such IIS HTTPS binding' }; "
        f"$binding.AddSslCertificate({quote(thumb)}, {quote(store_name)})"
    )


# --- running ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PowerShellResult:
    returncode: int
    stdout: str
    stderr: str


class PowerShellRunner(Protocol):
    """Runs one script; ``secret_env`` is added to the child's environment and must never be logged."""

    def unavailable_reason(self) -> str | None: ...

    def run(self, script: str, *, secret_env: Mapping[str, str], timeout: float) -> PowerShellResult: ...


@dataclass(frozen=True, slots=True)
class SubprocessPowerShell:
    """``powershell.exe -NoProfile -NonInteractive -Command <script>`` as a child process."""

    executable: str = "powershell.exe"
    platform: str = field(default=sys.platform)

    def argv(self, script: str) -> list[str]:
        return [self.executable, "-NoProfile", "-NonInteractive", "-Command", script]

    def unavailable_reason(self) -> str | None:
        if self.platform != "win32":
            return "the windows-certstore store needs Windows: run it on a Windows agent"
        return None

    def run(self, script: str, *, secret_env: Mapping[str, str], timeout: float) -> PowerShellResult:
        reason = self.unavailable_reason()
        if reason is not None:
            raise ConnectorError(reason, retryable=False)
        try:
            done = subprocess.run(
                self.argv(script),
                env={**os.environ, **secret_env},
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError:
            raise ConnectorError(f"{self.executable} was not found", retryable=False) from None
        except subprocess.TimeoutExpired:
            raise ConnectorError(f"PowerShell did not finish within {timeout:g} s", retryable=True) from None
        return PowerShellResult(done.returncode, done.stdout, done.stderr)


def error_line(result: PowerShellResult) -> str:
    """The first meaningful line PowerShell wrote to stderr (its error record's message)."""
    for line in result.stderr.splitlines():
        text = line.strip()
        if text and not text.startswith(("At line:", "+ ", "At ")):
            return text[:300]
    return f"PowerShell exited with code {result.returncode}"


# --- parsing ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WindowsCertificate:
    thumbprint: str
    friendly_name: str
    subject: str
    issuer: str
    not_before: datetime | None
    not_after: datetime | None
    has_private_key: bool
    der: bytes = field(repr=False)


def parse_date(value: object) -> datetime | None:
    """A date as ``ConvertTo-Json`` writes it: ``/Date(ms)/`` (5.1) or ISO 8601 (7); None if absent."""
    if not isinstance(value, str) or not value:
        return None
    legacy = _MS_DATE.match(value)
    if legacy:
        return datetime.fromtimestamp(int(legacy.group(1)) / 1000, UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ConnectorError(
            f"PowerShell returned an unreadable date {value[:40]!r}", retryable=False
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _json_records(stdout: str) -> list[Mapping[str, Any]]:
    text = stdout.strip().lstrip("\ufeff")
    if not text:
        return []  # an empty store prints nothing at all
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise ConnectorError("PowerShell returned output that is not JSON", retryable=False) from None
    records = data if isinstance(data, list) else [data]  # 5.1 unwraps a one-element array
    if not all(isinstance(record, dict) for record in records):
        raise ConnectorError("PowerShell returned JSON that is not a list of objects", retryable=False)
    return records


def parse_certificates(stdout: str) -> list[WindowsCertificate]:
    """The certificates of :func:`list_script`'s output."""
    found = []
    for record in _json_records(stdout):
        try:
            der = base64.b64decode(str(record.get("RawData") or ""), validate=True)
            thumbprint = check_thumbprint(str(record.get("Thumbprint") or ""))
        except (binascii.Error, InvalidInputError):
            raise ConnectorError(
                "PowerShell listed a certificate without thumbprint or data", retryable=False
            ) from None
        found.append(
            WindowsCertificate(
                thumbprint=thumbprint,
                friendly_name=str(record.get("FriendlyName") or ""),
                subject=str(record.get("Subject") or ""),
                issuer=str(record.get("Issuer") or ""),
                not_before=parse_date(record.get("NotBefore")),
                not_after=parse_date(record.get("NotAfter")),
                has_private_key=bool(record.get("HasPrivateKey")),
                der=der,
            )
        )
    return found


def parse_thumbprint(stdout: str) -> str:
    """The thumbprint :func:`import_pfx_script` printed."""
    records = _json_records(stdout)
    if len(records) != 1:
        raise ConnectorError(
            "Import-PfxCertificate did not report exactly one key certificate", retryable=False
        )
    try:
        return check_thumbprint(str(records[0].get("Thumbprint") or ""))
    except InvalidInputError:
        raise ConnectorError("Import-PfxCertificate reported no thumbprint", retryable=False) from None
